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
        boto3 = _boto3()
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        #: what a failed call of the client raises (botocore is imported only here)
        self._errors: tuple[type[Exception], ...] = (ClientError, BotoCoreError)
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        # a client is thread-safe (a session is not): one per store, shared by all threads
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            config=Config(
                connect_timeout=connect_timeout_s,
                read_timeout=read_timeout_s,
                retries={"max_attempts": 3, "mode": "standard"},
                max_pool_connections=max_connections,
            ),
        )

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
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            self._client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise InvalidInput(
                "files_url",
                f"no credentials for {self._where()}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment",
            ) from None
        except ClientError as exc:
            code = _code(exc)
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise InvalidInput(
                    "files_url", f"bucket {self.bucket!r} does not exist at {self._where()}"
                ) from None
            raise InvalidInput(
                "files_url", f"{self._where()} refused access to the bucket ({code})"
            ) from None
        except BotoCoreError as exc:
            raise InvalidInput("s3_endpoint_url", f"cannot reach {self._where()}: {exc}") from None

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


def _code(exc: Any) -> str:
    """The error code of a botocore ``ClientError`` (its HTTP status when it has none)."""
    response = getattr(exc, "response", {}) or {}
    error = response.get("Error", {})
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code") or status or "unknown")
