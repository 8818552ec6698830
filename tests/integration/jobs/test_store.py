"""The store on real SQLite and a real PostgreSQL: migrations, conditional transitions,
pagination, and the guarantees that must hold when writers race (claims, bounds, caps)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import insert, inspect

from sdserve.domain.jobs import FailureCode, JobKind, Status
from sdserve.errors import INTERNAL_ERROR_MESSAGE, JobNotFound, RateLimited
from sdserve.jobs.contract import JobRecord, Owner, WebhookOptions
from sdserve.jobs.store import Store, StoredFile, new_id, sqlite_url, utcnow
from sdserve.jobs.store.database import MIGRATIONS_DIR
from sdserve.jobs.store.jobs import JOBS

pytestmark = pytest.mark.databases("sqlite", "postgresql")
T = TypeVar("T")


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store(database_url)
    s.migrate()
    yield s
    s.close()


@pytest.fixture
def other_store(database_url: str) -> Iterator[Store]:
    """The same database through a second engine and pool, as another process has it."""
    s = Store(database_url)
    yield s
    s.close()


def job(created_at: datetime | None = None) -> JobRecord:
    return JobRecord(
        id=new_id(),
        kind=JobKind.PREDICTION,
        model="test/fake",
        version="v1",
        input={"prompt": "a cat"},
        status=Status.STARTING,
        created_at=created_at or datetime.now(UTC),
    )


def test_migrations_create_the_schema_idempotently(tmp_path: Path) -> None:
    store = Store(sqlite_url(tmp_path / "new" / "dir"))
    store.migrate()
    store.migrate()  # a second start-up is a no-op
    tables = set(inspect(store.engine).get_table_names())
    assert {"jobs", "files", "webhook_outbox", "alembic_version"} <= tables
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000


def test_migrations_run_from_an_empty_database(empty_database_url: str) -> None:
    store = Store(empty_database_url)
    store.migrate()
    store.migrate()  # a second start-up is a no-op
    tables = set(inspect(store.engine).get_table_names())
    assert {"jobs", "files", "webhook_outbox", "alembic_version"} <= tables
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == (
            _head_revision()
        )
    record = job()
    store.jobs.insert(record)
    assert store.jobs.get(record.id) == record
    store.close()


def test_processes_starting_together_migrate_an_empty_database_once(
    empty_database_url: str,
) -> None:
    """An API and its workers started at once (compose, systemd) all migrate at start-up:
    one of them migrates, the others wait and find the schema at its head."""
    stores = [Store(empty_database_url) for _ in range(4)]
    try:
        race(4, lambda i: stores[i].migrate())
        with stores[0].engine.connect() as conn:
            versions = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        assert [row[0] for row in versions] == [_head_revision()]
    finally:
        for store in stores:
            store.close()


def _head_revision() -> str:
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def race(count: int, action: Callable[[int], T]) -> list[T]:
    """Run ``action(0..count-1)`` on ``count`` threads released at the same moment."""
    start = threading.Barrier(count)

    def run(index: int) -> T:
        start.wait(timeout=30)
        return action(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def test_two_runners_claiming_the_same_job_at_once_never_both_win(
    store: Store, other_store: Store
) -> None:
    """Two workers (each with its own engine and pool, as two processes) claim every job
    at the same moment: exactly one claim wins each time, and the job names that one."""
    stores = (store, other_store)
    for _ in range(20):
        record = job()
        store.jobs.insert(record)

        def claim(index: int, job_id: str = record.id) -> JobRecord | None:
            return stores[index % 2].jobs.claim(job_id, f"w{index}")

        claims = race(4, claim)
        winners = [f"w{i}" for i, claimed in enumerate(claims) if claimed is not None]
        assert len(winners) == 1, winners
        state = store.jobs.run_state(record.id)
        assert (state.status, state.worker_id, state.attempts) == (
            Status.PROCESSING,
            winners[0],
            1,
        )


def test_the_queue_bound_holds_when_inserts_race(store: Store, other_store: Store) -> None:
    stores = (store, other_store)
    accepted = race(12, lambda i: stores[i % 2].jobs.insert(job(), max_queued=5))
    assert accepted.count(True) == 5
    assert len(store.jobs.unfinished()) == 5


def test_a_callers_queued_cap_holds_when_inserts_race(store: Store, other_store: Store) -> None:
    stores = (store, other_store)
    alice = Owner("alice", max_queued=3)

    def create(index: int) -> bool:
        record = replace(job(), owner="alice")
        try:
            return stores[index % 2].jobs.insert(record, owner=alice)
        except RateLimited:
            return False

    assert race(10, create).count(True) == 3
    assert len(store.jobs.unfinished()) == 3


def test_a_callers_caps_count_only_its_own_unfinished_jobs(store: Store) -> None:
    alice = Owner("alice", max_queued=1, max_running=1)
    running = replace(job(), owner="alice")
    assert store.jobs.insert(running, owner=alice)
    with pytest.raises(RateLimited, match="max_queued"):
        store.jobs.insert(replace(job(), owner="alice"), owner=alice)
    assert store.jobs.insert(replace(job(), owner="bob"), owner=Owner("bob", max_queued=1))
    store.jobs.claim(running.id, "w")  # alice: one running, none queued
    with pytest.raises(RateLimited, match="max_running"):
        store.jobs.insert(replace(job(), owner="alice"), owner=alice)
    store.jobs.transition(running.id, Status.SUCCEEDED)
    assert store.jobs.insert(replace(job(), owner="alice"), owner=alice)


def test_round_trip_keeps_every_field(store: Store) -> None:
    record = job()
    store.jobs.insert(record)
    assert store.jobs.get(record.id) == record
    with pytest.raises(JobNotFound):
        store.jobs.get("nope")


def test_round_trip_keeps_inline_output(store: Store) -> None:
    record = replace(job(), inline_output=True)
    store.jobs.insert(record)
    assert store.jobs.get(record.id).inline_output is True
    assert store.jobs.page(limit=5).results[0] == record


def test_double_claim_fails(store: Store) -> None:
    record = job()
    store.jobs.insert(record)
    claimed = store.jobs.claim(record.id, "worker-a")
    assert claimed is not None and claimed == store.jobs.get(record.id)
    assert claimed.status is Status.PROCESSING and claimed.started_at is not None
    assert store.jobs.claim(record.id, "worker-b") is None
    state = store.jobs.run_state(record.id)
    assert (state.status, state.worker_id, state.attempts) == (Status.PROCESSING, "worker-a", 1)


def test_a_job_past_its_deadline_is_not_claimed(store: Store) -> None:
    late = replace(job(), deadline=datetime.now(UTC) - timedelta(seconds=1))
    on_time = replace(job(), deadline=datetime.now(UTC) + timedelta(minutes=5))
    for record in (late, on_time):
        store.jobs.insert(record)
    assert store.jobs.claim(late.id, "w") is None
    assert store.jobs.get(late.id).status is Status.STARTING  # the worker aborts it
    assert store.jobs.claim(on_time.id, "w") is not None


def test_the_queue_bound_is_checked_in_the_insert(store: Store) -> None:
    first, second, third = job(), job(), job()
    assert store.jobs.insert(first, max_queued=2) and store.jobs.insert(second, max_queued=2)
    assert store.jobs.insert(third, max_queued=2) is False
    with pytest.raises(JobNotFound):
        store.jobs.get(third.id)
    store.jobs.transition(first.id, Status.CANCELED)
    assert store.jobs.insert(third, max_queued=2)


def test_output_files_are_recorded_with_the_terminal_transition(store: Store) -> None:
    record = job()
    store.jobs.insert(record)
    store.jobs.claim(record.id, "w")
    outputs = [
        StoredFile(f"out{i}.png", f"out-{i}.png", "image/png", 10, "output", record.id, utcnow())
        for i in range(2)
    ]
    assert store.jobs.transition(record.id, Status.SUCCEEDED, files=outputs, output=["out0.png"])
    assert store.files.of_job(record.id) == ["out0.png", "out1.png"]
    late = [StoredFile("late.png", "late.png", "image/png", 1, "output", record.id, utcnow())]
    assert store.jobs.transition(record.id, Status.FAILED, files=late) is None
    assert store.files.get("late.png") is not None  # no stored file is left without its row


def test_on_webhook_is_called_only_when_a_webhook_was_queued(database_url: str) -> None:
    calls: list[str] = []
    store = Store(database_url, on_webhook=lambda: calls.append("wake"))
    store.migrate()
    plain = job()
    hooked = replace(job(), webhook=WebhookOptions("http://hook.test/", frozenset({"start"})))
    for record in (plain, hooked):
        store.jobs.insert(record)
        store.jobs.claim(record.id, "w")
        store.jobs.transition(record.id, Status.SUCCEEDED)
    assert calls == ["wake"]  # the start webhook of the hooked job; it wants no completed
    assert [row.event for row in store.outbox.of_job(hooked.id)] == ["start"]
    store.close()


def test_terminal_state_is_never_overwritten(store: Store) -> None:
    record = job()
    store.jobs.insert(record)
    store.jobs.claim(record.id, "w")
    assert store.jobs.transition(record.id, Status.SUCCEEDED, output=["k.png"])
    for late in (Status.FAILED, Status.CANCELED, Status.PROCESSING, Status.STARTING):
        assert store.jobs.transition(record.id, late, error="late") is None
    final = store.jobs.get(record.id)
    assert (final.status, final.output, final.error) == (Status.SUCCEEDED, ["k.png"], None)
    assert final.completed_at is not None


def test_aborted_only_from_starting(store: Store) -> None:
    queued, running = job(), job()
    store.jobs.insert(queued)
    store.jobs.insert(running)
    store.jobs.claim(running.id, "w")
    assert store.jobs.transition(queued.id, Status.ABORTED)
    assert store.jobs.transition(running.id, Status.ABORTED) is None


def test_pages_are_newest_first_with_cursors_both_ways(store: Store) -> None:
    base = datetime(2025, 1, 1, tzinfo=UTC)
    records = [job(base + timedelta(seconds=i)) for i in range(7)]
    for record in records:
        store.jobs.insert(record)
    newest_first = [r.id for r in reversed(records)]

    first = store.jobs.page(limit=3)
    assert [r.id for r in first.results] == newest_first[:3]
    assert first.previous_cursor is None and first.next_cursor
    second = store.jobs.page(cursor=first.next_cursor, limit=3)
    assert [r.id for r in second.results] == newest_first[3:6]
    third = store.jobs.page(cursor=second.next_cursor, limit=3)
    assert [r.id for r in third.results] == newest_first[6:]
    assert third.next_cursor is None
    back = store.jobs.page(cursor=third.previous_cursor, limit=3)
    assert [r.id for r in back.results] == newest_first[3:6]
    back_again = store.jobs.page(cursor=back.previous_cursor, limit=3)
    assert [r.id for r in back_again.results] == newest_first[:3]
    assert back_again.previous_cursor is None


def test_same_timestamp_pages_do_not_skip_or_repeat(store: Store) -> None:
    when = datetime(2025, 1, 1, tzinfo=UTC)
    ids = set()
    for _ in range(5):
        record = job(when)
        ids.add(record.id)
        store.jobs.insert(record)
    seen: list[str] = []
    page = store.jobs.page(limit=2)
    while True:
        seen += [r.id for r in page.results]
        if page.next_cursor is None:
            break
        page = store.jobs.page(cursor=page.next_cursor, limit=2)
    assert sorted(seen) == sorted(ids) and len(seen) == 5


def test_progress_updates_are_ignored_once_terminal(store: Store) -> None:
    record = job()
    store.jobs.insert(record)
    store.jobs.claim(record.id, "w")
    store.jobs.update_running(record.id, append_logs="a\n", progress=(1, 4))
    store.jobs.update_running(record.id, append_logs="b\n", progress=(2, 4))
    store.jobs.transition(record.id, Status.CANCELED)
    store.jobs.update_running(record.id, append_logs="late\n", progress=(3, 4))
    assert store.jobs.get(record.id).logs == "a\nb\n"
    assert store.jobs.run_state(record.id).progress_step == 2


def _alembic(store: Store, action: str, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with store.engine.connect() as conn:
        config.attributes["connection"] = conn
        getattr(command, action)(config, revision)
        conn.commit()


def test_migration_0005_splits_the_old_error_text_once(empty_database_url: str) -> None:
    store = Store(empty_database_url)
    _alembic(store, "upgrade", "0004")
    old = {  # status, error as versions before 0005 wrote them
        "oom": ("failed", "insufficient_gpu_memory: CUDA out of memory: tried 2 GiB"),
        "bad": ("failed", "invalid_input: lora: no LoRA named 'nope'"),
        "bug": ("failed", "internal_error: KeyError: '/home/me/secret.txt'"),
        "odd": ("failed", "something without a code"),
        "late": ("aborted", "deadline passed before the job started"),
        "fine": ("succeeded", None),
        "gone": ("canceled", None),
    }
    with store.engine.begin() as conn:
        for job_id, (status, error) in old.items():
            conn.execute(
                insert(JOBS),
                {
                    "id": job_id,
                    "kind": "prediction",
                    "model": "test/fake",
                    "version": "v1",
                    "status": status,
                    "input": {},
                    "error": error,
                    "created_at": utcnow(),
                    "cancel_requested": False,
                    "attempts": 0,
                },
            )
    store.migrate()
    split = {
        job_id: (store.jobs.get(job_id).error_code, store.jobs.get(job_id).error) for job_id in old
    }
    assert split == {
        "oom": (FailureCode.INSUFFICIENT_GPU_MEMORY, "CUDA out of memory: tried 2 GiB"),
        "bad": (FailureCode.INVALID_INPUT, "lora: no LoRA named 'nope'"),
        "bug": (FailureCode.INTERNAL_ERROR, INTERNAL_ERROR_MESSAGE),  # no exception text
        "odd": (FailureCode.INTERNAL_ERROR, "something without a code"),
        "late": (FailureCode.TIMEOUT, "deadline passed before the job started"),
        "fine": (None, None),
        "gone": (None, None),
    }
    _alembic(store, "downgrade", "0004")
    with store.engine.connect() as conn:
        rows = dict(conn.exec_driver_sql("SELECT id, error FROM jobs").all())
    assert rows["oom"] == "insufficient_gpu_memory: CUDA out of memory: tried 2 GiB"
    assert rows["late"] == "deadline passed before the job started"
    assert rows["fine"] is None
    store.close()


def test_round_trip_keeps_the_failure_code(store: Store) -> None:
    record = replace(
        job(), status=Status.FAILED, error_code=FailureCode.STORAGE_FULL, error="disk full"
    )
    store.jobs.insert(record)
    assert store.jobs.get(record.id) == record
    assert store.jobs.get(record.id).error_code is FailureCode.STORAGE_FULL
