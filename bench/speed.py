"""Speed benchmark from a checkout: ``python -m bench.speed`` = ``sdserve bench``.

The harness lives in ``sdserve/bench.py`` so the installed ``sdserve bench`` command has
it too; see its docstring for what is measured.

    python -m bench.speed --device cpu --scale small --cases sd15,sd21
    python -m bench.speed --device cuda --peak-tflops 989
"""

from __future__ import annotations

from sdserve.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
