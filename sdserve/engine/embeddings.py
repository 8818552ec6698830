"""Textual-inversion embeddings at request time: the ones a request's prompts use are put
into the model's tokenizers and text encoders before its first step.

An embedding (``models.embeddings``) is used by its name as a word of the prompt or the
negative prompt. Its vectors are loaded with diffusers' ``load_textual_inversion`` (a
multi-vector one becomes ``name``, ``name_1``…, which the pipelines and compel expand the
name to), once per tokenizer: pipelines derived with ``from_pipe`` share the base's, so
every task sees it, and a model loaded again gets it again when a prompt asks. SDXL's
embeddings carry one set of vectors per encoder (``clip_l``, ``clip_g``); the refiner,
which has only the second encoder, gets ``clip_g``. Loaded vectors stay: a prompt without
the name never reads them, so other requests keep their exact pixels. The name matches
whole words only, as :meth:`EmbeddingSpec.in_text` finds it.

Files are read without running code: ``.safetensors``, or torch's ``weights_only`` loader
for A1111's ``.pt``.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from sdserve.engine.tasks import Pipeline
from sdserve.errors import ModelLoadError
from sdserve.models.embeddings import SDXL_KEYS, EmbeddingCatalog, EmbeddingSpec

log = logging.getLogger(__name__)

#: Where a pipeline keeps each encoder: (tokenizer, text encoder, the SDXL key of its vectors).
_ENCODERS = (("tokenizer", "text_encoder", "clip_l"), ("tokenizer_2", "text_encoder_2", "clip_g"))


class Embeddings:
    """Loads the served embeddings (``catalog``) a request uses into its pipelines."""

    def __init__(self, catalog: EmbeddingCatalog) -> None:
        self.catalog = catalog
        #: tokenizer → the embeddings (name → file stamp) put into it and its encoder
        self._loaded: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def prepare(self, pipes: Iterable[Pipeline | None], family: str, texts: Sequence[str]) -> None:
        """Put the embeddings fitting ``family`` that ``texts`` use into each of ``pipes``
        (None: a pipeline the request has not). Raises :class:`ModelLoadError` for a file
        that cannot be read or whose vectors do not fit the encoder."""
        used = self.catalog.used_in(family, *texts)
        if not used:
            return
        with self._lock:
            for pipe in pipes:
                if pipe is not None:
                    for spec in used:
                        self._put(pipe, spec)

    def _put(self, pipe: Pipeline, spec: EmbeddingSpec) -> None:
        stamp = spec.path.stat().st_mtime_ns
        vectors: dict[str, torch.Tensor] | None = None
        for tokenizer_name, encoder_name, key in _ENCODERS:
            tokenizer = getattr(pipe, tokenizer_name, None)
            encoder = getattr(pipe, encoder_name, None)
            if tokenizer is None or encoder is None:
                continue
            done = self._loaded.setdefault(tokenizer, {})
            if done.get(spec.name) == stamp:
                continue
            if spec.name in done:  # the file changed: its tokens are there already
                raise ModelLoadError(
                    f"embedding {spec.name} changed on disk since it was loaded; restart the "
                    "worker to use the new vectors"
                )
            vectors = vectors if vectors is not None else read_vectors(spec)
            part = vectors.get(key) if spec.family == "sdxl" else vectors.get("")
            if part is None:
                continue
            try:
                pipe.load_textual_inversion(
                    {spec.name: part}, token=spec.name, tokenizer=tokenizer, text_encoder=encoder
                )
            except ValueError as exc:
                raise ModelLoadError(f"cannot load embedding {spec.name}: {exc}") from exc
            _whole_words_only(tokenizer, spec.name, len(part))
            done[spec.name] = stamp
            log.info("loaded embedding %s (%d vectors) into %s", spec.name, len(part), encoder_name)


def _whole_words_only(tokenizer: Any, name: str, vectors: int) -> None:
    """The embedding's tokens match whole words only: a tokenizer's added token would
    otherwise match inside a longer word (``glow`` in ``glowing``), which is not the name."""
    from transformers import AddedToken

    tokens = [name, *(f"{name}_{index}" for index in range(1, vectors))]
    tokenizer.add_tokens([AddedToken(token, single_word=True) for token in tokens])


def read_vectors(spec: EmbeddingSpec) -> dict[str, torch.Tensor]:
    """The embedding's vectors: by SDXL key (``clip_l``, ``clip_g``), or under ``""`` for a
    one-encoder embedding; each 2-D (vectors x width)."""
    path = spec.path
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(path)
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors and torch raise their own kinds for a bad file
        raise ModelLoadError(f"cannot read embedding {spec.name} ({path}): {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict):
        data = data["string_to_param"]  # A1111's training output
    if spec.family == "sdxl":
        return {key: _two_d(data[key]) for key in SDXL_KEYS}
    (tensor,) = [value for value in data.values() if isinstance(value, torch.Tensor)]
    return {"": _two_d(tensor)}


def _two_d(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().reshape(-1, tensor.shape[-1])


__all__ = ["Embeddings", "read_vectors"]
