"""The composition root picks the file store by URL: a folder, file:// or s3:// (the S3
store itself is tested against a real endpoint in tests/integration/jobs/test_s3_files.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from sdserve.config import ServiceSettings, Settings
from sdserve.errors import InvalidInput
from sdserve.jobs.files import LocalFileStore
from sdserve.wiring import file_store_from_url


def settings(tmp_path: Path, **service: object) -> Settings:
    return Settings(data_dir=tmp_path, service=ServiceSettings(**service))  # type: ignore[arg-type]


def test_the_default_is_the_data_folders_files(tmp_path: Path) -> None:
    store = file_store_from_url(settings(tmp_path))
    assert isinstance(store, LocalFileStore) and store.directory == tmp_path / "files"


@pytest.mark.parametrize("form", ["path", "file-url", "old-name"])
def test_a_folder_or_file_url_is_a_local_store(tmp_path: Path, form: str) -> None:
    folder = tmp_path / "my files"
    given = {
        "path": {"files_url": str(folder)},
        "file-url": {"files_url": folder.as_uri()},
        "old-name": {"files_dir": folder},  # the setting's name before URLs
    }[form]
    store = file_store_from_url(settings(tmp_path, **given))
    assert isinstance(store, LocalFileStore) and store.directory == folder


def test_another_scheme_is_refused_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"^files_url: .*file://.*s3://"):
        file_store_from_url(settings(tmp_path, files_url="gs://bucket/outputs"))


@pytest.mark.parametrize("url", ["s3://", "s3:///prefix", "s3://bucket/p?versionId=1"])
def test_an_s3_url_without_a_bucket_is_refused_naming_the_setting(tmp_path: Path, url: str) -> None:
    with pytest.raises(InvalidInput, match=r"^files_url: .*s3://bucket/prefix"):
        file_store_from_url(settings(tmp_path, files_url=url))


@pytest.mark.parametrize("endpoint", ["localhost:9000", "minio", "ftp://host"])
def test_an_s3_endpoint_must_be_an_http_url(endpoint: str) -> None:
    with pytest.raises(ValidationError, match="s3_endpoint_url"):
        ServiceSettings(s3_endpoint_url=endpoint)
