"""Google Cloud Storage backend, on google-cloud-storage's resumable uploads.

``upload_from_file`` with a ``chunk_size`` streams the source in chunks through a resumable
upload session; the object only exists once the last chunk is accepted, so a failed upload
leaves nothing at the key. GCS reports crc32c for every object (and md5 for most); crc32c is
computed while streaming and compared with what GCS stored (md5 is not: ~1.4 s of CPU per GiB
on the benchmark machine, 30x crc32c; sha256 of the whole file goes in the sidecar, as everywhere).

Credentials (``gcs_client``): a ``GCSCredentials`` block (``storage_backends.blocks``) named
``rtk-gcs-<bucket>`` if one exists, else Google's application default credentials; with
``STORAGE_EMULATOR_HOST`` set (tests, local emulators) anonymous credentials are used.

Storage options (URL query or the block's fields): ``storage_class``, ``kms_key_name``;
object metadata names the recording and meeting (``put(metadata=...)``). An upload that makes
no progress for ``ARCHIVE_UPLOAD_STALL_SECONDS`` fails (the requests' read timeout).
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import storage

from rtk_archiver.models import ObjectInfo

from .base import KeyTaken, PermanentStorageError, Readable, StorageBackend, StorageError, ranged_chunks
from .credentials import block_name_for, block_options, block_value, load_block
from .destination import Destination

if TYPE_CHECKING:
    from rtk_archiver.settings import Settings

    from .blocks import GCSCredentials

# a multiple of 256 KiB, as resumable uploads require; one chunk is held in memory while it is
# sent. 16 MiB, rclone's default: each chunk costs a round trip (measured in BENCHMARKS.md)
CHUNK_SIZE = 16 * 1024 * 1024  # the default of ARCHIVE_GCS_CHUNK_SIZE


def __getattr__(name: str) -> Any:
    if name == "GCSCredentials":  # the block, defined with the others (it imports Prefect)
        from .blocks import GCSCredentials

        return GCSCredentials
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def gcs_client(block: "GCSCredentials | None" = None) -> storage.Client:
    """A storage client: the block's service account, else (no block, or an empty one)
    anonymous credentials for an emulator (STORAGE_EMULATOR_HOST), else application default
    credentials."""
    info_text, project = block_value(block, "service_account_info"), block_value(block, "project")
    if info_text is not None:
        info = json.loads(info_text)
        return storage.Client.from_service_account_info(info, project=project or info.get("project_id"))
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "local"), credentials=AnonymousCredentials())
    return storage.Client(project=project)


def _forget_sent_body(response, *args, **kwargs):
    """A requests response hook: drop the request body a response keeps (``response.request``).
    The resumable upload keeps each chunk's response while it reads and sends the next chunk:
    without this, two chunks (32 MiB) are held instead of one."""
    request = getattr(response, "request", None)
    if request is not None:
        request.body = None
    return response


def _hex(b64: str | None) -> str | None:
    return base64.b64decode(b64).hex() if b64 else None


class GCSBackend(StorageBackend):
    hash_types = ("crc32c",)
    read_ahead_bytes = CHUNK_SIZE // 2

    def __init__(self, destination: Destination, settings: "Settings | None" = None) -> None:
        super().__init__(destination)
        block = load_block("GCSCredentials", destination, settings.archive_credential_blocks if settings else False)
        self.destination = destination.with_options(block_options(block), f"block {block_name_for(destination)!r}")
        stall = settings.archive_upload_stall_seconds if settings is not None else 120.0
        self.timeout = (min(15.0, stall), stall)  # (connect, read): a stalled upload fails
        self.chunk_size = settings.archive_gcs_chunk_size if settings is not None else CHUNK_SIZE
        # the download runs up to half a chunk ahead while a chunk is sent (memory: the chunk
        # being sent + this; a whole chunk ahead cost 8 MiB more, at the 120 MiB budget)
        self.read_ahead_bytes = self.chunk_size // 2
        try:
            self.client = gcs_client(block)
        except (DefaultCredentialsError, ValueError) as exc:
            raise PermanentStorageError(
                f"no GCS credentials for bucket '{destination.bucket}': set up application default credentials "
                f"(GOOGLE_APPLICATION_CREDENTIALS) or create a GCSCredentials block named '{block_name_for(destination)}'"
                f" ({type(exc).__name__})"
            ) from None
        self.bucket = self.client.bucket(destination.bucket)
        hooks = getattr(self.client._http, "hooks", None)  # a requests session (AuthorizedSession)
        if hooks is not None and _forget_sent_body not in hooks.setdefault("response", []):
            hooks["response"].append(_forget_sent_body)

    def _key(self, key: str) -> str:
        return posixpath.join(self.destination.root, key) if self.destination.root else key

    def _fail(self, exc: Exception, action: str, key: str) -> StorageError:
        where = f"gs://{self.destination.bucket}/{self._key(key)}"
        if isinstance(exc, gexc.NotFound):
            return PermanentStorageError(f"GCS bucket '{self.destination.bucket}' does not exist")
        if isinstance(exc, (gexc.Forbidden, gexc.Unauthorized)):
            return PermanentStorageError(f"access to GCS bucket '{self.destination.bucket}' denied while trying to {action} {where}")
        return StorageError(f"GCS {action} of {where} failed: {type(exc).__name__}")

    def _info(self, blob: storage.Blob) -> ObjectInfo:
        hashes = {"crc32c": v} if (v := _hex(blob.crc32c)) else {}
        if md5 := _hex(blob.md5_hash):  # absent for composed objects
            hashes["md5"] = md5
        return ObjectInfo(size=int(blob.size or 0), hashes=hashes)

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            blob = self.bucket.get_blob(self._key(key))
        except gexc.NotFound:
            return None
        except gexc.GoogleAPIError as exc:
            raise self._fail(exc, "stat", key) from None
        return None if blob is None else self._info(blob)

    def blob_info(self, key: str) -> storage.Blob | None:
        """The object's resource (storage class, KMS key, metadata): for ``check``."""
        return self.bucket.get_blob(self._key(key))

    def put(
        self, key: str, source: Readable, size: int | None, *, replace: bool = False, metadata: dict[str, str] | None = None
    ) -> ObjectInfo:
        options = self.destination.options
        blob = self.bucket.blob(self._key(key), chunk_size=self.chunk_size, kms_key_name=options.get("kms_key_name"))
        if "storage_class" in options:
            blob.storage_class = options["storage_class"]
        if metadata:
            blob.metadata = dict(metadata)
        if not replace and self.stat(key) is not None:
            raise KeyTaken(f"gs://{self.destination.bucket}/{self._key(key)} already exists and was not written by this recording's archive: left untouched")
        # no-clobber at the commit itself: generation 0 = "only if there is no object yet"
        precondition = {} if replace else {"if_generation_match": 0}
        try:
            blob.upload_from_file(source, size=size, rewind=False, checksum=None, timeout=self.timeout, **precondition)
        except gexc.PreconditionFailed:
            raise KeyTaken(
                f"gs://{self.destination.bucket}/{self._key(key)} appeared while uploading and was not written by this "
                "recording's archive: left untouched"
            ) from None
        except gexc.GoogleAPIError as exc:
            raise self._fail(exc, "upload", key) from None
        return self.confirm_stored(key, size)

    def read_bytes(self, key: str, limit: int = 1 << 20) -> bytes | None:
        try:
            return self.bucket.blob(self._key(key)).download_as_bytes(start=0, end=limit - 1)
        except gexc.NotFound:
            return None
        except gexc.RequestRangeNotSatisfiable:
            return b""
        except gexc.GoogleAPIError as exc:
            raise self._fail(exc, "read", key) from None

    def read_chunks(self, key: str, chunk_size: int = 8 << 20) -> Iterator[bytes]:
        """Ranged reads of one generation (a blob replaced meanwhile fails, not mixes)."""
        try:
            blob = self.bucket.get_blob(self._key(key))
        except gexc.GoogleAPIError as exc:
            raise self._fail(exc, "read", key) from None
        if blob is None:
            raise StorageError(f"{self.url(key)} is missing")
        def fetch(start: int, length: int) -> bytes:
            return blob.download_as_bytes(start=start, end=start + length - 1, if_generation_match=blob.generation)

        try:
            yield from ranged_chunks(fetch, int(blob.size or 0), chunk_size, self.url(key))
        except gexc.GoogleAPIError as exc:
            raise self._fail(exc, "read", key) from None

    def delete(self, key: str) -> None:
        try:
            self.bucket.blob(self._key(key)).delete()
        except gexc.NotFound:
            pass
        except gexc.GoogleAPIError as exc:
            raise self._fail(exc, "delete", key) from None

    def close(self) -> None:
        self.client.close()

    def list(self, prefix: str = "") -> Iterator[tuple[str, ObjectInfo]]:
        """Objects under ``prefix``, a page at a time, in key order, with their crc32c."""
        base = f"{self.destination.root}/" if self.destination.root else ""
        try:
            for blob in self.client.list_blobs(self.bucket, prefix=base + prefix):
                key = blob.name[len(base):]
                if key and not key.endswith("/") and ".rtkpart-" not in posixpath.basename(key):
                    yield key, self._info(blob)
        except gexc.GoogleAPIError as exc:
            raise self._fail(exc, "list", prefix) from None
