"""Training examples: images resized and center-cropped to the resolution, with captions.

Captions follow the common convention: ``name.txt`` beside ``name.png``; an image without
one gets the input's default caption (``caption_prefix`` naming the token string). The
token string is kept as written in ``.txt`` captions; a caption that does not mention it
is used as is (the user chose it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sdserve.domain.training import TrainingInput
from sdserve.errors import InvalidInput
from sdserve.training.archive import FIELD, ArchiveImage

if TYPE_CHECKING:
    from PIL.Image import Image


@dataclass(frozen=True)
class Example:
    """One training example: an RGB image of ``resolution`` x ``resolution`` and its caption."""

    image: Image
    caption: str
    source: str  # the member name in the archive


def fit_square(image: Image, resolution: int) -> Image:
    """Resize so the short side is ``resolution`` (Lanczos), then center-crop to a square."""
    from PIL import Image as PILImage

    rgb = image.convert("RGB")
    width, height = rgb.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if size != rgb.size:
        rgb = rgb.resize(size, PILImage.Resampling.LANCZOS)
    left = (rgb.width - resolution) // 2
    top = (rgb.height - resolution) // 2
    return rgb.crop((left, top, left + resolution, top + resolution))


def build_examples(
    images: Sequence[ArchiveImage], inp: TrainingInput, resolution: int
) -> list[Example]:
    """Open each archive image, fit it to ``resolution`` and attach its caption."""
    from PIL import Image as PILImage

    if resolution % 8:
        raise InvalidInput("resolution", f"must be a multiple of 8, got {resolution}")
    default = inp.default_caption()
    examples = []
    for item in images:
        try:
            with PILImage.open(item.path) as opened:
                fitted = fit_square(opened, resolution)
        except OSError as exc:
            raise InvalidInput(FIELD, f"{item.name!r} is not a readable image ({exc})") from None
        examples.append(Example(image=fitted, caption=item.caption or default, source=item.name))
    return examples
