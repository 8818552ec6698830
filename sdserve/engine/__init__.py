"""The diffusers engine: synchronous, runs inside a worker (or the CLI), imports torch.

- ``engine.py``: :class:`~sdserve.engine.engine.Engine`, canonical input → encoded images;
- ``tasks/``: one file per task and the registry that says which exist, the pipeline kind
  each runs on and how a request selects them (``tasks/registry.py``, ``tasks/pipelines.py``);
- ``cache.py``: loaded pipelines in two tiers (the device under a memory budget, then CPU
  RAM), task pipelines derived with ``from_pipe``; ``tiers.py`` moves a pipeline's weights
  between them; ``loading.py`` (+ ``configs/``): hub id, folder or single file → pipeline;
- ``schedulers.py``, ``prompts.py``, ``images.py``: what a run needs per call;
- ``lora.py``, ``hotswap.py``, ``fastpath.py``, ``device.py``: adapters, the fast path and
  the device/precision choice; ``safety.py``, ``watermark.py``: post-processing;
- ``tiny.py``, ``archs.py``, ``checkpoint_export.py``: random-weight models built offline.

What the API may know about models without torch lives in :mod:`sdserve.models`; the
engine receives its settings (:class:`sdserve.models.settings.EngineSettings`) and never
imports ``sdserve.config`` (import-linter contracts in ``pyproject.toml``).
"""
