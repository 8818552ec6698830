"""Prompt syntax rules that need no model: which weighting syntax a prompt uses."""

from __future__ import annotations

import re

# compel-only constructs: "(words)1.3", "(words)++", "word+", "word--", ".blend(" / ".and("
COMPEL_SYNTAX = re.compile(
    r"\)\s*[0-9]*\.?[0-9]+|\)[+-]+|[\w\"][+]+(?=[\s,.)]|$)|\w--+(?=[\s,.)]|$)|\.(?:blend|and|swap)\("
)
# an unescaped bracket means A1111 attention syntax
A1111_SYNTAX = re.compile(r"(?<!\\)[()\[\]]")


def uses_compel_syntax(text: str) -> bool:
    """True when the prompt uses compel's own weighting syntax (``word++``, ``(word)1.3``)."""
    return bool(COMPEL_SYNTAX.search(text))


def is_weighted(text: str) -> bool:
    """True when the prompt has any weighting syntax, A1111 or compel."""
    return uses_compel_syntax(text) or bool(A1111_SYNTAX.search(text))
