"""Generation metadata in AUTOMATIC1111's ``parameters`` format, and image encoding.

Every output image carries the text that reproduces it, written the way AUTOMATIC1111
writes it so that its ``PNG Info`` tab, Civitai and other tools read our images::

    a red fox, snow
    Negative prompt: blurry
    Steps: 4, Sampler: Euler, CFG scale: 7.5, Seed: 7, Size: 64x64, Model: tiny-sd

The prompt may span several lines; the negative prompt line appears only when there is
one; the last line is ``Key: value`` pairs joined by ``", "``, a value holding a comma,
colon or newline written as a JSON string. PNG stores the text in a ``parameters`` text
chunk; JPEG and WebP in the EXIF ``UserComment`` tag (``UNICODE`` prefix + UTF-16BE), as
AUTOMATIC1111 does.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import PurePath

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from sdserve.domain.inputs import OUTPUT_FORMATS, GenerationInput
from sdserve.domain.schedulers import A1111_SAMPLERS, lookup_key
from sdserve.domain.upscaling import LATENT_LABELS
from sdserve.errors import InvalidImage, InvalidInput
from sdserve.models.upscalers import display_name_of

#: Our scheduler names (Replicate spellings and extras) → AUTOMATIC1111's sampler names;
#: A1111's own names (:data:`~sdserve.domain.schedulers.A1111_SAMPLERS`) are written as A1111
#: spells them.
A1111_SAMPLER_NAMES: dict[str, str] = {
    "DDIM": "DDIM",
    "DPMSolverMultistep": "DPM++ 2M",
    "HeunDiscrete": "Heun",
    "KarrasDPM": "DPM++ 2M Karras",
    "K_EULER_ANCESTRAL": "Euler a",
    "K_EULER": "Euler",
    "PNDM": "PLMS",
    "UniPC": "UniPC",
    "LCM": "LCM",
}
_CONTENT_TYPES = {"png": "image/png", "webp": "image/webp", "jpg": "image/jpeg"}
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_UNICODE_PREFIX = b"UNICODE\x00"
_ASCII_PREFIX = b"ASCII\x00\x00\x00"
# A JPEG APP1 segment holds at most 64 KiB; longer EXIF cannot be written.
_MAX_JPEG_EXIF = 65_000
# Quality for the lossy formats; A1111's default is 80, we favour fidelity a little more.
_LOSSY_QUALITY = 90
# One "Key: value" pair of the last line: a JSON-quoted value or anything up to a comma.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")


def format_parameters(
    inp: GenerationInput,
    *,
    seed: int,
    width: int,
    height: int,
    model: str,
    task: str | None = None,
) -> str:
    """Write the A1111 ``parameters`` text for one image generated from ``inp``.

    ``inp`` must have its defaults filled (:meth:`GenerationInput.with_defaults`);
    ``seed``, ``width`` and ``height`` are those of this image (image *i* uses seed + i,
    img2img sizes come from the input image). ``task`` overrides ``inp.task`` when the
    caller knows better (an image handed over directly rather than by reference); every
    task but txt2img writes its ``Denoising strength``.
    """
    params: dict[str, str] = {
        "Steps": str(inp.num_inference_steps),
        "Sampler": sampler_display_name(inp.scheduler or ""),
        "CFG scale": _number(inp.guidance_scale if inp.guidance_scale is not None else 0.0),
        "Seed": str(seed),
        "Size": f"{width}x{height}",
        "Model": model,
    }
    if inp.noise_schedule and inp.noise_schedule.lower() != "automatic":
        params["Schedule type"] = inp.noise_schedule.replace("_", " ").title()
    if (task or inp.task) != "txt2img":
        params["Denoising strength"] = _number(inp.prompt_strength)
    if inp.hires_scale is not None:
        # A1111's spelling; the strength is that of the hires pass
        params["Denoising strength"] = _number(inp.hires_strength)
        params["Hires upscale"] = _number(inp.hires_scale)
        if inp.hires_steps is not None:
            params["Hires steps"] = str(inp.hires_steps)
        # A1111 names the upscaler as it lists it (the file stem; Lanczos for the default)
        upscaler = inp.hires_upscaler or "upscalers/lanczos"
        params["Hires upscaler"] = LATENT_LABELS.get(upscaler) or display_name_of(upscaler)
    if inp.lora:
        params["Lora"] = f"{lora_display_name(inp.lora)}:{_number(inp.lora_scale)}"
    if inp.refine != "no_refiner":
        params["Refine"] = inp.refine
    lines = [inp.prompt]
    if inp.negative_prompt:
        lines.append(f"Negative prompt: {inp.negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in params.items()))
    return "\n".join(lines)


def sampler_display_name(scheduler: str) -> str:
    """A1111's name for ``scheduler`` when it has one, else the name itself."""
    return _DISPLAY_INDEX.get(_name_key(scheduler), scheduler)


def lora_display_name(ref: str) -> str:
    """The short name of a LoRA reference: a file's stem, or the name as given."""
    if ref.endswith(".safetensors") or "/" in ref or "\\" in ref:
        return PurePath(ref).stem
    return ref


def parse_parameters(text: str) -> dict[str, str]:
    """Read A1111 ``parameters`` text back into a dict.

    Keys: ``Prompt``, ``Negative prompt`` (empty when absent) and each ``Key`` of the last
    line with its unquoted value; ``Size`` is also split into ``Size-1`` (width) and
    ``Size-2`` (height) as A1111 does. A last line with fewer than three pairs is taken
    as part of the prompt, like A1111.
    """
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for raw in lines:
        line = raw.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    result = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _PARAM.findall(last):
        value = _unquote(value.strip())
        result[key] = value
        size = _SIZE.match(value)
        if size is not None:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
    return result


def encode_image(image: Image.Image, fmt: str, parameters: str) -> bytes:
    """Encode ``image`` as png, webp or jpg with ``parameters`` embedded.

    PNG uses fast settings (low zlib level, no optimize pass): encoding a 1024² image
    stays in milliseconds, the files are somewhat larger.
    """
    content_type(fmt)  # validates the name
    buffer = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("parameters", parameters)  # falls back to iTXt for non-Latin-1 text
        image.save(buffer, format="PNG", pnginfo=info, compress_level=1, optimize=False)
    elif fmt == "webp":
        image.save(buffer, format="WEBP", quality=_LOSSY_QUALITY, exif=_exif_bytes(parameters))
    else:
        exif = _exif_bytes(parameters)
        if len(exif) > _MAX_JPEG_EXIF:
            # too long for a JPEG segment; keep the image, keep the reproducing line
            exif = _exif_bytes(parameters.rsplit("\n", 1)[-1])
        image.convert("RGB").save(buffer, format="JPEG", quality=_LOSSY_QUALITY, exif=exif)
    return buffer.getvalue()


def read_parameters(data: bytes) -> str | None:
    """The ``parameters`` text of an encoded png/webp/jpg image, or None if it has none."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            text = image.info.get("parameters")
            if isinstance(text, str):
                return text
            comment = image.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InvalidImage("image", f"cannot be decoded as an image ({exc})") from None
    except Image.DecompressionBombError:
        raise InvalidImage("image", "has too many pixels to read safely") from None
    if isinstance(comment, bytes):
        return _decode_user_comment(comment)
    if isinstance(comment, str) and comment:
        return comment
    return None


def content_type(fmt: str) -> str:
    """The HTTP content type of an output format (png, webp, jpg)."""
    try:
        return _CONTENT_TYPES[fmt]
    except KeyError:
        raise InvalidInput(
            "output_format", f"unknown format {fmt!r}", allowed=OUTPUT_FORMATS
        ) from None


def _name_key(name: str) -> str:
    # the engine accepts names in any case, with "_" or " ", and k-diffusion's "k_" prefix
    key = lookup_key(name)
    return key[2:] if key.startswith("k ") else key


_DISPLAY_INDEX: dict[str, str] = {
    **{_name_key(name): name for name in A1111_SAMPLERS},
    **{_name_key(name): display for name, display in A1111_SAMPLER_NAMES.items()},
}


def _number(value: float) -> str:
    # 7.0 → "7", 0.75 → "0.75": the way people read and type these values
    return f"{value:g}"


def _quote(value: str) -> str:
    if any(char in value for char in ",:\n"):
        return json.dumps(value, ensure_ascii=False)
    return value


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            loaded = json.loads(value)
        except json.JSONDecodeError:
            return value
        return loaded if isinstance(loaded, str) else value
    return value


def _exif_bytes(text: str) -> bytes:
    exif = Image.Exif()
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = _UNICODE_PREFIX + text.encode("utf-16-be")
    return exif.tobytes()


def _decode_user_comment(comment: bytes) -> str | None:
    prefix, body = comment[:8], comment[8:]
    if prefix == _UNICODE_PREFIX:
        # A1111 writes big-endian; a byte-order mark, if any, says otherwise
        if body.startswith(b"\xff\xfe"):
            return body[2:].decode("utf-16-le", errors="replace")
        return body.decode("utf-16-be", errors="replace").lstrip("\ufeff")
    if prefix == _ASCII_PREFIX:
        return body.decode("ascii", errors="replace").rstrip("\x00")
    text = comment.decode("utf-8", errors="replace").strip("\x00")
    return text or None
