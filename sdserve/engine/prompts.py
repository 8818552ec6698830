"""Prompt weighting with compel: AUTOMATIC1111 ``(word:1.3)`` and compel ``word++`` syntax.

A prompt without weighting syntax is handed to the pipeline as plain text, so it is encoded
by exactly the code the plain diffusers pipeline runs (the parity tests rely on that). A
weighted prompt is turned into prompt embeddings (and pooled embeddings for SDXL) by compel,
for the prompt and the negative prompt together so both have the same length. Prompts longer
than the 77-token window are encoded in chunks (compel's long-prompt mode) instead of being
cut.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from compel import Compel, DiffusersTextualInversionManager, ReturnedEmbeddingsType
from compel.convenience_wrappers import CompelForSD, CompelForSDXL

from sdserve.domain.prompts import is_weighted, uses_compel_syntax

_A1111_TOKEN = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|\]|[^\\()\[\]:]+|:")
_UP = 1.1


@dataclass(frozen=True)
class PromptEmbeds:
    """Pipeline keyword arguments computed by compel for one prompt/negative prompt pair."""

    prompt_embeds: torch.Tensor
    negative_prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor | None = None
    negative_pooled_prompt_embeds: torch.Tensor | None = None

    def as_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "prompt_embeds": self.prompt_embeds,
            "negative_prompt_embeds": self.negative_prompt_embeds,
        }
        if self.pooled_prompt_embeds is not None:
            kwargs["pooled_prompt_embeds"] = self.pooled_prompt_embeds
            kwargs["negative_pooled_prompt_embeds"] = self.negative_pooled_prompt_embeds
        return kwargs


def parse_a1111(text: str) -> list[tuple[str, float]]:
    """Split an A1111 prompt into ``(text, weight)`` runs.

    ``(x)`` multiplies by 1.1, ``[x]`` divides by 1.1, ``(x:w)`` multiplies by ``w``; brackets
    nest; ``\\(`` is a literal parenthesis; an unclosed bracket weights the rest of the prompt.
    """
    runs: list[list[Any]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] *= factor

    for match in _A1111_TOKEN.finditer(text):
        token = match.group(0)
        explicit = match.group(1)
        if token.startswith("\\"):
            runs.append([token[1:] or "\\", 1.0])
        elif token == "(":
            round_open.append(len(runs))
        elif token == "[":
            square_open.append(len(runs))
        elif explicit is not None and round_open:
            scale(round_open.pop(), float(explicit))
        elif token == ")" and round_open:
            scale(round_open.pop(), _UP)
        elif token == "]" and square_open:
            scale(square_open.pop(), 1 / _UP)
        else:
            runs.append([token, 1.0])
    for start in round_open:
        scale(start, _UP)
    for start in square_open:
        scale(start, 1 / _UP)
    merged: list[tuple[str, float]] = []
    for chunk, weight in runs:
        if merged and abs(merged[-1][1] - weight) < 1e-9:
            merged[-1] = (merged[-1][0] + chunk, weight)
        else:
            merged.append((chunk, weight))
    return [(chunk, weight) for chunk, weight in merged if chunk.strip()]


def _escape_for_compel(text: str) -> str:
    return re.sub(r"([()\\])", r"\\\1", text).replace('"', "'")


def a1111_to_compel(text: str) -> str:
    """Rewrite an A1111 attention prompt in compel syntax (``(text)1.21`` runs)."""
    parts = []
    for chunk, weight in parse_a1111(text):
        escaped = _escape_for_compel(chunk.strip())
        parts.append(escaped if abs(weight - 1.0) < 1e-9 else f"({escaped}){weight:.4g}")
    return " ".join(parts)


def to_compel(text: str) -> str:
    """The compel form of any prompt: compel syntax is kept, A1111 syntax is translated."""
    return text if uses_compel_syntax(text) else a1111_to_compel(text)


def prompt_kwargs(pipe: Any, prompt: str, negative_prompt: str) -> dict[str, Any]:
    """Keyword arguments that give ``pipe`` this prompt pair.

    Plain prompts are passed through as text (the pipeline encodes them itself); weighted
    prompts become compel embeddings.
    """
    if not (is_weighted(prompt) or is_weighted(negative_prompt)):
        return {"prompt": prompt, "negative_prompt": negative_prompt or None}
    return encode(pipe, prompt, negative_prompt).as_kwargs()


@torch.no_grad()
def encode(pipe: Any, prompt: str, negative_prompt: str) -> PromptEmbeds:
    """Compel embeddings of a prompt pair for an SD1/SD2, SDXL or SDXL-refiner pipeline."""
    positive, negative = to_compel(prompt), to_compel(negative_prompt)
    if getattr(pipe, "text_encoder_2", None) is None:
        sd = CompelForSD(pipe, _inversions(pipe)).__call__(positive, negative_prompt=negative)
        return PromptEmbeds(sd.embeds, sd.negative_embeds)
    if getattr(pipe, "text_encoder", None) is None:
        zero = _zero_negative(pipe, negative)
        return _encode_refiner(pipe, positive, negative, zero_negative=zero)
    xl = CompelForSDXL(pipe, _inversions(pipe)).__call__(positive, negative_prompt=negative)
    embeds = PromptEmbeds(
        xl.embeds, xl.negative_embeds, xl.pooled_embeds, xl.negative_pooled_embeds
    )
    return _zeroed(embeds) if _zero_negative(pipe, negative) else embeds


def _inversions(pipe: Any) -> DiffusersTextualInversionManager:
    """Expands a multi-vector embedding's name to its tokens, as the pipelines do."""
    return DiffusersTextualInversionManager(pipe)


def _zero_negative(pipe: Any, negative: str) -> bool:
    # SDXL pipelines use zeros, not the encoded empty string, for an empty negative prompt
    return not negative and bool(pipe.config.get("force_zeros_for_empty_prompt", False))


def _zeroed(embeds: PromptEmbeds) -> PromptEmbeds:
    pooled = embeds.negative_pooled_prompt_embeds
    return PromptEmbeds(
        embeds.prompt_embeds,
        torch.zeros_like(embeds.negative_prompt_embeds),
        embeds.pooled_prompt_embeds,
        None if pooled is None else torch.zeros_like(pooled),
    )


def _encode_refiner(
    pipe: Any, positive: str, negative: str, *, zero_negative: bool
) -> PromptEmbeds:
    # The SDXL refiner has only the second (OpenCLIP) encoder, which also gives the pooled vector.
    compel = Compel(
        tokenizer=pipe.tokenizer_2,
        text_encoder=pipe.text_encoder_2,
        returned_embeddings_type=ReturnedEmbeddingsType.PENULTIMATE_HIDDEN_STATES_NON_NORMALIZED,
        requires_pooled=True,
        truncate_long_prompts=False,
    )
    embeds, pooled = compel([positive, negative])
    result = PromptEmbeds(embeds[:1], embeds[1:], pooled[:1], pooled[1:])
    return _zeroed(result) if zero_negative else result
