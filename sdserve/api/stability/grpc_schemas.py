"""Stability's gRPC ``Request`` → a canonical job input, and a finished job → ``Answer``\\s.

The messages are the ones the ``stability-sdk`` package ships (``generation_pb2``, the
``sdserve[stability]`` extra), so the wire format is exactly the one its client speaks;
this module imports them and is imported only when ``--grpc-port`` is given.

How a ``Request`` reads (names as the client sets them):

* ``engine_id`` is an engine id (:func:`~sdserve.api.stability.engines.resolve_engine`).
* ``prompt[]``: text prompts with ``parameters.weight`` (unset reads as 1; a negative
  weight is a negative prompt), an ``ARTIFACT_IMAGE`` init image and an ``ARTIFACT_MASK``
  mask. Stability's masks keep the white pixels and repaint the black ones; sdserve's
  are the other way round, so the mask is inverted here.
* ``image``: ``width``, ``height``, ``seed[]`` (0 or none = random; several must be
  ``s, s+1, ...`` as sdserve draws image *i* with seed + *i*), ``steps``, ``samples``,
  ``transform.diffusion`` (the sampler), ``parameters[0].sampler.cfg_scale`` and
  ``parameters[0].schedule.start`` (the share of the steps that run on an init image:
  sdserve's ``prompt_strength``).
* ``extras``: the client puts the style preset at ``{"$IPC": {"preset": name}}``.
* An init image *without* a step schedule is what the client's ``upscale()`` sends: on an
  upscaler engine (``esrgan-v1-x2plus``, the client's default) the served model upscaler
  enlarges it to the target; on a diffusion engine it is a diffusion upscale on its model,
  the image resized (Lanczos) to the target and redrawn lightly
  (``engines.UPSCALE_STRENGTH``). The target is ``width`` x ``height``;
  with only one of them the other keeps the aspect ratio; with neither, twice the size.

What would draw something else and sdserve cannot do (T2I adapters, fine-tuning
parameters, token prompts, other artifact types, the non-image request kinds) is refused
naming the field. CLIP guidance and ``schedule.end`` are taken and not applied, as the
REST v1 dialect takes ``clip_guidance_preset``: the answer names them in its
``x-sdserve-ignored-fields`` metadata.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import stability_sdk.interfaces.gooseai.generation.generation_pb2 as generation
from google.protobuf.json_format import MessageToDict
from PIL import ImageOps

from sdserve.api.stability.engines import (
    UPSCALE_FACTOR,
    UPSCALE_STRENGTH,
    WeightedPrompt,
    scheduler_for,
    split_prompts,
    style_preset,
)
from sdserve.api.stability.results import Artifact
from sdserve.domain.inputs import MAX_SEED, InputLimits
from sdserve.errors import InvalidImage, InvalidInput
from sdserve.jobs.contract import JobService
from sdserve.jobs.images import decode_image, image_size

#: Fields as a gRPC client names them, for error messages.
INIT_IMAGE = "prompt[ARTIFACT_IMAGE]"
MASK = "prompt[ARTIFACT_MASK]"
WIDTH = "image.width"
HEIGHT = "image.height"
SEED = "image.seed"
SAMPLER = "image.transform.diffusion"
STEP_PARAMETERS = "image.parameters"
SCHEDULE_START = "image.parameters[0].schedule.start"
SCHEDULE_END = "image.parameters[0].schedule.end"
GUIDANCE = "image.parameters[0].guidance"
CFG_SCALE = "image.parameters[0].sampler.cfg_scale"
PRESET = "extras.$IPC.preset"

#: Canonical input names → the Request field a client sets (``Edge.create`` renames).
GRPC_FIELDS: dict[str, str] = {
    "prompt": "prompt",
    "negative_prompt": "prompt",
    "image": INIT_IMAGE,
    "mask": MASK,
    "width": WIDTH,
    "height": HEIGHT,
    "num_outputs": "image.samples",
    "num_inference_steps": "image.steps",
    "guidance_scale": CFG_SCALE,
    "scheduler": SAMPLER,
    "prompt_strength": SCHEDULE_START,
    "seed": SEED,
}


@dataclass(frozen=True)
class GrpcInput:
    """A Request read: the canonical values without the images, the images as sdserve
    takes them (the mask as PNG, already white = repaint), and the fields taken but not
    applied (answered in the ``x-sdserve-ignored-fields`` metadata)."""

    values: dict[str, Any]
    image: bytes | None = None
    mask: bytes | None = None
    upscale: bool = False
    ignored: tuple[str, ...] = ()

    def canonical(self, service: JobService) -> dict[str, Any]:
        """The canonical input with the images stored as uploads (blocking: call it off
        the event loop)."""
        values = dict(self.values)
        if self.image is not None:
            values["image"] = service.store_upload(self.image, "init_image.png", "image/png")
        if self.mask is not None:
            values["mask"] = service.store_upload(self.mask, "mask.png", "image/png")
        return values


def read_request(request: Any, limits: InputLimits, *, model_upscale: bool = False) -> GrpcInput:
    """Read a ``generation.Request``; raise :class:`InvalidInput` naming the field at
    fault. Decodes the images (blocking: call it off the event loop). ``model_upscale``:
    the engine is an upscaler (ESRGAN), so an upscale is the target size alone."""
    kind = request.WhichOneof("params")
    if kind not in (None, "image"):
        raise InvalidInput(kind, "sdserve serves image generation only (send image parameters)")
    params = request.image
    _refuse_unserved(params)
    texts, image, mask = _prompts(request.prompt, limits)
    step = _step_parameters(params)
    schedule = step.schedule if step is not None and step.HasField("schedule") else None

    values: dict[str, Any] = {}
    preset = style_preset(_preset_name(request), field=PRESET)
    upscale = image is not None and schedule is None  # see is_upscale
    if texts or not upscale:
        values["prompt"], negative = split_prompts(texts, preset, field="prompt")
        if negative:
            values["negative_prompt"] = negative
    values.update(_seed_and_samples(params))
    if params.HasField("steps"):
        values["num_inference_steps"] = params.steps
    if step is not None and step.HasField("sampler") and step.sampler.HasField("cfg_scale"):
        values["guidance_scale"] = step.sampler.cfg_scale
    if params.HasField("transform") and params.transform.HasField("diffusion"):
        values["scheduler"] = scheduler_for(_sampler_name(params.transform.diffusion), SAMPLER)

    if image is not None and upscale:
        if mask is not None:
            raise InvalidInput(
                MASK, "an upscale (an init image without a step schedule) takes no mask"
            )
        if model_upscale:
            width, height = upscale_size(image, params, limits)
            sized = {"upscale_width": width, "upscale_height": height}
            return GrpcInput(sized, image=image, upscale=True, ignored=tuple(_ignored(step)))
        if params.HasField("steps") and int(params.steps * UPSCALE_STRENGTH) < 1:
            raise InvalidInput(
                "image.steps",
                f"an upscale redraws {UPSCALE_STRENGTH:.0%} of the steps: send at least "
                f"{math.ceil(1 / UPSCALE_STRENGTH)}",
            )
        values["width"], values["height"] = upscale_size(image, params, limits)
        values["prompt_strength"] = UPSCALE_STRENGTH
        return GrpcInput(values, image=image, upscale=True, ignored=tuple(_ignored(step)))

    if params.HasField("width"):
        values["width"] = params.width
    if params.HasField("height"):
        values["height"] = params.height
    if image is not None and schedule is not None and schedule.HasField("start"):
        values["prompt_strength"] = schedule.start
    return GrpcInput(values, image=image, mask=mask, ignored=tuple(_ignored(step)))


def is_upscale(request: Any) -> bool:
    """Whether ``request`` asks for an upscale: an init image and no step schedule, as
    the client's ``upscale()`` sends (its ``generate()`` always sends a schedule with an
    init image). Reads no image."""
    has_image = any(
        prompt.WhichOneof("prompt") == "artifact"
        and prompt.artifact.type == generation.ARTIFACT_IMAGE
        for prompt in request.prompt
    )
    parameters = request.image.parameters
    return has_image and not (len(parameters) and parameters[0].HasField("schedule"))


# -- prompts ---------------------------------------------------------------------------------


def _prompts(
    prompts: Sequence[Any], limits: InputLimits
) -> tuple[list[WeightedPrompt], bytes | None, bytes | None]:
    """The text prompts with their weights, the init image (PNG) and the mask (PNG, inverted
    to white = repaint)."""
    texts: list[WeightedPrompt] = []
    image: bytes | None = None
    mask: bytes | None = None
    for prompt in prompts:
        kind = prompt.WhichOneof("prompt")
        if kind == "text":
            weight = 1.0
            if prompt.HasField("parameters") and prompt.parameters.HasField("weight"):
                weight = prompt.parameters.weight
            texts.append(WeightedPrompt(prompt.text, weight))
        elif kind == "artifact":
            artifact = prompt.artifact
            if artifact.type == generation.ARTIFACT_IMAGE:
                if image is not None:
                    raise InvalidInput(INIT_IMAGE, "send one init image")
                # decoded when the job is created (service.create), named INIT_IMAGE
                image = _artifact_bytes(artifact, INIT_IMAGE)
            elif artifact.type == generation.ARTIFACT_MASK:
                if mask is not None:
                    raise InvalidInput(MASK, "send one mask")
                mask = _inverted_mask(_artifact_bytes(artifact, MASK), limits)
            else:
                kind_name = generation.ArtifactType.Name(artifact.type)
                raise InvalidInput(
                    f"prompt[{kind_name}]",
                    "sdserve takes text prompts, an ARTIFACT_IMAGE init image and an "
                    "ARTIFACT_MASK mask",
                )
        elif kind == "tokens":
            raise InvalidInput("prompt.tokens", "send the prompt as text")
    if mask is not None and image is None:
        raise InvalidInput(MASK, "a mask needs an init image (ARTIFACT_IMAGE) to inpaint")
    return texts, image, mask


def _artifact_bytes(artifact: Any, name: str) -> bytes:
    if artifact.WhichOneof("data") != "binary":
        raise InvalidInput(name, "send the image as the artifact's binary (PNG, JPEG or WebP)")
    return bytes(artifact.binary)


def _inverted_mask(data: bytes, limits: InputLimits) -> bytes:
    """Stability's mask (white = keep) as sdserve's (white = repaint), as PNG."""
    try:
        mask = decode_image(data, "mask", max_pixels=limits.max_input_pixels)
    except InvalidImage as error:
        raise InvalidImage(MASK, error.message.removeprefix("mask: ")) from None
    with mask:
        out = io.BytesIO()
        ImageOps.invert(mask).save(out, format="PNG")
    return out.getvalue()


def _preset_name(request: Any) -> str | None:
    """The style preset the client put in ``extras``; any other extra is refused (as REST
    v1 refuses ``extras``): no experimental engine parameters exist here, and ignoring one
    would draw something else than asked."""
    if not request.HasField("extras"):
        return None
    extras = MessageToDict(request.extras)
    ipc = extras.pop("$IPC", {})
    if not isinstance(ipc, dict):
        raise InvalidInput("extras.$IPC", "must be an object holding the style preset")
    preset = ipc.pop("preset", None)
    others = [f"extras.{key}" for key in extras] + [f"extras.$IPC.{key}" for key in ipc]
    if others:
        raise InvalidInput(others[0], "is not read here: extras carry only $IPC.preset")
    if preset is not None and not isinstance(preset, str):
        raise InvalidInput(PRESET, "must be a style preset's name")
    return None if preset is None or preset.lower() == "none" else preset


# -- image parameters --------------------------------------------------------------------------


def _refuse_unserved(params: Any) -> None:
    """Refuse the image parameters that would change the picture and that sdserve lacks."""
    if params.HasField("transform") and params.transform.HasField("upscaler"):
        raise InvalidInput(
            "image.transform.upscaler",
            "an upscaler is an engine here: the client's upscale() with "
            "upscale_engine='esrgan-v1-x2plus' runs the served model upscaler",
        )
    if params.HasField("adapter") and params.adapter.adapter_type != generation.T2IADAPTER_NONE:
        raise InvalidInput("image.adapter.adapter_type", "T2I adapters are not served")
    if len(params.fine_tuning_parameters):
        raise InvalidInput(
            "image.fine_tuning_parameters", "fine-tuned models are engines of their own here"
        )
    if len(params.parameters) > 1:
        raise InvalidInput(STEP_PARAMETERS, "send at most one step parameter")


def _step_parameters(params: Any) -> Any | None:
    return params.parameters[0] if len(params.parameters) else None


def _ignored(step: Any | None) -> list[str]:
    """Fields taken but not applied: CLIP guidance (sdserve has none; Stability itself
    skipped it where an engine could not use it) and an early end of the schedule (every
    job runs to the last step; the client sends ``end=0.01`` with every init image)."""
    ignored = []
    if step is not None:
        guidance = step.guidance if step.HasField("guidance") else None
        if guidance is not None and guidance.guidance_preset != generation.GUIDANCE_PRESET_NONE:
            ignored.append(GUIDANCE)
        if step.HasField("schedule") and step.schedule.HasField("end") and step.schedule.end:
            ignored.append(SCHEDULE_END)
    return ignored


def _seed_and_samples(params: Any) -> dict[str, Any]:
    """``seed`` (left out for random) and ``num_outputs`` from ``seed[]`` and ``samples``."""
    seeds = list(params.seed)
    values: dict[str, Any] = {}
    if params.HasField("samples"):
        values["num_outputs"] = params.samples
    elif len(seeds) > 1:
        values["num_outputs"] = len(seeds)
    if not seeds or seeds[0] == 0:
        if len(seeds) > 1:
            raise InvalidInput(SEED, "0 asks for a random seed; send it alone")
        return values
    expected = [(seeds[0] + index) % (MAX_SEED + 1) for index in range(len(seeds))]
    if seeds != expected:
        raise InvalidInput(
            SEED, "sdserve draws image i with seed + i: send one seed, or s, s+1, s+2..."
        )
    if len(seeds) > 1 and values["num_outputs"] != len(seeds):
        raise InvalidInput(SEED, f"{len(seeds)} seeds for {values['num_outputs']} samples")
    values["seed"] = seeds[0]
    return values


def _sampler_name(value: int) -> str:
    try:
        return str(generation.DiffusionSampler.Name(value))
    except ValueError:  # an enum number this protocol version does not know
        return str(value)


def upscale_size(image: bytes, params: Any, limits: InputLimits) -> tuple[int, int]:
    """The size an upscale draws at: ``width`` x ``height``, one of them with the image's
    aspect ratio (a multiple of 8), or twice the image; within the operator's pixel limit."""
    try:
        # the header only: no decoding
        source_w, source_h = image_size(image, "image", max_pixels=limits.max_input_pixels)
    except InvalidImage as error:
        raise InvalidImage(INIT_IMAGE, error.message.removeprefix("image: ")) from None
    width = params.width if params.HasField("width") else None
    height = params.height if params.HasField("height") else None
    if width is None and height is None:
        width, height = source_w * UPSCALE_FACTOR, source_h * UPSCALE_FACTOR
    elif height is None:
        assert width is not None
        height = _multiple_of_8(width * source_h / source_w)
    elif width is None:
        width = _multiple_of_8(height * source_w / source_h)
    if width * height > limits.max_pixels:
        name = WIDTH if params.HasField("width") or not params.HasField("height") else HEIGHT
        raise InvalidInput(
            name,
            f"upscaling the {source_w}x{source_h} image to {width}x{height} exceeds the limit "
            f"of {limits.max_pixels} pixels",
        )
    return width, height


def _multiple_of_8(value: float) -> int:
    return max(8, round(value / 8) * 8)


# -- answers ---------------------------------------------------------------------------------


def answer(artifact: Artifact, index: int, *, job_id: str, request: Any, received_ms: int) -> Any:
    """One ``Answer`` carrying image ``index`` of a finished job (one image per message,
    so each stays under the client's message size limit)."""
    filtered = artifact.finish_reason == "CONTENT_FILTERED"
    return generation.Answer(
        answer_id=job_id,
        request_id=request.request_id,
        received=received_ms,
        created=int(time.time() * 1000),
        meta=generation.AnswerMeta(engine_id=request.engine_id),
        artifacts=[
            generation.Artifact(
                id=index,
                type=generation.ARTIFACT_IMAGE,
                mime=artifact.content_type,
                binary=artifact.data,
                index=index,
                seed=artifact.seed,
                finish_reason=generation.FILTER if filtered else generation.STOP,
                size=len(artifact.data),
            )
        ],
    )


__all__ = [
    "GRPC_FIELDS",
    "GrpcInput",
    "answer",
    "is_upscale",
    "read_request",
    "upscale_size",
]
