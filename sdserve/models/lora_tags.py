"""AUTOMATIC1111 ``<lora:name:weight>`` prompt tags (the A1111 dialect reads them)."""

from __future__ import annotations

import re

from sdserve.errors import InvalidInput

_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>")


def parse_a1111_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Strip AUTOMATIC1111 ``<lora:name:weight>`` tags from ``prompt``.

    Returns the prompt without the tags (runs of spaces collapsed) and the ``(name,
    weight)`` pairs in order; a missing weight is 1.0. Extra fields after the weight
    (A1111's separate text-encoder/UNet weights) are ignored.
    """
    loras: list[tuple[str, float]] = []
    for match in _TAG.finditer(prompt):
        name, weight = match.group(1).strip(), (match.group(2) or "").strip()
        try:
            value = float(weight) if weight else 1.0
        except ValueError:
            raise InvalidInput(
                "prompt", f"LoRA tag {match.group(0)!r} has a weight that is not a number"
            ) from None
        loras.append((name, value))
    cleaned = re.sub(r"[ \t]{2,}", " ", _TAG.sub("", prompt)).strip()
    return cleaned, loras
