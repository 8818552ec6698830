"""The S3 file store against a real S3 endpoint (moto's server over HTTP): the FileStore
contract, what the bucket holds, start-up checks that name the setting to fix, and a
service whose outputs and retention go through the bucket."""

from __future__ import annotations

import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient

from sdserve.api.app import create_app
from sdserve.config import ServiceSettings, Settings
from sdserve.errors import (
    FileNotFound,
    InvalidInput,
    StorageFull,
    StorageUnavailable,
    UnsupportedDependency,
)
from sdserve.jobs.files import new_key
from sdserve.jobs.s3_files import S3FileStore
from sdserve.wiring import file_store_from_url
from tests.e2e.conftest import free_port
from tests.integration.jobs.conftest import MakeService
from tests.integration.jobs.test_service import wait
from tests.servers.s3 import S3Endpoint, s3_endpoint  # noqa: F401 (the fixture)


def s3_settings(tmp_path: Path, url: str, endpoint: str | None) -> Settings:
    return Settings(
        data_dir=tmp_path, service=ServiceSettings(files_url=url, s3_endpoint_url=endpoint)
    )


@pytest.fixture
def bucket(s3_endpoint: S3Endpoint) -> str:  # noqa: F811
    return s3_endpoint.make_bucket(f"sdserve-{secrets.token_hex(4)}")


@pytest.fixture
def store(s3_endpoint: S3Endpoint, bucket: str, tmp_path: Path) -> S3FileStore:  # noqa: F811
    built = file_store_from_url(s3_settings(tmp_path, f"s3://{bucket}/out", s3_endpoint.url))
    assert isinstance(built, S3FileStore)
    return built


def test_round_trip_keeps_the_content_type_under_the_prefix(
    store: S3FileStore,
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
) -> None:
    key = new_key("png")
    store.put(key, b"\x89PNG data", "image/png")
    assert store.get(key) == (b"\x89PNG data", "image/png")
    assert s3_endpoint.keys(bucket) == [f"out/{key}"]
    head = s3_endpoint.client().head_object(Bucket=bucket, Key=f"out/{key}")
    assert head["ContentType"] == "image/png"
    store.delete(key)
    assert s3_endpoint.keys(bucket) == []
    with pytest.raises(FileNotFound):
        store.get(key)
    store.delete(key)  # deleting twice is fine


def test_missing_and_malformed_keys_are_not_found(store: S3FileStore) -> None:
    with pytest.raises(FileNotFound):
        store.get(new_key("png"))
    with pytest.raises(FileNotFound):
        store.get("../../other-bucket/secret")
    with pytest.raises(FileNotFound):
        store.put("../escape", b"x", "image/png")


def test_a_large_file_comes_back_whole(store: S3FileStore) -> None:
    key = new_key()
    data = os.urandom(24 * 1024 * 1024)
    store.put(key, data, "application/octet-stream")
    assert store.get(key) == (data, "application/octet-stream")


def test_two_processes_on_one_bucket_share_files(
    store: S3FileStore,
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
) -> None:
    # what a worker on another machine writes, the API reads (same URL, another client)
    other = S3FileStore.from_url(f"s3://{bucket}/out/", endpoint_url=s3_endpoint.url)
    key = new_key("png")
    other.put(key, b"\x89PNG from a worker", "image/png")
    assert store.get(key) == (b"\x89PNG from a worker", "image/png")


def test_a_missing_bucket_fails_the_start_naming_the_setting(
    s3_endpoint: S3Endpoint,  # noqa: F811
    tmp_path: Path,
) -> None:
    settings = s3_settings(tmp_path, "s3://no-such-bucket/out", s3_endpoint.url)
    with pytest.raises(InvalidInput, match=r"^files_url: bucket 'no-such-bucket' does not exist"):
        file_store_from_url(settings)


def test_an_unreachable_endpoint_fails_the_start_naming_the_setting(tmp_path: Path) -> None:
    settings = s3_settings(tmp_path, "s3://bucket/out", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(InvalidInput, match=r"^s3_endpoint_url: cannot reach s3://bucket/"):
        file_store_from_url(settings)


def test_missing_credentials_fail_the_start_saying_where_they_come_from(
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    settings = s3_settings(tmp_path, f"s3://{bucket}/out", s3_endpoint.url)
    with pytest.raises(InvalidInput, match=r"^files_url: no credentials .*AWS_ACCESS_KEY_ID"):
        file_store_from_url(settings)


def test_a_bucket_gone_after_start_is_unavailable_not_a_crash(
    store: S3FileStore,
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
) -> None:
    s3_endpoint.client().delete_bucket(Bucket=bucket)
    with pytest.raises(StorageUnavailable, match="file storage is unavailable") as raised:
        store.put(new_key("png"), b"x", "image/png")
    assert raised.value.retry_after > 0  # a 503 with Retry-After to a caller
    assert bucket not in raised.value.message  # the log has the details, not the client


def test_a_full_store_is_storage_full(store: S3FileStore) -> None:
    # what MinIO answers when its disks are full (moto has no quota to fill)
    full = ClientError({"Error": {"Code": "XMinioStorageFull"}}, "PutObject")
    assert isinstance(store._failure(full, "store", "k"), StorageFull)


def test_without_boto3_the_error_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "boto3", None)  # import boto3 fails
    with pytest.raises(UnsupportedDependency, match=r"sdserve\[cluster\]"):
        file_store_from_url(s3_settings(tmp_path, "s3://bucket/out", None))


def test_outputs_and_uploads_live_in_the_bucket_until_retention(
    make_service: MakeService,
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
) -> None:
    service = make_service(
        service={
            "files_url": f"s3://{bucket}/jobs",
            "s3_endpoint_url": s3_endpoint.url,
            "retention_hours": 1,
        }
    )
    upload = service.store_upload(b"\x89PNG\r\n\x1a\nupload", "in.png", "image/png")
    job = wait(service, service.create("test/fake", {"prompt": "x"}).id)
    assert job.output
    assert set(s3_endpoint.keys(bucket)) == {f"jobs/{key}" for key in [upload, *job.output]}
    assert service.open_output(job.output[0])[1] == "image/png"
    assert service.sweep(now=datetime.now(UTC) + timedelta(hours=2)) == 1
    assert s3_endpoint.keys(bucket) == []
    with pytest.raises(FileNotFound):
        service.open_output(job.output[0])


def test_the_api_answers_503_with_retry_after_when_the_bucket_is_gone(
    make_service: MakeService,
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
    tmp_path: Path,
) -> None:
    config = {"files_url": f"s3://{bucket}/jobs", "s3_endpoint_url": s3_endpoint.url}
    service = make_service(service=config)
    key = service.store_upload(b"\x89PNG\r\n\x1a\nupload", "in.png", "image/png")
    settings = s3_settings(tmp_path, config["files_url"], s3_endpoint.url)
    app = create_app(settings, service, manage_service=False)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get(f"/files/{key}").status_code == 200
        s3_endpoint.client().delete_object(Bucket=bucket, Key=f"jobs/{key}")
        assert client.get(f"/files/{key}").status_code == 404
        s3_endpoint.client().delete_bucket(Bucket=bucket)
        gone = client.get(f"/files/{key}")
    assert gone.status_code == 503
    assert int(gone.headers["Retry-After"]) > 0
    assert bucket not in gone.text


def test_a_job_that_cannot_store_its_outputs_fails_saying_why(
    make_service: MakeService,
    s3_endpoint: S3Endpoint,  # noqa: F811
    bucket: str,
) -> None:
    config = {"files_url": f"s3://{bucket}/jobs", "s3_endpoint_url": s3_endpoint.url}
    service = make_service(service=config)
    s3_endpoint.client().delete_bucket(Bucket=bucket)
    job = wait(service, service.create("test/fake", {"prompt": "x"}).id)
    assert job.status.value == "failed"
    assert job.error is not None and "file storage is unavailable" in job.error
    assert bucket not in job.error
