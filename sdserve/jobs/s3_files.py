"""Files in an S3-compatible bucket (AWS S3, MinIO, R2...), so that every process shares them.

With ``files_url = s3://bucket/prefix`` the API, the embedded worker and every ``sdserve
worker`` on other machines read and write the same objects: a worker's outputs are served
by the API's ``GET /files/{key}``, and an upload reaches a worker through the bucket, never
over HTTP from the API. Files are still proxied through the API (served inert by
:mod:`sdserve.api.files`), never by presigned URLs, which would let the bucket serve a
file with the type its uploader claimed.

Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, instance roles); none goes through sdserve's settings, so none is ever
logged. ``s3_endpoint_url`` points it at an S3-compatible service. boto3 comes with the
``cluster`` extra and is imported only when an ``s3://`` URL is used.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sdserve.errors import (
    FileNotFound,
    InvalidInput,
    SdserveError,
    StorageFull,
    StorageUnavailable,
    UnsupportedDependency,
)
from sdserve.jobs.files import valid_key

log = logging.getLogger(__name__)

CLUSTER_EXTRA = "pip install 'sdserve[cluster]'"

#: Error codes with which S3-compatible services say there is no room (MinIO, Ceph, R2...).
_FULL_CODES = frozenset(
    {"XMinioStorageFull", "StorageFull", "QuotaExceeded", "InsufficientStorage", "507"}
)
#: Error codes of a key that does not exist (``HeadObject`` answers a bare ``404``).
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def parse_s3_url(url: str) -> tuple[str, str]:
    """The bucket and key prefix (``""`` or ending in ``/``) of ``s3://bucket/prefix``."""
    parts = urlsplit(url)
    bucket = parts.netloc
    if parts.scheme != "s3" or not bucket or parts.query or parts.fragment:
        raise InvalidInput("files_url", f"{url!r} is not an s3://bucket/prefix URL")
    prefix = parts.path.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


def _boto3() -> Any:
    """The boto3 module, or an error that says which extra to install."""
    try:
        import boto3
    except ImportError:
        raise UnsupportedDependency(
            f"files_url: s3:// storage needs boto3, which is not installed: {CLUSTER_EXTRA}"
        ) from None
    return boto3


def _client_errors() -> tuple[type[Exception], ...]:
    """What a failed call of a client raises (botocore is imported only for S3 storage)."""
    from botocore.exceptions import BotoCoreError, ClientError

    return (ClientError, BotoCoreError)


def _client(
    endpoint_url: str | None,
    connect_timeout_s: float = 5.0,
    read_timeout_s: float = 60.0,
    max_connections: int = 32,
) -> Any:
    """A boto3 S3 client; thread-safe (a session is not): one per store, for all threads."""
    boto3 = _boto3()
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url,
        config=Config(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=max_connections,
        ),
    )


def check_bucket(client: Any, bucket: str, where: str) -> None:
    """Raise :class:`InvalidInput` naming the setting to fix when ``bucket`` (at ``where``,
    for the message) cannot be reached with ``client``: no credentials, no such bucket,
    access refused, endpoint unreachable."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        client.head_bucket(Bucket=bucket)
    except NoCredentialsError:
        raise InvalidInput(
            "files_url",
            f"no credentials for {where}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment",
        ) from None
    except ClientError as exc:
        code = _code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            message = f"bucket {bucket!r} does not exist at {where}"
            raise InvalidInput("files_url", message) from None
        raise InvalidInput("files_url", f"{where} refused access to the bucket ({code})") from None
    except BotoCoreError as exc:
        raise InvalidInput("s3_endpoint_url", f"cannot reach {where}: {exc}") from None


class S3FileStore:
    """A :class:`~sdserve.jobs.files.FileStore` on one bucket, keys under ``prefix``.

    The content type is the object's ``ContentType``. A missing key is
    :class:`FileNotFound`; a full store is :class:`StorageFull`; any other failure of the
    service (unreachable, refused, throttled) is :class:`StorageUnavailable`, whose message
    names no endpoint or bucket (the log has them).
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 60.0,
        max_connections: int = 32,
    ) -> None:
        self._errors = _client_errors()
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self._client = _client(endpoint_url, connect_timeout_s, read_timeout_s, max_connections)

    @classmethod
    def from_url(cls, url: str, *, endpoint_url: str | None = None) -> S3FileStore:
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix, endpoint_url=endpoint_url)

    def _name(self, key: str) -> str:
        if not valid_key(key):
            raise FileNotFound(f"no file with id {key!r}")
        return self.prefix + key

    def _where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix} at {self.endpoint_url or 'AWS'}"

    def check(self) -> None:
        """Fail at start-up, naming the setting to fix, when the bucket cannot be reached."""
        check_bucket(self._client, self.bucket, self._where())

    def put(self, key: str, data: bytes, content_type: str) -> None:
        name = self._name(key)
        try:
            self._client.put_object(
                Bucket=self.bucket, Key=name, Body=data, ContentType=content_type
            )
        except self._errors as exc:
            raise self._failure(exc, "store", key) from None

    def get(self, key: str) -> tuple[bytes, str]:
        name = self._name(key)
        try:
            reply = self._client.get_object(Bucket=self.bucket, Key=name)
            data: bytes = reply["Body"].read()
        except self._errors as exc:
            raise self._failure(exc, "read", key) from None
        return data, reply.get("ContentType") or "application/octet-stream"

    def delete(self, key: str) -> None:
        name = self._name(key)
        try:
            # S3 answers 204 for a key that is not there: a missing file is not an error
            self._client.delete_object(Bucket=self.bucket, Key=name)
        except self._errors as exc:
            raise self._failure(exc, "delete", key) from None

    def _failure(self, exc: Exception, action: str, key: str) -> SdserveError:
        """The sdserve error an S3 failure is: missing, full or unavailable."""
        code = _code(exc) if hasattr(exc, "response") else type(exc).__name__
        if code in _MISSING_CODES:
            return FileNotFound(f"no file with id {key!r}")
        if code in _FULL_CODES:
            return StorageFull(f"no space left to store {key} ({code})")
        log.warning("cannot %s %s in %s: %s", action, key, self._where(), exc)
        return StorageUnavailable(f"the file storage is unavailable ({code}); try again later")


#: Codes of a conditional write that lost: the key exists (412), or another conditional
#: write of it was in flight (409, AWS asks to retry; the retry then answers 412).
_EXISTS_CODES = frozenset({"PreconditionFailed", "412"})
_RETRY_CODES = frozenset({"ConditionalRequestConflict", "409"})
_OBJECT_KEY = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*$")


class S3Objects:
    """The objects under ``prefix`` of one bucket, by relative key: the shared model
    catalog's edge (:class:`sdserve.training.shared_catalog.Bucket`).

    The catalog keeps its objects under ``<prefix>models/``, a folder file keys (flat,
    random, never containing ``/``) cannot name, so the file store's retention never
    sees them. Failures are :class:`StorageUnavailable` (:class:`StorageFull` for a full
    store); a missing key is ``None`` from :meth:`read` and :class:`FileNotFound` from
    :meth:`download`.
    """

    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str | None = None) -> None:
        self._errors = _client_errors()
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self._client = _client(endpoint_url)

    @classmethod
    def from_url(cls, url: str, folder: str, *, endpoint_url: str | None = None) -> S3Objects:
        """The objects under ``folder`` (``models/``) of the ``s3://bucket/prefix`` URL."""
        bucket, prefix = parse_s3_url(url)
        return cls(bucket, prefix + folder, endpoint_url=endpoint_url)

    def check(self) -> None:
        """Fail at start-up, naming the setting to fix, when the bucket cannot be reached."""
        where = f"s3://{self.bucket}/{self.prefix} at {self.endpoint_url or 'AWS'}"
        check_bucket(self._client, self.bucket, where)

    def _name(self, key: str) -> str:
        if not _OBJECT_KEY.match(key) or ".." in key.split("/"):
            raise InvalidInput("key", f"{key!r} is not an object key of the model catalog")
        return self.prefix + key

    def create(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist (S3's conditional ``If-None-Match: *``,
        atomic on the service); False when it exists, whoever wrote it."""
        name = self._name(key)
        for _attempt in range(3):
            try:
                self._client.put_object(Bucket=self.bucket, Key=name, Body=data, IfNoneMatch="*")
                return True
            except self._errors as exc:
                code = _code(exc)
                if code in _EXISTS_CODES:
                    return False
                if code not in _RETRY_CODES:
                    raise self._failure(exc, "create", key) from None
        raise StorageUnavailable(
            "the model storage kept answering a conflict for a conditional write; try again"
        )

    def write(self, key: str, data: bytes) -> None:
        """Write (or replace) ``key``; a reader sees the old or the new bytes, never a mix."""
        try:
            self._client.put_object(Bucket=self.bucket, Key=self._name(key), Body=data)
        except self._errors as exc:
            raise self._failure(exc, "write", key) from None

    def upload(self, key: str, path: Path) -> None:
        """Write the file at ``path`` as ``key`` (in parts when large)."""
        try:
            self._client.upload_file(str(path), self.bucket, self._name(key))
        except self._errors as exc:
            raise self._failure(exc, "upload", key) from None

    def read(self, key: str) -> bytes | None:
        """The bytes of ``key``; None when it does not exist."""
        try:
            reply = self._client.get_object(Bucket=self.bucket, Key=self._name(key))
            data: bytes = reply["Body"].read()
        except self._errors as exc:
            if _code(exc) in _MISSING_CODES:
                return None
            raise self._failure(exc, "read", key) from None
        return data

    def download(self, key: str, target: Path) -> None:
        """Write the object ``key`` to the file ``target`` (streamed, in parts when large)."""
        try:
            self._client.download_file(self.bucket, self._name(key), str(target))
        except self._errors as exc:
            if _code(exc) in _MISSING_CODES:
                raise FileNotFound(f"no object {key!r} in the model catalog") from None
            raise self._failure(exc, "download", key) from None

    def delete(self, key: str) -> None:
        """Delete ``key`` (nothing happens when it does not exist)."""
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._name(key))
        except self._errors as exc:
            if _code(exc) not in _MISSING_CODES:
                raise self._failure(exc, "delete", key) from None

    def listing(self, folder: str) -> dict[str, str]:
        """Every key under ``folder`` (relative, like the others) and its ETag, which
        changes whenever the object is written."""
        start = self._name(folder.rstrip("/")) + "/"
        found: dict[str, str] = {}
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=start
            )
            for page in pages:
                for item in page.get("Contents", []):
                    found[item["Key"][len(self.prefix) :]] = str(item.get("ETag", ""))
        except self._errors as exc:
            raise self._failure(exc, "list", folder) from None
        return found

    def _failure(self, exc: Exception, action: str, key: str) -> SdserveError:
        code = _code(exc) if hasattr(exc, "response") else type(exc).__name__
        if code in _FULL_CODES:
            return StorageFull(f"no space left to store {key} ({code})")
        log.warning(
            "cannot %s %s in s3://%s/%s at %s: %s",
            action,
            key,
            self.bucket,
            self.prefix,
            self.endpoint_url or "AWS",
            exc,
        )
        return StorageUnavailable(f"the model storage is unavailable ({code}); try again later")


def _code(exc: Any) -> str:
    """The error code of a botocore ``ClientError`` (its HTTP status when it has none)."""
    response = getattr(exc, "response", {}) or {}
    error = response.get("Error", {})
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code") or status or "unknown")
