"""Service + worker with the in-process queue and worker and the fake engine."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from PIL import Image

from sdserve.domain.events import Done, Log, Output, Progress
from sdserve.domain.jobs import FailureCode, Status
from sdserve.errors import (
    INTERNAL_ERROR_MESSAGE,
    FileNotFound,
    InvalidImage,
    InvalidInput,
    ModelNotFound,
    Overloaded,
)
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.images import NOT_AN_IMAGE
from sdserve.jobs.service import Service
from tests.integration.jobs.conftest import MakeService
from tests.integration.jobs.fakes import FakePredictor

REPLICATE_PROGRESS = re.compile(r"^\s*(\d+)%\s*\|.+?\|\s*(\d+)/(\d+)")

#: the tests whose SQL matters run on PostgreSQL too (the rest: SQLite only)
BOTH_DATABASES = pytest.mark.databases("sqlite", "postgresql")


def wait(service: Service, job_id: str, timeout: float = 20) -> JobRecord:
    return asyncio.run(service.wait(job_id, timeout))


def wait_until(check, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.02)


def png_data_uri(size: tuple[int, int] = (64, 64)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@BOTH_DATABASES
def test_job_runs_to_succeeded_with_outputs_logs_and_seed(make_service: MakeService) -> None:
    service = make_service()
    created = service.create("test/fake", {"prompt": "a cat", "num_outputs": 2, "seed": 41})
    assert created.status is Status.STARTING and created.version == "0123456789abcdef"
    job = wait(service, created.id)

    assert job.status is Status.SUCCEEDED, job.error
    assert job.output is not None and len(job.output) == 2
    colors = []
    for key in job.output:
        data, content_type = service.open_output(key)
        assert content_type == "image/png"
        colors.append(Image.open(io.BytesIO(data)).getpixel((0, 0)))
    assert colors == [(41, 0, 0), (42, 0, 0)]  # image i used seed + i
    progress = [m for line in job.logs.splitlines() if (m := REPLICATE_PROGRESS.match(line))]
    assert [(int(m[2]), int(m[3])) for m in progress] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert "seed: 41" in job.logs
    assert job.input["seed"] == 41 and job.input["num_inference_steps"] == 4
    assert job.metrics["predict_time"] > 0
    assert job.nsfw == [False, False]
    assert job.started_at and job.completed_at and job.created_at <= job.started_at
    # a job shorter than the progress throttle writes its progress with its end
    state = service.store.jobs.run_state(job.id)
    assert (state.progress_step, state.progress_total) == (4, 4) and state.preview


def test_random_seed_is_resolved_and_recorded(make_service: MakeService) -> None:
    service = make_service()
    job = wait(service, service.create("test/fake", {"prompt": "x"}).id)
    seed = job.input["seed"]
    assert isinstance(seed, int) and f"seed: {seed}" in job.logs


@BOTH_DATABASES
def test_events_stream_progress_logs_output_and_done(make_service: MakeService) -> None:
    service = make_service(FakePredictor(step_delay=0.05))
    job = service.create("test/fake", {"prompt": "x", "num_inference_steps": 6})

    async def collect() -> list[object]:
        return [event async for event in service.events(job.id)]

    events = asyncio.run(collect())
    assert isinstance(events[-1], Done) and events[-1].status == "succeeded"
    steps = [e.step for e in events if isinstance(e, Progress)]
    assert steps and steps[-1] == 6 and steps == sorted(steps)
    assert any(isinstance(e, Progress) and e.preview for e in events)
    assert any(isinstance(e, Log) and e.text.startswith("100%") for e in events)
    outputs = [e for e in events if isinstance(e, Output)]
    assert len(outputs) == 1 and len(outputs[0].files) == 1


@pytest.mark.parametrize(
    ("input", "code", "error"),
    [
        ({"prompt": "fail:insufficient_gpu_memory"}, "insufficient_gpu_memory", "CUDA out of"),
        ({"prompt": "fail:storage_full"}, "storage_full", "disk full"),
        ({"prompt": "fail:model_load_error"}, "model_load_error", "model 'acme/sdxl' is not in"),
        ({"prompt": "bad lora"}, "invalid_input", "lora: no LoRA called 'x'"),
        ({"prompt": "boom"}, "internal_error", INTERNAL_ERROR_MESSAGE),
        ({"image": "http://127.0.0.1:1/cat.png"}, "input_fetch_failed", "image: refusing"),
    ],
)
def test_failures_end_failed_with_stable_codes(
    make_service: MakeService, input: dict[str, str], code: str, error: str
) -> None:
    service = make_service()
    job = wait(service, service.create("test/fake", input).id)
    assert job.status is Status.FAILED
    assert job.error_code == code, job.error_code
    assert job.error is not None and job.error.startswith(error), job.error
    # the run had resolved its input: it is kept, whatever failed afterwards
    assert f"Using seed: {job.input['seed']}" in job.logs


def test_a_generation_whose_every_image_is_flagged_fails_nsfw_content(
    make_service: MakeService,
) -> None:
    service = make_service()
    flagged = wait(service, service.create("test/fake", {"prompt": "nsfw", "num_outputs": 2}).id)
    assert flagged.status is Status.FAILED and flagged.output is None
    assert flagged.error_code is FailureCode.NSFW_CONTENT
    one = wait(service, service.create("test/fake", {"prompt": "nsfw first", "num_outputs": 2}).id)
    assert one.status is Status.SUCCEEDED and one.nsfw == [True, False]


def test_an_unexpected_error_is_logged_with_its_traceback_and_never_shown(
    make_service: MakeService, caplog: pytest.LogCaptureFixture
) -> None:
    service = make_service()
    with caplog.at_level(logging.INFO, logger="sdserve"):
        job = wait(service, service.create("test/fake", {"prompt": "boom"}).id)
    assert (job.error_code, job.error) == (FailureCode.INTERNAL_ERROR, INTERNAL_ERROR_MESSAGE)
    assert "kaboom" not in job.logs
    logged = [record for record in caplog.records if record.exc_info]
    assert len(logged) == 1 and "kaboom" in str(logged[0].exc_info[1])  # type: ignore[index]


def test_every_job_end_logs_one_line_with_id_status_seconds_task_and_model(
    make_service: MakeService, caplog: pytest.LogCaptureFixture
) -> None:
    service = make_service()
    with caplog.at_level(logging.INFO, logger="sdserve"):
        done = wait(service, service.create("test/fake", {"prompt": "a fox"}).id)
        edited = wait(service, service.create("test/fake", {"image": png_data_uri()}).id)
        failed = wait(service, service.create("test/fake", {"prompt": "fail:model_load_error"}).id)
    lines = {record.getMessage(): record for record in caplog.records if "job " in record.message}
    assert len(lines) == 3, list(lines)
    ended = re.compile(r"^job (\w+) (\w+) in (\d+\.\d\d) s: (\w+) with test/fake(: .*)?$")
    found = {}
    for message, record in lines.items():
        match = ended.match(message)
        assert match, message
        found[match.group(1)] = (match.group(2), match.group(4), match.group(5), record)
    assert found[done.id][:2] == ("succeeded", "txt2img")
    assert found[edited.id][:2] == ("succeeded", "img2img")
    status, task, error, record = found[failed.id]
    assert (status, task) == ("failed", "txt2img")
    assert error == f": {failed.error_code}: {failed.error}" and "hf download acme/sdxl" in error
    # a foreseen failure is its one line: no traceback anywhere
    assert record.levelno == logging.WARNING
    assert all(r.exc_info is None for r in caplog.records), [r.getMessage() for r in caplog.records]


def test_a_job_canceled_in_the_queue_logs_its_end_too(
    make_service: MakeService, caplog: pytest.LogCaptureFixture
) -> None:
    predictor = FakePredictor(step_delay=0.1)
    service = make_service(predictor)
    running = service.create("test/fake", {"prompt": "first", "num_inference_steps": 5})
    queued = service.create("test/fake", {"prompt": "second"})
    assert predictor.started.wait(10)
    with caplog.at_level(logging.INFO, logger="sdserve"):
        service.cancel(queued.id)
        wait(service, running.id)
    lines = sorted(r.getMessage() for r in caplog.records if r.getMessage().startswith("job "))
    assert len(lines) == 2, lines
    assert any(re.match(rf"job {queued.id} canceled in [\d.]+ s: txt2img", line) for line in lines)
    assert any(
        re.match(rf"job {running.id} succeeded in [\d.]+ s: txt2img", line) for line in lines
    )


def test_validation_errors_are_raised_before_anything_is_stored(
    make_service: MakeService,
) -> None:
    service = make_service()
    with pytest.raises(InvalidInput, match="width: must be a multiple of 8"):
        service.create("test/fake", {"prompt": "x", "width": 100})
    with pytest.raises(InvalidInput, match="num_inference_steps"):
        service.create("test/fake", {"prompt": "x", "num_inference_steps": 0})
    with pytest.raises(InvalidInput, match="steps"):
        service.create("test/fake", {"prompt": "x", "steps": 3})
    with pytest.raises(ModelNotFound):
        service.create("nobody/nothing", {"prompt": "x"})
    assert service.list().results == []


def test_a_strength_that_runs_no_step_of_the_models_default_is_refused_at_create(
    make_service: MakeService,
) -> None:
    """The fake model runs 4 steps unless told otherwise: 0.2 of them is no step. The
    request names no steps, so only the model's default can tell (it used to fail in the
    worker)."""
    service = make_service()
    with pytest.raises(InvalidInput, match=r"0\.2 of 4 steps runs no denoising step") as caught:
        service.create(
            "test/fake", {"prompt": "x", "image": png_data_uri(), "prompt_strength": 0.2}
        )
    assert caught.value.field == "prompt_strength"
    assert "at least 0.25" in str(caught.value)
    assert service.list().results == []
    # with more steps the same strength runs some
    job = service.create(
        "test/fake",
        {"prompt": "x", "image": png_data_uri(), "prompt_strength": 0.2, "num_inference_steps": 10},
    )
    assert wait(service, job.id).status is Status.SUCCEEDED


@pytest.mark.parametrize(
    ("input", "error"),
    [
        ({"scheduler": "Euler b"}, "scheduler: unknown scheduler 'Euler b'"),
        ({"noise_schedule": "wobbly"}, "noise_schedule: unknown noise schedule 'wobbly'"),
        ({"image": "data:image/png;base64,aGVsbG8="}, f"image: {NOT_AN_IMAGE}"),
        ({"image": "data:image/png;base64,!!"}, "image: data URI is not valid base64"),
        ({"image": "/v1/files/" + "a" * 32}, "image: no uploaded file with id"),
        ({"image": "ftp://example.com/cat.png"}, "image: unsupported URL scheme 'ftp'"),
        ({"image": "photos/cat.png"}, "image: not a URL, data URI or uploaded file"),
        ({"image": png_data_uri(), "mask": "data:,not a mask"}, f"mask: {NOT_AN_IMAGE}"),
    ],
)
def test_bad_names_and_images_are_refused_when_the_job_is_created(
    make_service: MakeService, input: dict[str, str], error: str
) -> None:
    service = make_service()
    with pytest.raises(InvalidInput) as caught:
        service.create("test/fake", {"prompt": "x", **input})
    assert str(caught.value).startswith(error)
    assert caught.value.field == error.split(":", 1)[0]
    assert service.list().results == []


def test_an_uploaded_file_that_is_no_image_is_refused_when_the_job_is_created(
    make_service: MakeService,
) -> None:
    service = make_service()
    key = service.store_upload(b"%PDF-1.4 not a picture", "cat.png", "image/png")
    for reference in (key, f"/v1/files/{key}", f"http://127.0.0.1:8000/files/{key}"):
        with pytest.raises(InvalidImage, match=f"image: {re.escape(NOT_AN_IMAGE)}"):
            service.create("test/fake", {"prompt": "x", "image": reference})
    assert service.list().results == []


def test_an_image_fetched_from_a_url_that_is_no_image_fails_cleanly(
    make_service: MakeService,
) -> None:
    not_png = httpx.MockTransport(lambda request: httpx.Response(200, content=b"<html>hi"))
    service = make_service(
        fetch_transport=not_png, fetch_resolver=lambda host, port: ["93.184.216.34"]
    )
    created = service.create("test/fake", {"prompt": "x", "image": "https://example.com/a.png"})
    job = wait(service, created.id)
    assert job.status is Status.FAILED
    assert (job.error_code, job.error) == ("invalid_image", f"image: {NOT_AN_IMAGE}")


@BOTH_DATABASES
def test_queue_limit_raises_overloaded(make_service: MakeService) -> None:
    predictor = FakePredictor(step_delay=0.2)
    service = make_service(predictor, service={"max_queue": 2})
    first = service.create("test/fake", {"prompt": "x", "num_inference_steps": 20})
    service.create("test/fake", {"prompt": "x"})
    with pytest.raises(Overloaded) as raised:
        service.create("test/fake", {"prompt": "x"})
    assert raised.value.retry_after > 0
    service.cancel(first.id)


@BOTH_DATABASES
def test_cancel_of_queued_job_is_immediate_and_it_never_runs(make_service: MakeService) -> None:
    predictor = FakePredictor(step_delay=0.1)
    service = make_service(predictor)
    running = service.create("test/fake", {"prompt": "first", "num_inference_steps": 10})
    queued = service.create("test/fake", {"prompt": "second"})
    assert predictor.started.wait(10)
    canceled = service.cancel(queued.id)
    assert canceled.status is Status.CANCELED and canceled.completed_at is not None
    assert wait(service, running.id).status is Status.SUCCEEDED
    assert [call.prompt for call in predictor.calls] == ["first"]
    assert service.cancel(queued.id).status is Status.CANCELED  # terminal: unchanged


def test_cancel_of_running_job_stops_within_one_step(make_service: MakeService) -> None:
    predictor = FakePredictor(step_delay=0.25)
    service = make_service(predictor)
    job = service.create("test/fake", {"prompt": "x", "num_inference_steps": 40})
    wait_until(lambda: service.store.jobs.run_state(job.id).progress_step is not None)
    step_at_cancel = service.store.jobs.run_state(job.id).progress_step or 0
    flagged = service.cancel(job.id)
    assert flagged.status is Status.PROCESSING  # the worker finishes the cancel
    final = wait(service, job.id)
    assert final.status is Status.CANCELED
    assert predictor.steps_run[-1] <= step_at_cancel + 2  # the flush lag plus one step
    assert final.output is None


@BOTH_DATABASES
def test_a_cancel_flag_set_behind_the_services_back_is_seen(make_service: MakeService) -> None:
    """In-process cancels tell the worker at once; a flag written to the store by anything
    else is still read by the worker's safety poll."""
    predictor = FakePredictor(step_delay=0.05)
    service = make_service(predictor)
    job = service.create("test/fake", {"prompt": "x", "num_inference_steps": 200})
    assert predictor.started.wait(10)
    assert service.store.jobs.request_cancel(job.id)
    assert wait(service, job.id).status is Status.CANCELED
    assert predictor.steps_run[-1] < 100  # well before its 10 s end


@BOTH_DATABASES
def test_deadline_passed_before_start_aborts(make_service: MakeService) -> None:
    predictor = FakePredictor()
    service = make_service(predictor)
    past = datetime.now(UTC) - timedelta(seconds=1)
    job = wait(service, service.create("test/fake", {"prompt": "x"}, deadline=past).id)
    assert job.status is Status.ABORTED
    assert (job.error_code, job.error) == (
        FailureCode.TIMEOUT,
        "deadline passed before the job started",
    )
    assert predictor.calls == []


def test_deadline_while_running_cancels(make_service: MakeService) -> None:
    service = make_service(FakePredictor(step_delay=0.1))
    soon = datetime.now(UTC) + timedelta(seconds=0.6)
    job = service.create("test/fake", {"prompt": "x", "num_inference_steps": 50}, deadline=soon)
    final = wait(service, job.id)
    assert final.status is Status.CANCELED and "deadline passed" in final.logs


@BOTH_DATABASES
def test_uploaded_file_is_used_as_image_input(make_service: MakeService) -> None:
    predictor = FakePredictor()
    service = make_service(predictor)
    png = base64.b64decode(png_data_uri((96, 64)).split(",", 1)[1])
    key = service.store_upload(png, "cat.png", "application/octet-stream")
    assert service.open_output(key) == (png, "image/png")  # sniffed, not trusted
    created = service.create("test/fake", {"prompt": "x", "image": f"/v1/files/{key}"})
    job = wait(service, created.id)
    assert job.status is Status.SUCCEEDED, job.error
    image, mask = predictor.images_seen[-1]
    assert image is not None and image.size == (96, 64) and mask is None
    with_mask = service.create(
        "test/fake", {"prompt": "x", "image": png_data_uri(), "mask": png_data_uri()}
    )
    assert wait(service, with_mask.id).status is Status.SUCCEEDED
    image, mask = predictor.images_seen[-1]
    assert image is not None and image.mode == "RGB" and mask is not None and mask.mode == "L"


@BOTH_DATABASES
def test_list_is_newest_first(make_service: MakeService) -> None:
    service = make_service()
    ids = [service.create("test/fake", {"prompt": str(i)}).id for i in range(3)]
    page = service.list(limit=2)
    assert [r.id for r in page.results] == ids[::-1][:2] and page.next_cursor
    rest = service.list(cursor=page.next_cursor, limit=2)
    assert [r.id for r in rest.results] == ids[:1]


def test_wait_answers_with_the_record_the_job_ended_with(make_service: MakeService) -> None:
    service = make_service()
    job = wait(service, service.create("test/fake", {"prompt": "x"}).id)
    assert job.status is Status.SUCCEEDED and job == service.get(job.id)


@BOTH_DATABASES
def test_wait_looks_at_the_store_when_no_wake_comes(make_service: MakeService) -> None:
    """A job ended behind the service's back (no wake) is still seen, by the safety poll."""
    service = make_service(start=False)  # no worker: the job stays queued
    service.store.migrate()
    job = service.create("test/fake", {"prompt": "x"})
    threading.Timer(0.1, service.store.jobs.transition, args=(job.id, Status.CANCELED)).start()
    started = time.monotonic()
    assert wait(service, job.id, timeout=10).status is Status.CANCELED
    assert time.monotonic() - started < 5


def test_wait_returns_current_state_on_timeout(make_service: MakeService) -> None:
    service = make_service(FakePredictor(step_delay=0.2))
    job = service.create("test/fake", {"prompt": "x", "num_inference_steps": 20})
    started = time.monotonic()
    seen = asyncio.run(service.wait(job.id, 0.3))
    assert time.monotonic() - started < 2
    assert not seen.status.terminal
    service.cancel(job.id)


def test_models_carry_the_input_schema(make_service: MakeService) -> None:
    service = make_service()
    (model,) = service.models()
    assert model.name == "test/fake" and model.family == "sd1"
    assert model.input_schema["properties"]["width"]["default"] == 64
    assert service.model("test/fake:0123456789abcdef") == model
    assert service.model("0123456789abcdef") == model
    with pytest.raises(ModelNotFound):
        service.model("test/fake:other")


@BOTH_DATABASES
def test_retention_removes_files_and_marks_jobs(make_service: MakeService) -> None:
    service = make_service(service={"retention_hours": 1})
    job = wait(service, service.create("test/fake", {"prompt": "x"}).id)
    assert job.output
    assert service.sweep() == 0  # too recent
    assert service.sweep(now=datetime.now(UTC) + timedelta(hours=2)) == 1
    assert service.get(job.id).data_removed is True
    with pytest.raises(FileNotFound):
        service.open_output(job.output[0])


def test_a_finished_job_is_polled_without_reading_the_database(
    make_service: MakeService,
) -> None:
    # 200 clients polling a job used to cost a SQLite round trip (and an output file read
    # for inline answers) per poll, on the event loop (bench/poll_latency.py)
    service = make_service()
    job = wait(service, service.create("test/fake", {"prompt": "x"}).id)
    assert job.output
    first = service.get(job.id)
    data = service.open_output(job.output[0])
    reads: list[str] = []
    store_get = service.store.jobs.get
    files_get = service.files.get

    def counted_store_get(job_id: str) -> JobRecord:
        reads.append(job_id)
        return store_get(job_id)

    def counted_files_get(key: str) -> tuple[bytes, str]:
        reads.append(key)
        return files_get(key)

    service.store.jobs.get = counted_store_get  # type: ignore[method-assign]
    service.files.get = counted_files_get  # type: ignore[method-assign]

    assert service.get(job.id) == first
    assert service.open_output(job.output[0]) == data
    assert reads == []


def test_a_running_job_is_read_from_the_store_on_every_poll(make_service: MakeService) -> None:
    service = make_service(FakePredictor(step_delay=0.05))
    created = service.create("test/fake", {"prompt": "x", "num_inference_steps": 20})
    wait_until(lambda: service.get(created.id).status is Status.PROCESSING)
    wait_until(lambda: service.get(created.id).status is Status.SUCCEEDED, timeout=30)


def test_a_job_polled_before_a_sweep_shows_its_data_removed_after_it(
    make_service: MakeService,
) -> None:
    service = make_service(service={"retention_hours": 1})
    job = wait(service, service.create("test/fake", {"prompt": "x"}).id)
    assert job.output
    assert service.get(job.id).data_removed is False
    service.open_output(job.output[0])
    assert service.sweep(now=datetime.now(UTC) + timedelta(hours=2)) == 1
    assert service.get(job.id).data_removed is True
    with pytest.raises(FileNotFound):
        service.open_output(job.output[0])
