"""A job that does not succeed leaves no files behind: no images in the file store, no
rows for them, no training work folder (extracted images, checkpoints)."""

from __future__ import annotations

import asyncio
import io
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sdserve.domain.jobs import FailureCode, JobKind, Status
from sdserve.jobs.contract import JobRecord
from sdserve.jobs.files import InMemoryFileStore
from sdserve.jobs.service import Service
from sdserve.models.results import GenerationResult
from tests.integration.jobs.conftest import MakeService
from tests.integration.jobs.fakes import FakePredictor

pytestmark = pytest.mark.databases("sqlite", "postgresql")


def wait(service: Service, job_id: str, timeout: float = 30) -> JobRecord:
    return asyncio.run(service.wait(job_id, timeout))


@dataclass
class OvertakenPredictor(FakePredictor):
    """Generates, then lets the test end the job behind the runner's back (a cancel that
    lands while the images are being written) before handing the images over."""

    job_id: list[str] = field(default_factory=list)
    known: threading.Event = field(default_factory=threading.Event)
    service: list[Service] = field(default_factory=list)

    def generate(self, inp: Any, **kwargs: Any) -> GenerationResult:
        result = super().generate(inp, **kwargs)
        assert self.known.wait(10)
        moved = self.service[0].store.jobs.transition(self.job_id[0], Status.CANCELED)
        assert moved is not None
        return result


@dataclass
class HeldPredictor(FakePredictor):
    """Runs once the test releases it."""

    release: threading.Event = field(default_factory=threading.Event)

    def generate(self, inp: Any, **kwargs: Any) -> GenerationResult:
        self.started.set()
        assert self.release.wait(10)
        return super().generate(inp, **kwargs)


def test_the_images_of_a_run_a_cancel_overtook_are_not_kept(make_service: MakeService) -> None:
    files = InMemoryFileStore()
    predictor = OvertakenPredictor()
    service = make_service(predictor, files=files)
    predictor.service.append(service)
    job = service.create("test/fake", {"prompt": "a cat", "num_outputs": 2})
    predictor.job_id.append(job.id)
    predictor.known.set()

    ended = wait(service, job.id)

    assert ended.status is Status.CANCELED
    assert service.store.files.of_job(job.id) == []
    assert files.keys() == []


def one_image_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_disk_that_fills_midway_through_the_images_keeps_none(
    make_service: MakeService,
) -> None:
    """Room for one image of two: the job fails ``storage_full`` and the first image, which
    was written, goes too."""
    one = len(one_image_png())
    files = InMemoryFileStore(capacity=one + one // 2)
    service = make_service(files=files)

    ended = wait(service, service.create("test/fake", {"prompt": "x", "num_outputs": 2}).id)

    assert ended.status is Status.FAILED
    assert ended.error_code is FailureCode.STORAGE_FULL, ended.error
    assert files.keys() == []
    assert service.store.files.of_job(ended.id) == []


def zip_of_images(count: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(count):
            archive.writestr(f"photo-{index}.png", one_image_png())
    return buffer.getvalue()


def test_a_training_that_fails_after_extracting_its_images_leaves_no_folder(
    make_service: MakeService, tmp_path: Path
) -> None:
    """The fake base model cannot be loaded: the training fails after its archive was
    extracted into its work folder, which must not stay on disk."""
    service = make_service()
    upload = service.store_upload(zip_of_images(3), "photos.zip", "application/zip")
    job = service.create(
        "test/fake",
        {"input_images": upload, "max_train_steps": 2},
        kind=JobKind.TRAINING,
        destination="me/my-style",
    )

    ended = wait(service, job.id, timeout=120)

    assert ended.status is Status.FAILED, ended
    assert "on 3 image(s)" in ended.logs  # the archive was extracted before it failed
    assert not (tmp_path / "training" / job.id).exists()
    assert list((tmp_path / "training").glob("*")) == []


def test_a_work_folder_a_dead_worker_left_goes_when_a_worker_starts(
    make_service: MakeService, tmp_path: Path
) -> None:
    """A worker killed mid-training leaves its folder; its job is failed ``worker_lost``
    (maybe by another process). The next worker start deletes folders of jobs that are no
    longer running and keeps those of running jobs and of ``sdserve train``."""
    predictor = HeldPredictor()
    first = make_service(predictor, start=False)
    first.store.migrate()
    ended = first.store.jobs.transition(
        first.create("test/fake", {"prompt": "x"}).id, Status.CANCELED
    )
    assert ended is not None
    waiting = first.create("test/fake", {"prompt": "y"})
    root = tmp_path / "training"
    for name in (ended.id, waiting.id, "gone-job-id", "cli-me--my-style"):
        (root / name / "images").mkdir(parents=True)
        (root / name / "images" / "0.png").write_bytes(b"x")

    first.start()
    assert predictor.started.wait(10)  # the waiting job runs: its folder is in use

    assert {path.name for path in root.iterdir()} == {"cli-me--my-style", waiting.id}
    predictor.release.set()
    assert wait(first, waiting.id).status is Status.SUCCEEDED
