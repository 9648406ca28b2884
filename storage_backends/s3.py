"""S3 and S3-compatible (DigitalOcean Spaces, MinIO; Cloudflare R2 in ``storage_backends.r2``) backend, on boto3.

Uploads stream the source in parts of ``ARCHIVE_S3_PART_SIZE``: a file shorter than one part
is one ``PutObject``, anything longer a multipart upload with ``ARCHIVE_S3_CONCURRENCY`` parts
in flight; a part is read only when one of them is done, so memory holds at most that many
parts, each once (read straight into its buffer, sent without a copy: a ``bytearray`` body,
which neither ``http.client`` nor botocore copy, unlike ``bytes``; boto3's transfer manager
held ~2x as much for a stream: parts queued beside the ones in flight). If the source or a
part fails, the multipart upload is aborted, so nothing is visible at the key until the
upload completes.

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
import re
import hashlib
import posixpath
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from rtk_archiver.models import ObjectInfo
from rtk_archiver.streams import read_buffer

from .base import KeyTaken, PermanentStorageError, Readable, StorageBackend, StorageError
from .credentials import block_name_for, block_options, block_value, load_block
from .destination import Destination
from .parts import PartUploads
from .registry import REGISTRY

if TYPE_CHECKING:
    from rtk_archiver.settings import Settings

    from .blocks import S3Credentials

PART_SIZE = 8 * 1024 * 1024  # the default of ARCHIVE_S3_PART_SIZE
CONCURRENCY = 3  # the default of ARCHIVE_S3_CONCURRENCY: parts in memory (24 MiB)
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled", "InvalidToken", "ExpiredToken"}


def __getattr__(name: str) -> Any:
    if name == "S3Credentials":  # the block, defined with the others (it imports Prefect)
        from .blocks import S3Credentials

        return S3Credentials
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_loader_lock = threading.Lock()
_loader: object | None = None


def _botocore_session() -> botocore.session.Session:
    """A new botocore session sharing the process's first one's data loader: the S3 service
    model (JSON) is parsed once, not for every client (~12 MiB each; a run opens one backend
    to look at the destination and one per transfer)."""
    global _loader
    session = botocore.session.get_session()
    with _loader_lock:
        if _loader is None:
            _loader = session.get_component("data_loader")
        else:
            session.register_component("data_loader", _loader)
    return session


_clients_lock = threading.Lock()
_clients: dict[tuple, list] = {}  # key -> [client, backends using it]


def _shared_client(key: tuple, make) -> object:
    """One client per distinct configuration in the process, shared by the backends that use
    it (boto3 clients are thread-safe): a client costs ~10 MiB (its endpoint rules, model
    shapes), and a run opens several backends for one destination (the survey, each transfer,
    each transfer's claim keeper)."""
    with _clients_lock:
        entry = _clients.get(key)
        if entry is None:
            entry = _clients[key] = [make(), 0]
        entry[1] += 1
        return entry[0]


def _release_client(key: tuple) -> None:
    with _clients_lock:
        entry = _clients.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _clients[key]
    entry[0].close()


def client_params(destination: Destination, settings: "Settings | None", block: "S3Credentials | None" = None) -> dict[str, Any]:
    """Where and as whom a destination's client connects: endpoint, region and keys (None:
    botocore's own, its standard chain)."""
    return {
        "endpoint_url": endpoint_for(destination, settings, block),
        "region_name": block_value(block, "region_name") or destination.region,
        "aws_access_key_id": block_value(block, "aws_access_key_id"),
        "aws_secret_access_key": block_value(block, "aws_secret_access_key"),
        "aws_session_token": block_value(block, "aws_session_token"),
    }


def s3_client(
    destination: Destination, settings: "Settings | None", config: Config | None, block: "S3Credentials | None" = None,
    params: dict[str, Any] | None = None,
):
    """A boto3 S3 client for destination: ``params`` (``client_params``: the block's keys if it
    has any, else boto3's standard chain; no block, or an empty one = the chain)."""
    params = client_params(destination, settings, block) if params is None else params
    session = boto3.session.Session(
        botocore_session=_botocore_session(),
        region_name=params["region_name"],
        aws_access_key_id=params["aws_access_key_id"],
        aws_secret_access_key=params["aws_secret_access_key"],
        aws_session_token=params["aws_session_token"],
    )
    return session.client("s3", endpoint_url=params["endpoint_url"], config=config)


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


class _Parts:
    """The sha256 of every part sent (one part: a single PutObject), and S3's checksum of the
    whole checked against them."""

    def __init__(self) -> None:
        self.digests: list[bytes] = []
        self.multipart = False

    def add(self, data: bytearray) -> bytes:
        digest = hashlib.sha256(data).digest()
        self.digests.append(digest)
        return digest

    def matches(self, reported: str) -> bool:
        """Whether S3's checksum (hex, "-N" when the server marks a composite) is the one of
        the bytes sent: the file's sha256 for a single PUT (shorter than one part), else the
        composite sha256 of the part digests."""
        digest, _, count = reported.partition("-")
        if not self.multipart:
            return not count and digest == self.digests[0].hex()
        if count and int(count) != len(self.digests):
            return False
        return digest == hashlib.sha256(b"".join(self.digests)).hexdigest()


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


def _etag_md5(head: dict) -> str | None:
    """The object's md5 when its ETag is one: an object stored by one PutObject without KMS or
    customer-key encryption (S3, R2, Spaces, moto). A multipart ETag ("...-N") is not."""
    etag = str(head.get("ETag") or "").strip('"').lower()
    if head.get("ServerSideEncryption") == "aws:kms" or head.get("SSECustomerAlgorithm"):
        return None
    return etag if re.fullmatch(r"[0-9a-f]{32}", etag) else None


def _metadata_value(value: str) -> str:
    """S3 user metadata travels in HTTP headers: ASCII only (anything else percent-encoded)."""
    return quote(value, safe=" !\"#$&'()*+,-./:;<=>?@[]^_`{|}~")


class S3Backend(StorageBackend):
    hash_types = ()  # s3-sha256 is computed in put, per part
    #: the transfer's read-ahead, at most (tasks/transfer.py): with parts in flight, the next
    #: part is downloaded while they are sent; a longer read-ahead only costs memory
    read_ahead_limit_bytes = 2 * 1024 * 1024
    #: the store in messages, its credentials block (a class of ``storage_backends.blocks``)
    #: and where credentials come from without one (S3-compatible stores' subclasses: r2.py)
    store = "S3"
    block_class_name = "S3Credentials"
    credentials_hint = "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or a profile)"

    def client_params(self, settings: "Settings | None", block: Any) -> dict[str, Any]:
        """Endpoint, region and keys of this backend's client (``client_params``)."""
        return client_params(self.destination, settings, block)

    def __init__(self, destination: Destination, settings: "Settings | None" = None) -> None:
        super().__init__(destination)
        block = load_block(self.block_class_name, destination, settings.archive_credential_blocks if settings else False)
        self.destination = destination.with_options(block_options(block), f"block {block_name_for(destination)!r}")
        self.scheme = REGISTRY[destination.kind].schemes[0]
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
        params = self.client_params(settings, block)
        self.endpoint_url: str | None = params["endpoint_url"]
        self._client_key = (*params.values(), self.checksum, stall)
        self.client = _shared_client(self._client_key, lambda: s3_client(self.destination, settings, config, block, params))
        self._closed = False
        # no-clobber at the commit itself (If-None-Match: *), not only the stat before the upload:
        # the object appears only when PutObject / CompleteMultipartUpload succeeds, and S3
        # refuses either with 412 when something is at the key by then (the client is shared:
        # each backend's handler adds it for the keys it is putting without replace, which at
        # worst makes another backend's put of the same key no-clobber too: the safe way)
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
        self.concurrency = settings.archive_s3_concurrency if settings is not None else CONCURRENCY

    def _key(self, key: str) -> str:
        return posixpath.join(self.destination.root, key) if self.destination.root else key

    def _where(self, key: str) -> str:
        return f"{self.scheme}://{self.bucket}/{self._key(key)}"

    def _fail(self, exc: Exception, action: str, key: str) -> StorageError:
        where, store = self._where(key), self.store
        if isinstance(exc, NoCredentialsError):
            return PermanentStorageError(
                f"no {store} credentials for bucket '{self.bucket}': {self.credentials_hint}, or create an "
                f"{self.block_class_name} block named '{block_name_for(self.destination)}'"
            )
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "NoSuchBucket":
                return PermanentStorageError(f"{store} bucket '{self.bucket}' does not exist")
            if code in _DENIED or code == "403":
                return PermanentStorageError(f"access to {store} bucket '{self.bucket}' denied ({code}) while trying to {action} {where}")
            return StorageError(f"{store} {action} of {where} failed: {code or type(exc).__name__}")
        return StorageError(f"{store} {action} of {where} failed: {type(exc).__name__}")

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
        hashes = {"s3-sha256": checksum} if checksum else {}
        if (md5 := _etag_md5(head)) is not None:
            hashes["md5"] = md5
        return ObjectInfo(size=int(head["ContentLength"]), hashes=hashes)

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
            raise KeyTaken(f"{self._where(key)} already exists and was not written by this recording's archive: left untouched")
        extra = dict(self.extra_args)
        if metadata:
            extra["Metadata"] = {k: _metadata_value(v) for k, v in metadata.items()}
        parts = _Parts()
        try:
            self._upload(self._key(key), source, extra, parts)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
                raise KeyTaken(
                    f"{self._where(key)} appeared while uploading and was not written by this "
                    "recording's archive: left untouched"
                ) from None
            raise self._fail(exc, "upload", key) from None
        except BotoCoreError as exc:
            raise self._fail(exc, "upload", key) from None
        info = self.confirm_stored(key, size)
        reported = info.hashes.get("s3-sha256")
        if reported is not None and not parts.matches(reported):
            self.delete(key)  # ours: written just now
            raise StorageError(f"{self._where(key)}: {self.store}'s SHA-256 checksum differs from the bytes sent; removed")
        return info  # without s3-sha256 if the store does not report checksums (some S3-compatibles)

    def _checksum(self, data: bytearray, parts: _Parts) -> dict[str, str]:
        digest = parts.add(data)
        return {"ChecksumSHA256": base64.b64encode(digest).decode()} if self.checksum else {}

    def _upload(self, key: str, source: Readable, extra: dict, parts: _Parts) -> None:
        """One PutObject for a file shorter than a part, else a multipart upload with at most
        ``concurrency`` parts in memory (in flight or being read), aborted on any failure."""
        data = read_buffer(source, self.part_size)
        if len(data) < self.part_size:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **extra, **self._checksum(data, parts))
            return
        parts.multipart = True
        upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **extra)["UploadId"]
        uploads = PartUploads(self.concurrency, "rtk-s3-part")
        try:
            number = 0
            while data:
                number += 1
                args = {"Bucket": self.bucket, "Key": key, "UploadId": upload_id, "PartNumber": number}
                checksum = self._checksum(data, parts)
                # handed over in a box the upload empties: the part is freed when its upload
                # returns, not when the pool drops the call a moment after the result is set
                # (the next part would be read meanwhile: one part more at the peak)
                uploads.submit(self._upload_part, args, [data], checksum)
                del data
                uploads.wait_below()  # a part is read only when one is done
                data = read_buffer(source, self.part_size)
            done = sorted(uploads.finish(), key=lambda part: part["PartNumber"])
            self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": done}
            )
        except BaseException:
            uploads.abandon()
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except (ClientError, BotoCoreError):
                pass  # left to the bucket's lifecycle rule: invisible, never at the key
            raise

    def _upload_part(self, args: dict, box: list[bytearray], checksum: dict[str, str]) -> dict:
        algorithm = {"ChecksumAlgorithm": "SHA256"} if checksum else {}
        data = box.pop()
        try:
            answer = self.client.upload_part(**args, Body=data, **algorithm, **checksum)
        finally:
            del data
        part = {"PartNumber": args["PartNumber"], "ETag": answer["ETag"]}
        if "ChecksumSHA256" in checksum:
            part["ChecksumSHA256"] = answer.get("ChecksumSHA256") or checksum["ChecksumSHA256"]
        return part

    def read_bytes(self, key: str, limit: int = 1 << 20) -> bytes | None:
        obj = self._call("read", key, self.client.get_object, Range=f"bytes=0-{limit - 1}")
        if obj is None:
            return None
        with obj["Body"] as body:
            return body.read(limit)

    def read_chunks(self, key: str, chunk_size: int = 8 << 20) -> Iterator[bytes]:
        obj = self._call("read", key, self.client.get_object)
        if obj is None:
            raise StorageError(f"{self.url(key)} is missing")
        body = obj["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail(exc, "read", key) from None
        finally:
            body.close()

    def delete(self, key: str) -> None:
        self._call("delete", key, self.client.delete_object)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for op in ("PutObject", "CompleteMultipartUpload"):
            self.client.meta.events.unregister(f"before-parameter-build.s3.{op}", self._if_none_match)
        _release_client(self._client_key)

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

