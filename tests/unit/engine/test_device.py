"""Device resolution with ``--gpu N``: pinned to ``cuda:N`` where CUDA exists, a label on
a CPU box, and a GPU that does not exist is refused naming the setting."""

from __future__ import annotations

import pytest
import torch

from sdserve.engine.device import resolve, visible_index
from sdserve.errors import InvalidInput
from sdserve.models.settings import EngineSettings

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU-only box")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@no_cuda
def test_on_a_cpu_box_the_gpu_is_only_a_label() -> None:
    device, dtype = resolve(EngineSettings(gpu=1))
    assert (device, dtype) == ("cpu", torch.float32)


@no_cuda
def test_asking_for_cuda_on_gpu_that_does_not_exist_names_the_setting() -> None:
    with pytest.raises(InvalidInput, match=r"^gpu: there is no CUDA device 3: this machine has"):
        resolve(EngineSettings(device="cuda", gpu=3))


@pytest.mark.gpu
@needs_cuda
def test_the_engine_is_pinned_to_the_gpu_given() -> None:
    last = torch.cuda.device_count() - 1
    assert resolve(EngineSettings(gpu=last))[0] == f"cuda:{last}"
    assert resolve(EngineSettings(device="cuda"))[0] == "cuda"  # no --gpu: torch's current
    with pytest.raises(InvalidInput, match="gpu"):
        resolve(EngineSettings(gpu=last + 1))


@pytest.mark.parametrize(
    ("gpu", "visible", "index"),
    [
        (1, None, 1),  # every GPU visible: torch numbers them as the machine does
        (1, "", 1),
        (1, "1", 0),  # a unit limited to GPU 1 (CUDA_VISIBLE_DEVICES=%i) sees it as cuda:0
        (3, "2,3", 1),
        (0, "GPU-5f1c0a7e", 0),  # named by UUID: no index to map
    ],
)
def test_gpu_is_the_machines_index_even_when_cuda_visible_devices_limits_the_process(
    gpu: int, visible: str | None, index: int
) -> None:
    assert visible_index(gpu, visible) == index
