"""Image inputs as bytes → pictures: the one place undecodable bytes become an error.

Used when a job is created (inline and uploaded images are checked at once, so a bad one
is a 422 naming the field) and by the worker (images fetched from URLs). The messages
name the field and never carry Pillow's text, which shows the repr of a buffer.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from sdserve.errors import InvalidImage

if TYPE_CHECKING:
    from PIL.Image import Image

NOT_AN_IMAGE = "is not a decodable image (send a PNG, JPEG or WebP file)"


def decode_image(data: bytes, field: str) -> Image:
    """Decode ``field``'s bytes fully: RGB for an image, one channel for a ``mask``."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    try:
        image = PILImage.open(io.BytesIO(data))
        image.load()
    except UnidentifiedImageError:
        raise InvalidImage(field, NOT_AN_IMAGE) from None
    except PILImage.DecompressionBombError:
        raise InvalidImage(field, "has too many pixels to decode safely") from None
    except Exception:  # damaged files raise OSError, SyntaxError, ValueError, ...
        raise InvalidImage(field, "is a damaged or truncated image file") from None
    return image.convert("L" if field == "mask" else "RGB")
