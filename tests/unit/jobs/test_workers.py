"""The worker registry's in-memory board and heartbeat: entries expire, a stop withdraws."""

from __future__ import annotations

from datetime import UTC, datetime

from sdserve.jobs.workers import CachedBoard, Heartbeat, MemoryWorkerBoard, WorkerInfo

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def info(worker_id: str = "w1", **changes: object) -> WorkerInfo:
    fields: dict[str, object] = {
        "id": worker_id,
        "host": "gpu-box",
        "pid": 42,
        "gpu": 0,
        "device": "cuda:0",
        "models": ("sdserve/tiny-sd",),
        "trainings": False,
        "started_at": NOW,
        "last_seen": NOW,
        **changes,
    }
    return WorkerInfo(**fields)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_entry_lives_until_its_ttl_ends() -> None:
    clock = Clock()
    board = MemoryWorkerBoard(clock)
    board.announce(info(), ttl_s=15)
    clock.now += 14
    assert [worker.id for worker in board.live()] == ["w1"]
    clock.now += 2
    assert board.live() == []


def test_the_json_form_round_trips() -> None:
    worker = info(loaded=("sdserve/tiny-sd",), running=("job1",), trainings=True)
    assert WorkerInfo.from_json(worker.to_json()) == worker


def test_serves_compares_names_and_the_trainings_flag() -> None:
    worker = info()
    assert worker.serves("SDSERVE/tiny-sd")
    assert not worker.serves("sdserve/tiny-sdxl")
    assert not worker.serves("sdserve/tiny-sd", training=True)
    assert info(trainings=True).serves("sdserve/tiny-sd", training=True)


def test_a_heartbeat_announces_what_the_worker_holds_and_withdraws_on_stop() -> None:
    board = MemoryWorkerBoard()
    later = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    beat = Heartbeat(
        board,
        info(),
        lambda base: WorkerInfo(**{**base.__dict__, "loaded": ("sdserve/tiny-sd",)}),
        beat_s=60,
        clock=lambda: later,
    )
    beat.start()
    try:
        (seen,) = board.live()
        assert seen.loaded == ("sdserve/tiny-sd",)
        assert seen.last_seen == later
    finally:
        beat.stop()
    assert board.live() == []


def test_a_cached_board_reads_once_per_period() -> None:
    board = MemoryWorkerBoard()
    cached = CachedBoard(board, max_age_s=3600)
    assert cached.live() == []
    board.announce(info(), ttl_s=15)
    assert cached.live() == []  # the read is reused
    assert [worker.id for worker in CachedBoard(board, max_age_s=0).live()] == ["w1"]
