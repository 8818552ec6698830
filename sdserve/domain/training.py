"""Canonical training input: Replicate's trainer names and defaults, validated up front.

A training job's ``input`` is a :class:`TrainingInput`. The service validates it when the
job is created (so a client learns about a bad field at once); the worker reads it back.
``input_images`` is a reference (URL, ``data:`` URI or uploaded file URL) to a ``.zip`` or
``.tar`` archive of images; the worker fetches and opens it safely.
"""

from __future__ import annotations

import random
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdserve.domain.inputs import MAX_SEED, invalid_input_from
from sdserve.errors import InvalidInput

LrScheduler = Literal["constant", "linear", "cosine"]
LR_SCHEDULERS: tuple[str, ...] = ("constant", "linear", "cosine")
ArchiveType = Literal["infer", "zip", "tar"]
#: Model families a LoRA can be trained for (inpainting models and refiners cannot).
TRAINABLE_FAMILIES: frozenset[str] = frozenset({"sd1", "sd2", "sd-turbo", "sdxl", "sdxl-turbo"})
#: ``owner/name`` of a destination model (Replicate's rules: lowercase-ish, no spaces).
DESTINATION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}/[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class TrainingInput(BaseModel):
    """One LoRA fine-tuning request in Replicate's SDXL-trainer names.

    ``resolution=None`` means the base model's native size (1024 for SDXL, 512 for SD1,
    64 for the tiny demo models). Training runs ``min(max_train_steps, num_train_epochs *
    steps_per_epoch)`` optimizer steps. ``unet_learning_rate`` is the full fine-tuning rate
    Replicate accepts; sdserve trains LoRA only, so LoRA weights use ``lora_lr``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_images: str = Field(
        min_length=1,
        description="a .zip or .tar of images (URL, data URI or uploaded file); "
        "captions as name.txt beside name.png",
    )
    input_images_filetype: ArchiveType = Field(
        default="infer", description="archive type; infer = from the bytes"
    )
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="random seed")
    resolution: int | None = Field(
        default=None, ge=64, le=2048, description="square training size; None = model's native"
    )
    train_batch_size: int = Field(default=4, ge=1, le=64, description="images per step")
    num_train_epochs: int = Field(default=4000, ge=1, le=100_000, description="passes over data")
    max_train_steps: int = Field(default=1000, ge=1, le=100_000, description="optimizer steps")
    is_lora: bool = Field(default=True, description="train a LoRA (full fine-tuning: refused)")
    unet_learning_rate: float = Field(
        default=1e-6, gt=0, le=1, description="full fine-tuning rate (unused for LoRA)"
    )
    lora_lr: float = Field(default=1e-4, gt=0, le=1, description="learning rate of the LoRA")
    lora_rank: int = Field(default=32, ge=1, le=256, description="rank of the LoRA matrices")
    lr_scheduler: LrScheduler = Field(default="constant", description="learning-rate schedule")
    lr_warmup_steps: int = Field(default=100, ge=0, le=100_000, description="warm-up steps")
    token_string: str = Field(
        default="TOK", min_length=1, max_length=100, description="the word for the new concept"
    )
    caption_prefix: str = Field(
        default="a photo of TOK, ",
        max_length=1000,
        description="caption of images without a .txt caption",
    )
    checkpointing_steps: int = Field(
        default=200, ge=1, le=100_000, description="save a resumable checkpoint every N steps"
    )
    train_text_encoder: bool = Field(
        default=False, description="also train LoRA on the text encoder(s)"
    )

    def default_caption(self) -> str:
        """Caption of an image without its own ``.txt``: the prefix naming the token.

        The prefix is used as written when it already contains the token string (Replicate's
        default ``"a photo of TOK, "``), else the token is appended (``"a photo of " + TOK``).
        """
        prefix = self.caption_prefix
        if self.token_string.lower() in prefix.lower():
            return prefix.strip().rstrip(",").strip()
        return f"{prefix}{self.token_string}".strip()

    def with_seed(self, rng: random.Random | None = None) -> TrainingInput:
        """A copy with a random 32-bit seed if none was given."""
        if self.seed is not None:
            return self
        seed = (rng or random.SystemRandom()).randint(0, MAX_SEED)
        return self.model_copy(update={"seed": seed})


def parse_training_input(data: dict[str, Any]) -> TrainingInput:
    """Validate a training input dict; raise :class:`InvalidInput` naming the first bad field."""
    if data.get("is_lora") is False:
        raise InvalidInput(
            "is_lora", "full fine-tuning is not supported; use is_lora=true", allowed=["true"]
        )
    if "input_images" not in data:
        raise InvalidInput("input_images", "is required: a .zip or .tar of images")
    try:
        return TrainingInput.model_validate(data)
    except ValidationError as exc:
        raise invalid_input_from(exc) from None


def check_destination(destination: str | None) -> str:
    """``owner/name`` of the model a training creates; raise :class:`InvalidInput`."""
    if not destination:
        raise InvalidInput("destination", "is required: the model to create, as owner/name")
    if not DESTINATION.match(destination):
        raise InvalidInput(
            "destination",
            f"must look like owner/name (letters, digits, - _ .), got {destination!r}",
        )
    return destination


def check_trainable(name: str, family: str, inpainting: bool, fine_tuned: bool) -> None:
    """Raise :class:`InvalidInput` (field ``model``) for a model that cannot be fine-tuned."""
    if fine_tuned:
        raise InvalidInput("model", f"{name} is itself fine-tuned; train its base model instead")
    if family not in TRAINABLE_FAMILIES or inpainting:
        kind = f"{family}, inpainting" if inpainting else family
        raise InvalidInput(
            "model",
            f"{name} ({kind}) cannot be fine-tuned; train a text-to-image model",
            allowed=sorted(TRAINABLE_FAMILIES),
        )
