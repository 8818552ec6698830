"""Stability's gRPC Request → canonical input (sdserve.api.stability.grpc_schemas).

The requests are the ones the real ``stability_sdk`` client builds: its stub is swapped
for one that keeps the request, so what is read here is what the client sends.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("stability_sdk", reason="the 'stability' extra is not installed")

import stability_sdk.interfaces.gooseai.generation.generation_pb2 as generation
from PIL import Image
from stability_sdk import client

from sdserve.api.stability.engines import STYLE_PRESETS, UPSCALE_STRENGTH
from sdserve.api.stability.grpc_schemas import is_upscale, read_request
from sdserve.domain.inputs import InputLimits
from sdserve.errors import InvalidImage, InvalidInput

LIMITS = InputLimits(max_pixels=1024 * 1024)


class KeepRequest:
    """Stands in for the client's gRPC stub: keeps the request, answers nothing."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def Generate(self, request: Any, **options: Any) -> Iterator[Any]:
        self.requests.append(request)
        return iter(())


def sent(call: Callable[[client.StabilityInference], Iterator[Any]], **options: Any) -> Any:
    """The Request the real client sends for ``call`` (made on a client built with
    ``options``); no connection is made."""
    api = client.StabilityInference(host="127.0.0.1:1", wait_for_ready=False, **options)
    api.stub = KeepRequest()
    list(call(api))
    return api.stub.requests[0]


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


RED = Image.new("RGB", (64, 48), (200, 40, 40))


def test_the_documented_example_reads_as_a_text_to_image_job() -> None:
    request = sent(
        lambda api: api.generate(
            prompt="A futuristic city skyline at sunset",
            seed=42,
            steps=30,
            cfg_scale=8.0,
            width=1024,
            height=1024,
            samples=1,
        )
    )
    assert request.engine_id == "stable-diffusion-xl-1024-v1-0"
    read = read_request(request, LIMITS)
    assert read.values == {
        "prompt": "A futuristic city skyline at sunset",
        "seed": 42,
        "num_outputs": 1,
        "num_inference_steps": 30,
        "guidance_scale": 8.0,
        "width": 1024,
        "height": 1024,
    }
    assert read.image is None and read.mask is None and not read.upscale


def test_left_out_steps_and_sampler_are_the_models_defaults() -> None:
    read = read_request(sent(lambda api: api.generate(prompt="a fox", seed=7)), LIMITS)
    assert "num_inference_steps" not in read.values
    assert "scheduler" not in read.values


def test_weights_negative_prompts_and_the_style_preset() -> None:
    prompts = [
        generation.Prompt(text="a red fox"),  # no weight set: reads as 1
        generation.Prompt(text="snow", parameters=generation.PromptParameters(weight=1.5)),
        generation.Prompt(text="blurry", parameters=generation.PromptParameters(weight=-1)),
    ]
    request = sent(lambda api: api.generate(prompt=prompts, style_preset="anime", seed=3))
    read = read_request(request, LIMITS)
    anime = STYLE_PRESETS["anime"]
    assert read.values["prompt"] == f"a red fox, (snow:1.5), {anime.style}"
    assert read.values["negative_prompt"] == f"blurry, {anime.avoid}"


def test_an_unknown_style_preset_is_refused_naming_where_the_client_put_it() -> None:
    request = sent(lambda api: api.generate(prompt="a fox", style_preset="watercolour"))
    with pytest.raises(InvalidInput) as caught:
        read_request(request, LIMITS)
    assert caught.value.field == "extras.$IPC.preset"
    assert "anime" in (caught.value.allowed or [])


def test_extras_other_than_the_preset_are_refused() -> None:
    request = sent(lambda api: api.generate(prompt="a fox", style_preset="anime"))
    request.extras.update({"$IPC": {"preset": "anime", "cfg_rescale": 0.7}})
    with pytest.raises(InvalidInput) as caught:
        read_request(request, LIMITS)
    assert caught.value.field == "extras.$IPC.cfg_rescale"
    request.extras.Clear()
    request.extras.update({"tiling": True})
    with pytest.raises(InvalidInput, match=r"only \$IPC\.preset") as caught:
        read_request(request, LIMITS)
    assert caught.value.field == "extras.tiling"


@pytest.mark.parametrize(
    ("sampler", "scheduler"),
    [
        (generation.SAMPLER_K_DPMPP_2M, "DPM++ 2M"),
        (generation.SAMPLER_K_EULER_ANCESTRAL, "Euler a"),
        (generation.SAMPLER_K_LMS, "LMS"),
    ],
)
def test_the_sampler_enum_is_the_engines_scheduler(sampler: int, scheduler: str) -> None:
    request = sent(lambda api: api.generate(prompt="a fox", sampler=sampler))
    assert read_request(request, LIMITS).values["scheduler"] == scheduler


def test_a_sampler_number_the_protocol_does_not_know_is_refused() -> None:
    request = generation.Request(
        engine_id="e",
        prompt=[generation.Prompt(text="a fox")],
        image=generation.ImageParameters(transform=generation.TransformType(diffusion=99)),
    )
    with pytest.raises(InvalidInput) as caught:
        read_request(request, LIMITS)
    assert caught.value.field == "image.transform.diffusion"


def test_several_seeds_are_consecutive_ones_one_per_sample() -> None:
    request = sent(lambda api: api.generate(prompt="a", seed=[9, 10], samples=2))
    read = read_request(request, LIMITS)
    assert (read.values["seed"], read.values["num_outputs"]) == (9, 2)
    # without samples, the seeds say how many
    request.image.ClearField("samples")
    assert read_request(request, LIMITS).values["num_outputs"] == 2
    for seeds, samples, problem in (([9, 12], 2, "seed \\+ i"), ([9, 10, 11], 1, "3 seeds for 1")):
        request = sent(lambda api, s=seeds, n=samples: api.generate(prompt="a", seed=s, samples=n))
        with pytest.raises(InvalidInput, match=problem) as caught:
            read_request(request, LIMITS)
        assert caught.value.field == "image.seed"


def test_seed_zero_is_a_random_seed() -> None:
    request = generation.Request(
        prompt=[generation.Prompt(text="a")], image=generation.ImageParameters(seed=[0])
    )
    assert "seed" not in read_request(request, LIMITS).values


def test_an_init_image_with_a_schedule_is_img2img_at_that_strength() -> None:
    request = sent(
        lambda api: api.generate(
            prompt="a fox", init_image=RED, start_schedule=0.6, width=64, height=48, seed=1
        )
    )
    read = read_request(request, LIMITS)
    assert read.values["prompt_strength"] == pytest.approx(0.6)
    assert (read.values["width"], read.values["height"]) == (64, 48)
    assert read.image is not None and read.mask is None and not read.upscale
    with Image.open(io.BytesIO(read.image)) as image:
        assert image.convert("RGB").getpixel((0, 0)) == (200, 40, 40)


def test_the_mask_is_inverted_stability_keeps_white_sdserve_repaints_white() -> None:
    keep_left = Image.new("L", (64, 48), 0)
    keep_left.paste(255, (0, 0, 32, 48))  # Stability: white = keep, black = change
    request = sent(lambda api: api.generate(prompt="a lake", init_image=RED, mask_image=keep_left))
    read = read_request(request, LIMITS)
    assert read.mask is not None
    with Image.open(io.BytesIO(read.mask)) as mask:
        assert mask.getpixel((5, 5)) == 0  # kept
        assert mask.getpixel((60, 5)) == 255  # repainted


def test_an_undecodable_mask_is_refused_naming_it() -> None:
    request = generation.Request(
        prompt=[
            generation.Prompt(text="a"),
            generation.Prompt(
                artifact=generation.Artifact(type=generation.ARTIFACT_IMAGE, binary=png(RED))
            ),
            generation.Prompt(
                artifact=generation.Artifact(type=generation.ARTIFACT_MASK, binary=b"no")
            ),
        ],
        image=generation.ImageParameters(
            parameters=[generation.StepParameter(schedule=generation.ScheduleParameters(start=1))]
        ),
    )
    with pytest.raises(InvalidImage) as caught:
        read_request(request, LIMITS)
    assert caught.value.field == "prompt[ARTIFACT_MASK]"


def test_upscale_is_a_light_redraw_at_the_asked_size() -> None:
    request = sent(lambda api: api.upscale(init_image=RED, width=128), upscale_engine="sd")
    assert request.engine_id == "sd"
    assert is_upscale(request)
    read = read_request(request, LIMITS)
    assert read.upscale
    # the height keeps the 4:3 aspect ratio; without a prompt, the prompt is empty
    assert (read.values["width"], read.values["height"]) == (128, 96)
    assert read.values["prompt_strength"] == UPSCALE_STRENGTH
    assert "prompt" not in read.values
    assert "seed" not in read.values  # the client sends seed 0: random


def test_upscale_without_a_size_doubles_and_with_a_prompt_reads_it() -> None:
    read = read_request(sent(lambda api: api.upscale(init_image=RED, prompt="sharp")), LIMITS)
    assert (read.values["width"], read.values["height"]) == (128, 96)
    assert read.values["prompt"] == "sharp"
    read = read_request(sent(lambda api: api.upscale(init_image=RED, height=72)), LIMITS)
    assert (read.values["width"], read.values["height"]) == (96, 72)


def test_upscale_past_the_pixel_limit_or_with_too_few_steps_is_refused() -> None:
    request = sent(lambda api: api.upscale(init_image=RED, width=2048))
    with pytest.raises(InvalidInput, match="to 2048x1536 exceeds the limit") as caught:
        read_request(request, LIMITS)
    assert caught.value.field == "image.width"
    request = sent(lambda api: api.upscale(init_image=RED, steps=2))
    with pytest.raises(InvalidInput, match="at least 4") as caught:
        read_request(request, LIMITS)
    assert caught.value.field == "image.steps"


def test_generate_with_an_init_image_is_never_an_upscale() -> None:
    request = sent(lambda api: api.generate(prompt="a", init_image=RED))
    assert not is_upscale(request)


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (
            lambda api: api.generate(prompt="a", adapter_type=generation.T2IADAPTER_SKETCH),
            "image.adapter.adapter_type",
        ),
        (lambda api: api.generate(prompt=[]), "prompt"),
        (
            lambda api: api.generate(
                prompt=generation.Prompt(
                    text="a", parameters=generation.PromptParameters(weight=-1)
                )
            ),
            "prompt",
        ),
    ],
)
def test_what_sdserve_cannot_do_is_refused_naming_the_field(
    call: Callable[[client.StabilityInference], Iterator[Any]], field: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        read_request(sent(call), LIMITS)
    assert caught.value.field == field


def test_clip_guidance_and_an_early_schedule_end_are_taken_and_named_not_applied() -> None:
    guided = sent(
        lambda api: api.generate(prompt="a", guidance_preset=generation.GUIDANCE_PRESET_FAST_BLUE)
    )
    read = read_request(guided, LIMITS)
    assert read.ignored == ("image.parameters[0].guidance",)
    assert read.values["prompt"] == "a"
    # the client sends end_schedule=0.01 with every init image; 0 is the schedule's end
    for end, ignored in ((0.01, ("image.parameters[0].schedule.end",)), (0.0, ())):
        request = sent(lambda api, e=end: api.generate(prompt="a", init_image=RED, end_schedule=e))
        assert read_request(request, LIMITS).ignored == ignored
    assert read_request(sent(lambda api: api.generate(prompt="a")), LIMITS).ignored == ()


def test_other_request_kinds_and_artifacts_are_refused() -> None:
    asset = generation.Request(
        prompt=[generation.Prompt(text="a")], asset=generation.AssetParameters()
    )
    with pytest.raises(InvalidInput) as caught:
        read_request(asset, LIMITS)
    assert caught.value.field == "asset"
    depth = generation.Request(
        prompt=[
            generation.Prompt(text="a"),
            generation.Prompt(
                artifact=generation.Artifact(type=generation.ARTIFACT_DEPTH, binary=b"x")
            ),
        ],
        image=generation.ImageParameters(),
    )
    with pytest.raises(InvalidInput) as caught:
        read_request(depth, LIMITS)
    assert caught.value.field == "prompt[ARTIFACT_DEPTH]"


def test_a_mask_or_upscale_source_over_the_pixel_limit_is_refused_on_its_header() -> None:
    from tests.unit.api.test_image_limits import BOMB, HUGE

    def request(artifacts: list[Any], *, upscale: bool) -> Any:
        steps = (
            []
            if upscale
            else [generation.StepParameter(schedule=generation.ScheduleParameters(start=1))]
        )
        return generation.Request(
            prompt=[generation.Prompt(text="a"), *artifacts],
            image=generation.ImageParameters(parameters=steps),
        )

    image = generation.Prompt(
        artifact=generation.Artifact(type=generation.ARTIFACT_IMAGE, binary=png(RED))
    )
    for data in (BOMB, HUGE):
        mask = generation.Prompt(
            artifact=generation.Artifact(type=generation.ARTIFACT_MASK, binary=data)
        )
        with pytest.raises(InvalidImage) as caught:
            read_request(request([image, mask], upscale=False), LIMITS)
        assert caught.value.field == "prompt[ARTIFACT_MASK]"
        assert f"limit of {LIMITS.max_input_pixels} pixels" in caught.value.message
        source = generation.Prompt(
            artifact=generation.Artifact(type=generation.ARTIFACT_IMAGE, binary=data)
        )
        with pytest.raises(InvalidImage) as caught:
            read_request(request([source], upscale=True), LIMITS)
        assert f"limit of {LIMITS.max_input_pixels} pixels" in caught.value.message
