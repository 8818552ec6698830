"""The task registry: which tasks exist, the pipeline each runs on, how a request selects them.

One table, :data:`TASKS`, holds the tasks a request selects; :data:`PASSES` holds the
passes that may follow a task on the images it made. The engine dispatches through them
and nowhere else decides a task:

- :func:`select` picks the task of a request from the images it was given, by the one
  rule :func:`sdserve.domain.tasks.select_task` (the domain and the service use it too);
- :func:`plan` adds what the request asks on top: the task's expert ensemble with the
  SDXL refiner instead of its run, and the passes that follow it (hires fix, refiner);
- each entry names its :class:`~sdserve.engine.tasks.pipelines.PipelineKind`, which the
  pipeline cache derives from the model's loaded base with ``from_pipe``;
- ``batches`` says whether its run may take several requests as one forward
  (``Engine.generate_batch``; the requests that may share one are ``domain.batching``'s).

Adding a task (ControlNet, say) adds exactly, in the engine:

1. ``engine/tasks/<name>.py``: a straight-line ``run(pipe, call) -> list[Image]``, and a
   ``check(inp, size, limits)`` if it must refuse something before any model loads;
2. its :class:`Task` entry in :data:`TASKS` below: name, pipeline kind, run (``batches``,
   ``ensemble``, ``check`` where they apply). If its pipeline needs an extra model handed to
   ``from_pipe`` (ControlNet's ``controlnet=``), that :class:`PipelineKind` goes in
   ``pipelines.py`` beside the others.

and, because a new task comes with new inputs and the API decides tasks without torch, in
the domain: its input fields (``domain/inputs.py``) and the line of
:func:`~sdserve.domain.tasks.select_task` that selects it. A unit test
(``test_registry.py``) checks that the domain and this table name the same tasks.

A pass (a stage after a task) adds its file and a :class:`Pass` entry in :data:`PASSES`;
its ``wanted`` reads the input field that asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from PIL.Image import Image

from sdserve.domain.inputs import GenerationInput, InputLimits
from sdserve.domain.tasks import check_task_inputs, select_task
from sdserve.engine.tasks import (
    Pipeline,
    TaskCall,
    hires,
    img2img,
    inpaint,
    outpaint,
    refine,
    txt2img,
)
from sdserve.engine.tasks.pipelines import IMAGE2IMAGE, INPAINT, TEXT2IMAGE, PipelineKind
from sdserve.errors import InvalidImage, InvalidInput
from sdserve.models.catalog import ModelSpec

#: A task's run: its pipeline (a view with its own scheduler) and the call → images.
Run = Callable[[Pipeline, TaskCall], list[Image]]
#: A pass's run: its pipeline, the images so far and the call → images.
PassRun = Callable[[Pipeline, list[Image], TaskCall], list[Image]]
#: A check before any model loads: the input, the output size, the operator's limits.
Check = Callable[[GenerationInput, tuple[int, int], InputLimits], None]


@dataclass(frozen=True)
class Task:
    """A task a request selects.

    ``pipeline``: the kind of pipeline it runs on, derived from the model's base.
    ``batches``: its run takes a batched call (one prompt pair per image of several requests).
    ``ensemble``: its run when the request asks for ``expert_ensemble_refiner`` (the SDXL
    refiner finishes the schedule); None = that mode is refused for this task.
    ``check``: refuses what it cannot do before any model loads.
    """

    name: str
    pipeline: PipelineKind
    run: Run
    batches: bool = False
    ensemble: Run | None = None
    check: Check | None = None


@dataclass(frozen=True)
class Pass:
    """A stage that follows a task on the images it made, when the request asks for it.

    ``after``: the tasks it may follow (None = every task). ``on_refiner``: it runs on the
    model's refiner (loaded on its own, of kind ``pipeline``) rather than on a pipeline
    derived from the base. ``planned_steps``: the steps of the whole run, known before it
    starts, so progress counts to one total. ``controlled``: the ControlNet units that ask
    for it (``hires_fix``) steer it too, on its pipeline's ControlNet variant; the other
    passes run without units.
    """

    name: str
    pipeline: PipelineKind
    run: PassRun
    wanted: Callable[[GenerationInput], bool]
    after: frozenset[str] | None = None
    on_refiner: bool = False
    planned_steps: Callable[[GenerationInput], int] | None = None
    controlled: bool = False


TASKS: Mapping[str, Task] = {
    task.name: task
    for task in (
        Task("txt2img", TEXT2IMAGE, txt2img.run, batches=True, ensemble=refine.run_expert_ensemble),
        Task("img2img", IMAGE2IMAGE, img2img.run),
        Task("inpaint", INPAINT, inpaint.run),
        Task("outpaint", INPAINT, outpaint.run, check=outpaint.check),
    )
}

#: In the order they run.
PASSES: tuple[Pass, ...] = (
    Pass(
        "hires",
        IMAGE2IMAGE,
        hires.run,
        wanted=hires.wanted,
        after=frozenset({"txt2img"}),
        planned_steps=hires.planned_steps,
        controlled=True,
    ),
    Pass(
        "refine",
        IMAGE2IMAGE,
        refine.run_base_image,
        wanted=refine.wants_base_image,
        on_refiner=True,
    ),
)


@dataclass(frozen=True)
class Plan:
    """What one request runs: ``run`` (its task's, or the task's expert ensemble when
    ``ensemble``), then its passes in order."""

    task: Task
    run: Run
    ensemble: bool
    passes: tuple[Pass, ...]

    @property
    def needs_refiner(self) -> bool:
        """The model's refiner takes part (expert ensemble, or a pass on the refiner)."""
        return self.ensemble or any(step.on_refiner for step in self.passes)

    def planned_steps(self, inp: GenerationInput) -> int | None:
        """The run's total steps when a pass knows them ahead, else None (counted as it goes)."""
        for step in self.passes:
            if step.planned_steps is not None:
                return step.planned_steps(inp)
        return None


def select(inp: GenerationInput, *, image: Image | None, mask: Image | None) -> Task:
    """The task of ``inp`` given the images actually handed to the engine.

    The input's references say what to expect: a referenced image or mask that was not
    given is an error, and so is a combination no task takes. The choice itself is
    :func:`~sdserve.domain.tasks.select_task`.
    """
    if inp.image is not None and image is None:
        raise InvalidImage("image", "was referenced but no image was given to the engine")
    if inp.mask is not None and mask is None:
        raise InvalidImage("mask", "was referenced but no mask was given to the engine")
    given = {"image": image is not None, "mask": mask is not None}
    check_task_inputs(inp, **given)
    return TASKS[select_task(inp, **given)]


def plan(inp: GenerationInput, task: Task, spec: ModelSpec) -> Plan:
    """What a request of ``task`` on model ``spec`` runs; refuses a refiner mode it cannot."""
    if inp.refine != "no_refiner" and not spec.refiner:
        raise InvalidInput(
            "refine", f"model {spec.name} has no refiner configured", allowed=["no_refiner"]
        )
    inp.check_refiner_runs_a_step()
    run = task.run
    ensemble = inp.refine == "expert_ensemble_refiner"
    if ensemble:
        if task.ensemble is None:
            raise InvalidInput(
                "refine",
                "expert_ensemble_refiner works with text-to-image only",
                allowed=["no_refiner", "base_image_refiner"],
            )
        run = task.ensemble
    passes = tuple(
        step
        for step in PASSES
        if (step.after is None or task.name in step.after) and step.wanted(inp)
    )
    return Plan(task, run, ensemble, passes)


__all__ = ["PASSES", "TASKS", "Pass", "Plan", "Task", "plan", "select"]
