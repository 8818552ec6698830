"""A small in-memory engine and registry: fakes of *our* engine at its I/O edge.

They follow ``Predictor`` / ``RegistryLike``: real PNG bytes, per-step hooks, cancel
checks and the error classes the real engine raises; prompts steer them
(``"fail:<code>"`` raises that failure, ``"boom"`` an unexpected exception, ``"nsfw"``
flags every image as the safety checker would, ``"nsfw first"`` the first one).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from sdserve.domain.inputs import FamilyDefaults, GenerationInput
from sdserve.errors import (
    Canceled,
    InputFetchFailed,
    InsufficientGpuMemory,
    InvalidInput,
    ModelLoadError,
    ModelNotFound,
    StorageFull,
)
from sdserve.models.results import GeneratedImage, GenerationResult, RunHooks, UnitImages

FAILURES = {
    "insufficient_gpu_memory": InsufficientGpuMemory("CUDA out of memory (tried 2 GiB)"),
    "storage_full": StorageFull("disk full"),
    "input_fetch_failed": InputFetchFailed("image: host unreachable"),
    # what the engine raises for a hub model that is not cached while offline
    "model_load_error": ModelLoadError(
        "model 'acme/sdxl' is not in the Hugging Face cache (/cache) and the hub is offline; "
        "download it on a machine with network: hf download acme/sdxl"
    ),
}


@dataclass(frozen=True)
class FakeSpec:
    name: str
    reference: str
    family: str
    version: str
    defaults: FamilyDefaults
    inpainting: bool = False  # trainable, as a training's base model must be
    lora: str | None = None


class FakeRegistry:
    """One model, ``test/fake``, with SD1-like defaults at 64x64."""

    def __init__(self) -> None:
        self.spec = FakeSpec(
            name="test/fake",
            reference="fake",
            family="sd1",
            version="0123456789abcdef",
            defaults=FamilyDefaults(width=64, height=64, num_inference_steps=4, guidance_scale=7.5),
        )

    def resolve(self, name: str) -> FakeSpec:
        if name != self.spec.name:
            raise ModelNotFound(f"no served model is called {name!r}")
        return self.spec

    def specs(self) -> list[FakeSpec]:
        return [self.spec]

    def prepare(self, spec: FakeSpec) -> None:
        """Its one model's files are where they are: nothing to fetch."""


@dataclass
class FakePredictor:
    """Draws a solid colour from the seed; sleeps ``step_delay`` per step."""

    step_delay: float = 0.0
    calls: list[GenerationInput] = field(default_factory=list)
    steps_run: list[int] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)
    images_seen: list[tuple[Image.Image | None, Image.Image | None]] = field(default_factory=list)

    def generate(
        self,
        inp: GenerationInput,
        *,
        model: str,
        image: Image.Image | None,
        mask: Image.Image | None,
        hooks: RunHooks,
        controls: Sequence[UnitImages] = (),
        ip_adapter_image: Image.Image | None = None,
    ) -> GenerationResult:
        self.calls.append(inp)
        self.images_seen.append((image, mask))
        self.started.set()
        if inp.prompt.startswith("fail:"):
            raise FAILURES[inp.prompt.removeprefix("fail:")]
        if inp.prompt == "bad lora":
            raise InvalidInput("lora", "no LoRA called 'x'")
        if inp.prompt == "boom":
            raise RuntimeError("unexpected kaboom")
        assert inp.seed is not None and inp.num_inference_steps is not None
        total = inp.num_inference_steps
        done = 0
        for step in range(1, total + 1):
            if hooks.should_cancel():
                self.steps_run.append(done)
                raise Canceled("canceled")
            time.sleep(self.step_delay)
            done = step
            preview = Image.new("RGB", (8, 8), (step * 10 % 256, 0, 0))
            hooks.on_step(step, total, preview)
        self.steps_run.append(done)
        width, height = image.size if image is not None else (inp.width or 64, inp.height or 64)
        images = []
        for index in range(inp.num_outputs):
            seed = inp.seed_for(index)
            color = (seed % 256, (seed // 256) % 256, (seed // 65536) % 256)
            buffer = io.BytesIO()
            Image.new("RGB", (width, height), color).save(buffer, format="PNG")
            images.append(
                GeneratedImage(
                    data=buffer.getvalue(),
                    format="png",
                    seed=seed,
                    nsfw=inp.prompt == "nsfw" or (inp.prompt == "nsfw first" and index == 0),
                    width=width,
                    height=height,
                    parameters=f"{inp.prompt}\nSeed: {seed}",
                )
            )
        return GenerationResult(images=images, seed=inp.seed, model=model)
