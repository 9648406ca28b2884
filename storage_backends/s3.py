"""S3 and S3-compatible (DigitalOcean Spaces, MinIO, R2) backend, on boto3's transfer manager.

Uploads stream through ``upload_fileobj``: multipart for large files, a bounded number of
parts in memory, and the multipart upload aborted by boto3 if the source or a part fails,
so nothing is visible at the key until the upload completes.

Checksums: every upload carries S3's own SHA-256 (``ChecksumAlgorithm=SHA256``): the server
checks every part against it, and ``stat`` (``HeadObject`` with ``ChecksumMode=ENABLED``)
returns it. ``put`` hashes each part as it reads it (it owns the part size) and compares
with what S3 reports: the file's sha256 for a single PUT, the composite
``sha256(part digests) + "-N"`` for a multipart upload. It is reported (hex, with the
``-N`` suffix of a composite) as the hash ``s3-sha256``, recorded in the sidecar and checked
again by "already archived". ``checksum=off`` (URL option / block field) leaves it out, for
S3-compatible stores that lack it.

Storage options (URL query or the block's fields): ``sse`` (AES256, aws:kms), ``kms_key_id``,
``storage_class``; object metadata names the recording and meeting (``put(metadata=...)``).

Credentials: a ``S3Credentials`` block (``storage_backends.blocks``) named ``rtk-s3-<bucket>`` if one exists, else
boto3's standard chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``, profiles, ...).
Endpoint: the block's, else ``ARCHIVE_S3_ENDPOINT_URL`` (or, for ``digitalocean``,
``ARCHIVE_DIGITALOCEAN_ENDPOINT_URL``, default ``https://{region}.digitaloceanspaces.com``),
else botocore's own (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from rtk_archiver.models import ObjectInfo

from .base import KeyTaken, PermanentStorageError, Readable, StorageBackend, StorageError
from .credentials import block_name_for, block_options, block_value, load_block
from .destination import Destination

if TYPE_CHECKING:
    from rtk_archiver.settings import Settings

    from .blocks import S3Credentials

PART_SIZE = 8 * 1024 * 1024  # the default of ARCHIVE_S3_PART_SIZE
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "InvalidToken", "ExpiredToken"}


def __getattr__(name: str) -> Any:
    if name == "S3Credentials":  # the block, defined with the others (it imports Prefect)
        from .blocks import S3Credentials

        return S3Credentials
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def s3_client(destination: Destination, settings: "Settings | None", config: Config | None, block: "S3Credentials | None" = None):
    """A boto3 S3 client for destination: the block's keys if it has any, else boto3's
    standard chain (no block, or an empty one = the chain)."""
    session = boto3.session.Session(
        region_name=block_value(block, "region_name") or destination.region,
        aws_access_key_id=block_value(block, "aws_access_key_id"),
        aws_secret_access_key=block_value(block, "aws_secret_access_key"),
        aws_session_token=block_value(block, "aws_session_token"),
    )
    return session.client("s3", endpoint_url=endpoint_for(destination, settings, block), config=config)


def endpoint_for(destination: Destination, settings: "Settings | None", block: "S3Credentials | None" = None) -> str | None:
    if destination.endpoint_url:
        return destination.endpoint_url
    if block_value(block, "endpoint_url"):
        return block_value(block, "endpoint_url")
    if destination.source_type == "digitalocean":
        if settings is not None and settings.digitalocean_endpoint_url:
            return settings.digitalocean_endpoint_url
        return f"https://{destination.region or 'nyc3'}.digitaloceanspaces.com"
    return settings.s3_endpoint_url if settings is not None else None


class _PartHasher:
    """Reads through to ``source`` and keeps the sha256 of every ``part_size`` slice of the
    stream: the parts s3transfer uploads (its parts are ``part_size`` bytes, the last shorter)."""

    def __init__(self, source: Readable, part_size: int) -> None:
        self.source, self.part_size = source, part_size
        self.parts: list[bytes] = []
        self._h = hashlib.sha256()
        self._filled = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        view, pos = memoryview(data), 0
        while pos < len(data):
            take = min(len(data) - pos, self.part_size - self._filled)
            self._h.update(view[pos : pos + take])
            pos += take
            self._filled += take
            if self._filled == self.part_size:
                self.parts.append(self._h.digest())
                self._h, self._filled = hashlib.sha256(), 0
        return data

    def matches(self, reported: str) -> bool:
        """Whether S3's checksum (hex, "-N" when the server marks a composite) is the one of
        the bytes read: the file's sha256 for a single PUT (shorter than one part), else the
        composite sha256 of the part digests (s3transfer uploads anything from one part size
        on in parts)."""
        parts = self.parts + ([self._h.digest()] if self._filled or not self.parts else [])
        digest, _, count = reported.partition("-")
        if not self.parts:  # shorter than one part: a single PutObject
            return not count and digest == parts[0].hex()
        if count and int(count) != len(parts):
            return False
        return digest == hashlib.sha256(b"".join(parts)).hexdigest()


def _s3_hex(value: str | None) -> str | None:
    """S3's base64 checksum ("...=" or "...=-N") as hex ("..." or "...-N")."""
    if not value:
        return None
    digest, _, count = value.partition("-")
    try:
        hexed = base64.b64decode(digest).hex()
    except ValueError:
        return None
    return f"{hexed}-{count}" if count else hexed


def _metadata_value(value: str) -> str:
    """S3 user metadata travels in HTTP headers: ASCII only (anything else percent-encoded)."""
    return quote(value, safe=" !\"#$&'()*+,-./:;<=>?@[]^_`{|}~")


class S3Backend(StorageBackend):
    hash_types = ()  # s3-sha256 is computed in put, per part

    def __init__(self, destination: Destination, settings: "Settings | None" = None) -> None:
        super().__init__(destination)
        block = load_block("S3Credentials", destination, settings.archive_credential_blocks if settings else False)
        self.destination = destination.with_options(block_options(block), f"block {block_name_for(destination)!r}")
        stall = settings.archive_upload_stall_seconds if settings is not None else 120.0
        self.bucket = destination.bucket or ""
        # an upload (or any call) that makes no progress for `stall` seconds fails
        options = self.destination.options
        self.checksum = options.get("checksum", "SHA256") != "off"
        # checksum=off: no checksum headers at all (botocore adds CRC32s by default), for
        # S3-compatible stores that refuse them
        when = {} if self.checksum else {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required"}
        config = Config(
            retries={"mode": "standard", "max_attempts": 5}, connect_timeout=min(15.0, stall), read_timeout=stall, **when
        )
        self.client = s3_client(destination, settings, config, block)
        # no-clobber at the commit itself (If-None-Match: *), not only the stat before the upload:
        # the object appears only when PutObject / CompleteMultipartUpload succeeds, and S3
        # refuses either with 412 when something is at the key by then
        self._no_clobber: set[str] = set()
        for op in ("PutObject", "CompleteMultipartUpload"):
            self.client.meta.events.register(f"before-parameter-build.s3.{op}", self._if_none_match)
        self.extra_args: dict[str, str] = {}
        if self.checksum:
            self.extra_args["ChecksumAlgorithm"] = "SHA256"
        if "sse" in options:
            self.extra_args["ServerSideEncryption"] = options["sse"]
        if "kms_key_id" in options:
            self.extra_args["SSEKMSKeyId"] = options["kms_key_id"]
        if "storage_class" in options:
            self.extra_args["StorageClass"] = options["storage_class"]
        # part size and parts in flight: ARCHIVE_S3_PART_SIZE, ARCHIVE_S3_CONCURRENCY
        self.part_size = settings.archive_s3_part_size if settings is not None else PART_SIZE
        concurrency = settings.archive_s3_concurrency if settings is not None else 4
        self.transfer_config = TransferConfig(
            multipart_threshold=self.part_size, multipart_chunksize=self.part_size, max_concurrency=concurrency
        )
        # s3transfer keeps up to this many parts read from a non-seekable source in memory
        self.transfer_config.max_in_memory_upload_chunks = concurrency

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
        head = self._call("stat", key, self.client.head_object, ChecksumMode="ENABLED")
        if head is None:
            return None
        checksum = _s3_hex(head.get("ChecksumSHA256"))
        return ObjectInfo(size=int(head["ContentLength"]), hashes={"s3-sha256": checksum} if checksum else {})

    def head(self, key: str) -> dict | None:
        """The raw HeadObject answer (storage class, encryption, metadata): for ``check``."""
        return self._call("stat", key, self.client.head_object, ChecksumMode="ENABLED")

    def _if_none_match(self, params: dict, **kwargs) -> None:
        if params.get("Key") in self._no_clobber:
            params["IfNoneMatch"] = "*"

    def put(
        self, key: str, source: Readable, size: int | None, *, replace: bool = False, metadata: dict[str, str] | None = None
    ) -> ObjectInfo:
        if not replace:
            self._no_clobber.add(self._key(key))
            try:
                return self._put(key, source, size, replace=False, metadata=metadata)
            finally:
                self._no_clobber.discard(self._key(key))
        return self._put(key, source, size, replace=True, metadata=metadata)

    def _put(self, key: str, source: Readable, size: int | None, *, replace: bool, metadata: dict[str, str] | None) -> ObjectInfo:
        if not replace and self.stat(key) is not None:
            raise KeyTaken(f"s3://{self.bucket}/{self._key(key)} already exists and was not written by this recording's archive: left untouched")
        extra = dict(self.extra_args)
        if metadata:
            extra["Metadata"] = {k: _metadata_value(v) for k, v in metadata.items()}
        hasher = _PartHasher(source, self.part_size)
        try:
            self.client.upload_fileobj(hasher, self.bucket, self._key(key), ExtraArgs=extra, Config=self.transfer_config)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                raise KeyTaken(
                    f"s3://{self.bucket}/{self._key(key)} appeared while uploading and was not written by this "
                    "recording's archive: left untouched"
                ) from None
            raise self._fail(exc, "upload", key) from None
        except BotoCoreError as exc:
            raise self._fail(exc, "upload", key) from None
        except Exception as exc:
            # s3transfer wraps errors raised by the source; surface the original one
            cause = exc.__cause__ or exc.__context__
            if type(exc).__module__.startswith("s3transfer") and cause is not None:
                raise cause from None
            raise
        info = self.confirm_stored(key, size)
        reported = info.hashes.get("s3-sha256")
        if reported is not None and not hasher.matches(reported):
            self.delete(key)  # ours: written just now
            raise StorageError(
                f"s3://{self.bucket}/{self._key(key)}: S3's SHA-256 checksum differs from the bytes sent; removed"
            )
        return info  # without s3-sha256 if the store does not report checksums (some S3-compatibles)

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

