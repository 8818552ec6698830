"""The task registry: one table of tasks, selected by the domain's rule, planned with passes."""

from __future__ import annotations

from typing import Any

import pytest
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLInpaintPipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image

from sdserve.domain.batching import batch_signature
from sdserve.domain.inputs import FamilyDefaults, GenerationInput
from sdserve.domain.tasks import TASK_NAMES, select_task
from sdserve.engine.tasks import pipelines, registry
from sdserve.errors import InvalidImage, InvalidInput
from sdserve.models.catalog import ModelSpec

DEFAULTS = FamilyDefaults(width=64, height=64, num_inference_steps=4, guidance_scale=7.5)
SDXL = ModelSpec("local/xl", "xl", "sdxl", False, "refiner", "v")
SD = ModelSpec("local/sd", "sd", "sd1", False, None, "v")
IMAGE = Image.new("RGB", (64, 64))


def resolved(**fields: Any) -> GenerationInput:
    return GenerationInput(**fields).with_defaults(DEFAULTS)


def bare(cls: type) -> Any:
    """An instance of a pipeline class without weights: only its type matters here."""
    return cls.__new__(cls)


def test_the_registry_has_exactly_the_tasks_the_domain_selects() -> None:
    assert set(registry.TASKS) == set(TASK_NAMES)


def test_what_batches_agrees_with_which_requests_may_share_a_batch() -> None:
    requests = [
        resolved(),
        resolved(image="i"),
        resolved(image="i", mask="m"),
        resolved(image="i", outpaint_left=64),
        resolved(hires_scale=2),
    ]
    for inp in requests:
        if batch_signature(inp) is not None:
            assert registry.TASKS[select_task(inp)].batches
    assert [name for name, task in registry.TASKS.items() if task.batches] == ["txt2img"]


def test_select_uses_the_images_given_and_refuses_a_missing_reference() -> None:
    assert registry.select(resolved(), image=None, mask=None).name == "txt2img"
    assert registry.select(resolved(), image=IMAGE, mask=IMAGE).name == "inpaint"
    with pytest.raises(InvalidImage) as caught:
        registry.select(resolved(image="i"), image=None, mask=None)
    assert caught.value.field == "image"


def test_plan_adds_the_passes_the_request_asks_for() -> None:
    txt2img = registry.TASKS["txt2img"]
    hires = registry.plan(resolved(hires_scale=2), txt2img, SDXL)
    assert [step.name for step in hires.passes] == ["hires"]
    assert hires.planned_steps(resolved(hires_scale=2, hires_steps=4, hires_strength=0.5)) == 6
    both = registry.plan(resolved(hires_scale=2, refine="base_image_refiner"), txt2img, SDXL)
    assert [step.name for step in both.passes] == ["hires", "refine"]
    assert both.needs_refiner and not both.ensemble
    # the hires fix follows text-to-image only
    img2img = registry.plan(resolved(hires_scale=2), registry.TASKS["img2img"], SDXL)
    assert img2img.passes == () and img2img.planned_steps(resolved()) is None


def test_the_expert_ensemble_replaces_the_run_of_a_task_that_has_one() -> None:
    plan = registry.plan(
        resolved(refine="expert_ensemble_refiner"), registry.TASKS["txt2img"], SDXL
    )
    assert plan.ensemble and plan.needs_refiner and plan.passes == ()
    assert plan.run is registry.TASKS["txt2img"].ensemble
    with pytest.raises(InvalidInput) as caught:
        registry.plan(resolved(refine="expert_ensemble_refiner"), registry.TASKS["inpaint"], SDXL)
    assert caught.value.field == "refine"


def test_a_refiner_mode_needs_a_model_with_a_refiner() -> None:
    with pytest.raises(InvalidInput) as caught:
        registry.plan(resolved(refine="base_image_refiner"), registry.TASKS["txt2img"], SD)
    assert caught.value.field == "refine"


@pytest.mark.parametrize(
    ("cls", "kind"),
    [
        (StableDiffusionPipeline, pipelines.TEXT2IMAGE),
        (StableDiffusionXLPipeline, pipelines.TEXT2IMAGE),
        (StableDiffusionImg2ImgPipeline, pipelines.IMAGE2IMAGE),
        (StableDiffusionXLImg2ImgPipeline, pipelines.IMAGE2IMAGE),
        (StableDiffusionInpaintPipeline, pipelines.INPAINT),
        (StableDiffusionXLInpaintPipeline, pipelines.INPAINT),
    ],
)
def test_the_kind_of_a_pipeline_comes_from_diffusers_tables(
    cls: type, kind: pipelines.PipelineKind
) -> None:
    assert pipelines.kind_of(bare(cls)) is kind


@pytest.mark.parametrize(
    ("base", "kind", "field", "needs"),
    [
        (StableDiffusionInpaintPipeline, pipelines.TEXT2IMAGE, "image", "an image and a mask"),
        (StableDiffusionInpaintPipeline, pipelines.IMAGE2IMAGE, "mask", "give a mask"),
        (StableDiffusionXLImg2ImgPipeline, pipelines.TEXT2IMAGE, "image", "give an image"),
    ],
)
def test_a_base_serves_no_kind_that_needs_fewer_inputs(
    base: type, kind: pipelines.PipelineKind, field: str, needs: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        pipelines.derive(bare(base), kind, model="m")
    assert caught.value.field == field and needs in str(caught.value)


def test_a_base_of_the_kind_asked_is_served_as_it_is() -> None:
    base = bare(StableDiffusionInpaintPipeline)
    assert pipelines.derive(base, pipelines.INPAINT, model="m") is base
