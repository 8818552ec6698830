"""A worker's backoff: which failures count, when it backs off, how long it pauses."""

from __future__ import annotations

from sdserve.errors import (
    InputFetchFailed,
    InsufficientGpuMemory,
    InvalidInput,
    ModelLoadError,
    NsfwContent,
    StorageFull,
    StorageUnavailable,
    is_worker_fault,
)
from sdserve.jobs.backoff import MAX_PAUSE_FACTOR, WorkerHealth


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_workers_faults_count_and_the_jobs_own_do_not() -> None:
    assert is_worker_fault(ModelLoadError("weights missing"))
    assert is_worker_fault(StorageFull("disk full"))
    assert is_worker_fault(StorageUnavailable("bucket unreachable"))
    assert is_worker_fault(RuntimeError("Torch not compiled with CUDA enabled"))
    assert not is_worker_fault(InvalidInput("width", "must be a multiple of 8"))
    assert not is_worker_fault(InputFetchFailed("404 from the input URL"))
    assert not is_worker_fault(InsufficientGpuMemory("2048x2048 x 8 images"))
    assert not is_worker_fault(NsfwContent("every image flagged"))
    assert not is_worker_fault(KeyboardInterrupt())


def test_it_backs_off_from_the_nth_failure_in_a_row_with_doubling_pauses() -> None:
    clock = Clock()
    health = WorkerHealth(failures=2, pause_s=10.0, clock=clock)
    health.failed("model_load_error")
    assert not health.backing_off and health.pause_left() == 0.0  # one may be bad luck
    health.failed("model_load_error")
    assert health.backing_off and health.pause_left() == 10.0
    clock.now += 4
    assert health.pause_left() == 6.0
    clock.now += 6
    assert health.pause_left() == 0.0  # it may try one job again...
    health.failed("model_load_error")  # ...which fails: a longer pause
    assert health.pause_left() == 20.0
    for _ in range(10):
        health.failed("internal_error")
    assert health.pause_left() == 10.0 * MAX_PAUSE_FACTOR  # bounded


def test_a_success_ends_the_backoff() -> None:
    clock = Clock()
    health = WorkerHealth(failures=1, pause_s=10.0, clock=clock)
    health.failed("internal_error")
    health.failed("internal_error")
    assert health.pause_left() == 20.0
    clock.now += 20
    health.succeeded()
    assert not health.backing_off and health.consecutive == 0
    health.failed("internal_error")
    assert health.pause_left() == 10.0  # from the first pause again
