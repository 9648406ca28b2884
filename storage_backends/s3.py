"""S3 and S3-compatible (DigitalOcean Spaces, MinIO, R2) backend, on boto3's transfer manager.

Uploads stream through ``upload_fileobj``: multipart for large files, a bounded number of
parts in memory, and the multipart upload aborted by boto3 if the source or a part fails,
so nothing is visible at the key until the upload completes.

Credentials: a ``S3Credentials`` block named ``rtk-s3-<bucket>`` if one exists, else
boto3's standard chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, profiles, ...).
Endpoint: the block's, else ``ARCHIVE_S3_ENDPOINT_URL`` (or, for ``digitalocean``,
``ARCHIVE_DIGITALOCEAN_ENDPOINT_URL``, default ``https://{region}.digitaloceanspaces.com``),
else botocore's own (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from rtk_archiver.models import ObjectInfo

from .base import KeyTaken, PermanentStorageError, Readable, StorageBackend, StorageError
from .credentials import block_name_for, load_block
from .destination import Destination

if TYPE_CHECKING:
    from rtk_archiver.settings import Settings

PART_SIZE = 8 * 1024 * 1024
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "InvalidToken", "ExpiredToken"}


class S3Credentials(Block):
    """Credentials for one S3 / S3-compatible destination (name it rtk-s3-<bucket>)."""

    _block_type_name = "RTK S3 Credentials"
    _block_type_slug = "rtk-s3-credentials"

    aws_access_key_id: str | None = Field(default=None, description="Access key id.")
    aws_secret_access_key: SecretStr | None = Field(default=None, description="Secret access key.")
    aws_session_token: SecretStr | None = Field(default=None, description="Session token, for temporary credentials.")
    region_name: str | None = Field(default=None, description="Region, if not the recording's.")
    endpoint_url: str | None = Field(default=None, description="Endpoint for S3-compatible stores (MinIO, R2, ...).")


def endpoint_for(destination: Destination, settings: "Settings | None", block: S3Credentials | None = None) -> str | None:
    if destination.endpoint_url:
        return destination.endpoint_url
    if block is not None and block.endpoint_url:
        return block.endpoint_url
    if destination.source_type == "digitalocean":
        if settings is not None and settings.digitalocean_endpoint_url:
            return settings.digitalocean_endpoint_url
        return f"https://{destination.region or 'nyc3'}.digitaloceanspaces.com"
    return settings.s3_endpoint_url if settings is not None else None


class S3Backend(StorageBackend):
    def __init__(self, destination: Destination, settings: "Settings | None" = None) -> None:
        super().__init__(destination)
        block = load_block(S3Credentials, destination, settings.archive_credential_blocks if settings else False)
        kwargs: dict = {}
        if block is not None:
            kwargs = {
                "aws_access_key_id": block.aws_access_key_id,
                "aws_secret_access_key": block.aws_secret_access_key.get_secret_value() if block.aws_secret_access_key else None,
                "aws_session_token": block.aws_session_token.get_secret_value() if block.aws_session_token else None,
            }
        region = (block.region_name if block else None) or destination.region
        session = boto3.session.Session(region_name=region, **kwargs)
        self.bucket = destination.bucket or ""
        self.client = session.client(
            "s3",
            endpoint_url=endpoint_for(destination, settings, block),
            config=Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=15, read_timeout=120),
        )
        self.transfer_config = TransferConfig(multipart_threshold=PART_SIZE, multipart_chunksize=PART_SIZE, max_concurrency=4)
        # s3transfer keeps up to this many parts read from a non-seekable source in memory
        self.transfer_config.max_in_memory_upload_chunks = 4

    def _key(self, key: str) -> str:
        return posixpath.join(self.destination.root, key) if self.destination.root else key

    def _fail(self, exc: Exception, action: str, key: str) -> StorageError:
        where = f"s3://{self.bucket}/{self._key(key)}"
        if isinstance(exc, NoCredentialsError):
            return PermanentStorageError(
                f"no S3 credentials for bucket '{self.bucket}': set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                "(or a profile), or create an S3Credentials block named "
                f"'{block_name_for(self.destination)}'"
            )
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                return PermanentStorageError(f"S3 bucket '{self.bucket}' does not exist")
            if code in _DENIED or code == "403":
                return PermanentStorageError(f"access to S3 bucket '{self.bucket}' denied ({code}) while trying to {action} {where}")
            return StorageError(f"S3 {action} of {where} failed: {code or type(exc).__name__}")
        return StorageError(f"S3 {action} of {where} failed: {type(exc).__name__}")

    def _call(self, action: str, key: str, fn, **kwargs):
        """One S3 call on key; None when the object does not exist, errors mapped."""
        try:
            return fn(Bucket=self.bucket, Key=self._key(key), **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._fail(exc, action, key) from None
        except BotoCoreError as exc:
            raise self._fail(exc, action, key) from None

    def stat(self, key: str) -> ObjectInfo | None:
        head = self._call("stat", key, self.client.head_object)
        return None if head is None else ObjectInfo(size=int(head["ContentLength"]))

    def put(self, key: str, source: Readable, size: int | None, *, replace: bool = False) -> ObjectInfo:
        if not replace and self.stat(key) is not None:
            raise KeyTaken(f"s3://{self.bucket}/{self._key(key)} already exists and was not written by this recording's archive: left untouched")
        try:
            self.client.upload_fileobj(source, self.bucket, self._key(key), Config=self.transfer_config)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "upload", key) from None
        except Exception as exc:
            # s3transfer wraps errors raised by the source; surface the original one
            cause = exc.__cause__ or exc.__context__
            if type(exc).__module__.startswith("s3transfer") and cause is not None:
                raise cause from None
            raise
        return self.confirm_stored(key, size)

    def read_bytes(self, key: str, limit: int = 1 << 20) -> bytes | None:
        obj = self._call("read", key, self.client.get_object, Range=f"bytes=0-{limit - 1}")
        if obj is None:
            return None
        with obj["Body"] as body:
            return body.read(limit)

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object)

    def close(self) -> None:
        self.client.close()

    def list(self, prefix: str = "") -> Iterator[tuple[str, ObjectInfo]]:
        """Objects under ``prefix``, a page (1,000 keys) at a time, in key order. The listing
        gives sizes only (no checksum values)."""
        base = f"{self.destination.root}/" if self.destination.root else ""
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix):
                for obj in page.get("Contents", []):
                    key = obj["Key"][len(base):]
                    if key and not key.endswith("/") and ".rtkpart-" not in posixpath.basename(key):
                        yield key, ObjectInfo(size=int(obj["Size"]))
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "list", prefix) from None

