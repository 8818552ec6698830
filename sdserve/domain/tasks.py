"""Which task a canonical input asks for: the one rule the domain, the service and the engine share.

The engine's task registry (``sdserve.engine.tasks.registry``) says how each task runs;
this module says which one an input selects, without the engine, so that the domain (the
``task`` of an input, the metadata it writes) and the service can decide it too. Every
name here has an entry in the engine's registry (a test checks it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sdserve.errors import InvalidInput

if TYPE_CHECKING:
    from sdserve.domain.inputs import GenerationInput

TXT2IMG = "txt2img"
IMG2IMG = "img2img"
INPAINT = "inpaint"
OUTPAINT = "outpaint"
#: Every task an input can select.
TASK_NAMES: tuple[str, ...] = (TXT2IMG, IMG2IMG, INPAINT, OUTPAINT)


def select_task(
    inp: GenerationInput, *, image: bool | None = None, mask: bool | None = None
) -> str:
    """The task ``inp`` asks for: one of :data:`TASK_NAMES`.

    ``image`` and ``mask`` say whether an image and a mask are given; by default, whether
    the input references them (the engine passes what it was actually handed). Every input
    gets an answer; :func:`check_task_inputs` refuses the combinations no task takes.
    """
    has_image = inp.image is not None if image is None else image
    has_mask = inp.mask is not None if mask is None else mask
    if not has_image:
        return TXT2IMG
    if inp.outpaints:
        return OUTPAINT
    return INPAINT if has_mask else IMG2IMG


def check_task_inputs(
    inp: GenerationInput, *, image: bool | None = None, mask: bool | None = None
) -> None:
    """Raise :class:`InvalidInput` for a combination no task takes: a mask without an image,
    outpainting without an image or with a mask (it builds its own). ``image`` and ``mask``
    as for :func:`select_task`."""
    has_image = inp.image is not None if image is None else image
    has_mask = inp.mask is not None if mask is None else mask
    if not has_image:
        if has_mask:
            raise InvalidInput("mask", "a mask needs an image to inpaint")
        if inp.outpaints:
            raise InvalidInput("image", "outpainting needs an image to extend")
    elif inp.outpaints and has_mask:
        raise InvalidInput("mask", "outpainting builds its own mask; give no mask")
