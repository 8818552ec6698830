"""Diffusion upscalers: diffusers' two upscaling pipelines, served as upscalers.

- ``StableDiffusionUpscalePipeline`` (kind ``x4``; ``stabilityai/stable-diffusion-x4-upscaler``):
  a prompt-guided diffusion on the noised low-resolution image itself; 4x.
- ``StableDiffusionLatentUpscalePipeline`` (kind ``latent-x2``;
  ``stabilityai/sd-x2-latent-upscaler``): a diffusion on the image's VAE latents; 2x.

Which one a diffusers folder or cached hub model is, is read from its ``model_index.json``
(``_class_name``); a hub id not in the cache is known by its id alone. Nothing here imports
torch (the API process detects models too).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from sdserve.models.references import is_hub_id, read_json

DiffusionUpscalerKind = Literal["x4", "latent-x2"]


@dataclass(frozen=True)
class DiffusionUpscaler:
    """What sdserve knows of one diffusion upscaler pipeline and the defaults it serves.

    ``steps`` is 20 for both, not diffusers' 75: the upscalers start from the image, not
    from noise, and 20 steps are what diffusers' and Stability's own examples run (75 is
    four times slower for little visible gain). ``guidance``: the x4 keeps diffusers' 9
    (its prompt steers the detail it adds); the latent x2 gets 0, as in diffusers' and
    Stability's examples: it was trained to upscale with guidance off, and at 9 it would
    double the work to follow a prompt the image already answers.
    """

    kind: DiffusionUpscalerKind
    class_name: str
    hub_id: str
    scale: int
    steps: int
    guidance: float


X4: Final = DiffusionUpscaler(
    kind="x4",
    class_name="StableDiffusionUpscalePipeline",
    hub_id="stabilityai/stable-diffusion-x4-upscaler",
    scale=4,
    steps=20,
    guidance=9.0,
)
LATENT_X2: Final = DiffusionUpscaler(
    kind="latent-x2",
    class_name="StableDiffusionLatentUpscalePipeline",
    hub_id="stabilityai/sd-x2-latent-upscaler",
    scale=2,
    steps=20,
    guidance=0.0,
)
#: The diffusion upscalers by kind.
DIFFUSION_UPSCALERS: Final[dict[str, DiffusionUpscaler]] = {
    X4.kind: X4,
    LATENT_X2.kind: LATENT_X2,
}
#: The x4 upscaler's noise level (diffusers' default): how much noise the low-resolution
#: image gets before the diffusion; more lets the model invent more detail.
X4_NOISE_LEVEL: Final = 20


def by_kind(kind: str) -> DiffusionUpscaler:
    """The diffusion upscaler of a kind (``x4`` or ``latent-x2``)."""
    return DIFFUSION_UPSCALERS[kind]


def by_class_name(class_name: object) -> DiffusionUpscaler | None:
    """The diffusion upscaler whose pipeline class is ``class_name``, else None."""
    return next((up for up in DIFFUSION_UPSCALERS.values() if up.class_name == class_name), None)


def of_folder(folder: Path) -> DiffusionUpscaler | None:
    """The diffusion upscaler a diffusers folder holds (its ``model_index.json`` says), or
    None for any other folder."""
    index = read_json(folder / "model_index.json")
    return None if index is None else by_class_name(index.get("_class_name"))


def of_reference(
    reference: str, *, cache_dir: Path | str | None = None
) -> DiffusionUpscaler | None:
    """The diffusion upscaler a ``--model`` reference is: a diffusers folder or a cached hub
    model by its ``model_index.json``, a hub id not in the cache by its well-known id;
    None for anything else (a diffusion model, a single file)."""
    path = Path(reference).expanduser()
    if path.is_dir():
        return of_folder(path)
    if not is_hub_id(reference):
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(reference, "model_index.json", cache_dir=cache_dir)
    if isinstance(found, str):
        return of_folder(Path(found).parent)
    return next(
        (up for up in DIFFUSION_UPSCALERS.values() if up.hub_id.lower() == reference.lower()),
        None,
    )


__all__ = [
    "DIFFUSION_UPSCALERS",
    "LATENT_X2",
    "X4",
    "X4_NOISE_LEVEL",
    "DiffusionUpscaler",
    "DiffusionUpscalerKind",
    "by_class_name",
    "by_kind",
    "of_folder",
    "of_reference",
]
