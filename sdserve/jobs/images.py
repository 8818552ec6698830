"""Image inputs as bytes → pictures: the one place input bytes are decoded.

Every image a request brings (inline, uploaded, fetched from a URL, read by the CLI) goes
through :func:`open_image`, which reads the header first and refuses an image with more
pixels than the operator's input limit (:attr:`InputLimits.max_input_pixels`) before a
single pixel is decoded: a 65-byte PNG may declare 30000x30000, and decoding it would take
gigabytes. Any decode failure — Pillow's own decompression-bomb guard included — is an
:class:`InvalidImage` naming the field (a 4xx in every dialect), never a 500. The messages
never carry Pillow's text, which shows the repr of a buffer.

These functions are blocking (a decode takes up to seconds): the API calls them in a
worker thread, never on the event loop.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from sdserve.errors import InvalidImage

if TYPE_CHECKING:
    from PIL.Image import Image

NOT_AN_IMAGE = "is not a decodable image (send a PNG, JPEG or WebP file)"


def _too_many(field: str, size: tuple[int, int] | None, max_pixels: int) -> InvalidImage:
    declared = "declares more pixels" if size is None else f"is {size[0]}x{size[1]}, more"
    return InvalidImage(
        field, f"{declared} than this server's limit of {max_pixels} pixels for an input image"
    )


def open_header(data: bytes, field: str, *, max_pixels: int) -> Image:
    """The image opened lazily (header and text chunks read, no pixel decoded), its size
    checked against ``max_pixels``: for what the header tells (size, ``info``)."""
    from PIL import Image as PILImage
    from PIL import UnidentifiedImageError

    if not data:
        raise InvalidImage(field, "is empty; send an image file")
    try:
        image = PILImage.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidImage(field, NOT_AN_IMAGE) from None
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        # Pillow's own guard fires in open() for a header far beyond its limit (the warning
        # only where warnings are errors); either way the header declared too many pixels
        raise _too_many(field, None, max_pixels) from None
    except Exception:  # damaged headers raise OSError, SyntaxError, ValueError, ...
        raise InvalidImage(field, "is a damaged or truncated image file") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise _too_many(field, (width, height), max_pixels)
    return image


def image_size(data: bytes, field: str, *, max_pixels: int) -> tuple[int, int]:
    """The size an image's header declares, within ``max_pixels``; nothing is decoded."""
    with open_header(data, field, max_pixels=max_pixels) as image:
        return image.size


def open_image(data: bytes, field: str, *, max_pixels: int) -> Image:
    """``field``'s bytes decoded in their own mode, refused on the header when the image
    has more than ``max_pixels`` pixels; any failure is :class:`InvalidImage`."""
    from PIL import Image as PILImage

    image = open_header(data, field, max_pixels=max_pixels)
    try:
        image.load()
    except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
        image.close()
        raise _too_many(field, None, max_pixels) from None
    except Exception:  # truncated data raises OSError, SyntaxError, ValueError, ...
        image.close()
        raise InvalidImage(field, "is a damaged or truncated image file") from None
    return image


def decode_image(data: bytes, field: str, *, max_pixels: int) -> Image:
    """Decode ``field``'s bytes fully: RGB for an image, one channel for a ``mask``."""
    with open_image(data, field, max_pixels=max_pixels) as image:
        return image.convert("L" if field == "mask" else "RGB")
