"""Google Cloud Storage backend, on google-cloud-storage's resumable uploads.

``upload_from_file`` with a ``chunk_size`` streams the source in chunks through a resumable
upload session; the object only exists once the last chunk is accepted, so a failed upload
leaves nothing at the key. GCS reports crc32c for every object (and md5 for most); crc32c is
computed while streaming and compared with what GCS stored (md5 is not: ~1.4 s of CPU per GiB
on the benchmark machine, 30x crc32c; sha256 of the whole file goes in the sidecar, as everywhere).

Credentials: a ``GCSCredentials`` block named ``rtk-gcs-<bucket>`` if one exists, else
Google's application default credentials; with ``STORAGE_EMULATOR_HOST`` set (tests, local
emulators) anonymous credentials are used.
"""

from __future__ import annotations

import base64
import json
import os
import posixpath
from collections.abc import Iterator
from typing import TYPE_CHECKING

from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import storage
from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from rtk_archiver.models import ObjectInfo

from .base import KeyTaken, PermanentStorageError, Readable, StorageBackend, StorageError
from .credentials import block_name_for, load_block
from .destination import Destination

if TYPE_CHECKING:
    from rtk_archiver.settings import Settings

# a multiple of 256 KiB, as resumable uploads require; one chunk is held in memory while it is
# sent. 16 MiB, rclone's default: each chunk costs a round trip (measured in BENCHMARKS.md)
CHUNK_SIZE = 16 * 1024 * 1024


class GCSCredentials(Block):
    """Credentials for one GCS destination (name it rtk-gcs-<bucket>)."""

    _block_type_name = "RTK GCS Credentials"
    _block_type_slug = "rtk-gcs-credentials"

    service_account_info: SecretStr | None = Field(default=None, description="Service account key (JSON text).")
    project: str | None = Field(default=None, description="Project id, if not the key's.")


def _hex(b64: str | None) -> str | None:
    return base64.b64decode(b64).hex() if b64 else None


class GCSBackend(StorageBackend):
    hash_types = ("crc32c",)
    read_ahead_bytes = CHUNK_SIZE

    def __init__(self, destination: Destination, settings: "Settings | None" = None) -> None:
        super().__init__(destination)
        block = load_block(GCSCredentials, destination, settings.archive_credential_blocks if settings else False)
        try:
            if block is not None and block.service_account_info is not None:
                info = json.loads(block.service_account_info.get_secret_value())
                self.client = storage.Client.from_service_account_info(info, project=block.project or info.get("project_id"))
            elif os.environ.get("STORAGE_EMULATOR_HOST"):
                self.client = storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "local"), credentials=AnonymousCredentials())
            else:
                self.client = storage.Client(project=block.project if block else None)
        except (DefaultCredentialsError, ValueError) as exc:
            raise PermanentStorageError(
                f"no GCS credentials for bucket '{destination.bucket}': set up application default credentials "
                f"(GOOGLE_APPLICATION_CREDENTIALS) or create a GCSCredentials block named '{block_name_for(destination)}'"
                f" ({type(exc).__name__})"
            ) from None
        self.bucket = self.client.bucket(destination.bucket)

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
        return ObjectInfo(size=int(blob.size or 0), hashes=hashes)

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            blob = self.bucket.get_blob(self._key(key))
        except gexc.NotFound:
            return None
        except gexc.GoogleAPIError as exc:
            raise self._fail(exc, "stat", key) from None
        return None if blob is None else self._info(blob)

    def put(self, key: str, source: Readable, size: int | None, *, replace: bool = False) -> ObjectInfo:
        blob = self.bucket.blob(self._key(key), chunk_size=CHUNK_SIZE)
        if not replace and self.stat(key) is not None:
            raise KeyTaken(f"gs://{self.destination.bucket}/{self._key(key)} already exists and was not written by this recording's archive: left untouched")
        try:
            blob.upload_from_file(source, size=size, rewind=False, checksum=None)
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
