"""Azure Blob Storage backend, on azure-storage-blob's block blobs.

``put`` reads the source one block (8 MiB) at a time and stages it (``Put Block``) with its
MD5 (``validate_content``: the service checks every block), a few blocks in flight at once,
then commits them with one ``Put Block List``. Staged blocks are invisible: nothing is at the
final name before the commit, and an interrupted upload leaves only uncommitted blocks, which
the service discards (after a week) and nobody can read. No-clobber: without ``replace`` the
commit carries ``If-None-Match: *``, so a blob that appeared meanwhile is never overwritten
(``KeyTaken``). The whole file's MD5, computed while streaming, is set as the blob's
Content-MD5: ``stat`` reports it (``md5``), the sidecar records it, "already archived"
compares it.

Credentials (``azure_service_client``), in order: a block (``storage_backends.blocks``) named
``rtk-azure-<container>``; else the environment: ``AZURE_STORAGE_CONNECTION_STRING`` (also how
an emulator such as Azurite is reached), or ``AZURE_STORAGE_ACCOUNT_URL`` (or
``AZURE_STORAGE_ACCOUNT``, the account name) with ``AZURE_STORAGE_KEY`` or
``AZURE_STORAGE_SAS_TOKEN``; else ``DefaultAzureCredential`` when ``azure-identity`` is
installed (managed identity, workload identity, ``az login``).

Metadata names become C# identifiers, as Azure requires (``rtk-recording-id`` ->
``rtk_recording_id``). Storage options: ``access_tier`` (Hot, Cool, Cold; not Archive, whose blobs cannot be read
back without a rehydration: sidecars must stay readable); object metadata names the
recording and meeting.
"""

from __future__ import annotations

import base64
import hashlib
import os
import posixpath
import re
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobServiceClient, ContentSettings, StandardBlobTier

from rtk_archiver.models import ObjectInfo

from .base import KeyTaken, PermanentStorageError, Readable, StorageBackend, StorageError, ranged_chunks
from .credentials import block_name_for, block_options, block_value, load_block
from .destination import Destination
from .parts import PartUploads
from .tempnames import is_temp_name

if TYPE_CHECKING:
    from rtk_archiver.settings import Settings

    from .blocks import AzureCredentials

#: bytes per staged block (at most 50,000 blocks per blob: 390 GiB)
BLOCK_SIZE = 8 * 1024 * 1024
#: blocks in memory at once: being staged, or (one of them) being read
MAX_IN_FLIGHT = 4
_DENIED_CODES = {"AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch", "InsufficientAccountPermissions"}


class NoAzureCredentials(PermanentStorageError):
    pass


def __getattr__(name: str) -> Any:
    if name == "AzureCredentials":  # the block, defined with the others (it imports Prefect)
        from .blocks import AzureCredentials

        return AzureCredentials
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def azure_service_client(
    block: "AzureCredentials | None" = None, connection_timeout: float = 20.0, read_timeout: float = 120.0
) -> BlobServiceClient:
    """A BlobServiceClient from the block's fields, else the environment, else
    DefaultAzureCredential (NoAzureCredentials when there is nothing to use)."""
    timeouts = {"connection_timeout": connection_timeout, "read_timeout": read_timeout}
    conn = block_value(block, "connection_string")
    url, key = block_value(block, "account_url"), block_value(block, "account_key")
    sas = block_value(block, "sas_token")
    if not (conn or url):
        conn = os.environ.get("AZURE_STORAGE_CONNECTION_STRING") or None
        account = os.environ.get("AZURE_STORAGE_ACCOUNT")
        url = os.environ.get("AZURE_STORAGE_ACCOUNT_URL") or (f"https://{account}.blob.core.windows.net" if account else None)
        key = key or os.environ.get("AZURE_STORAGE_KEY") or None
        sas = sas or os.environ.get("AZURE_STORAGE_SAS_TOKEN") or None
    if conn:
        try:
            return BlobServiceClient.from_connection_string(conn, **timeouts)
        except ValueError:
            raise NoAzureCredentials("the Azure connection string is not valid (its text is not shown)") from None
    if not url:
        raise NoAzureCredentials("no Azure storage account")
    credential: object
    if key:
        account_name = url.split("//", 1)[-1].split(".", 1)[0]
        credential = {"account_name": account_name, "account_key": key}
    elif sas:
        credential = sas.lstrip("?")
    else:
        try:
            from azure.identity import DefaultAzureCredential
        except ImportError:
            raise NoAzureCredentials(f"no key or SAS token for {url} (and azure-identity is not installed)") from None
        credential = DefaultAzureCredential()
    return BlobServiceClient(account_url=url, credential=credential, **timeouts)


def azure_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """Azure metadata names are C# identifiers ('rtk-recording-id' -> 'rtk_recording_id') and
    values travel in HTTP headers (ASCII only: anything else percent-encoded)."""
    out = {}
    for name, value in metadata.items():
        key = re.sub(r"[^A-Za-z0-9_]", "_", name)
        out["_" + key if key[:1].isdigit() else key] = quote(value, safe=" !\"#$&'()*+,-./:;<=>?@[]^_`{|}~")
    return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class AzureBackend(StorageBackend):
    #: the transfer's read-ahead, at most (tasks/transfer.py): with blocks in flight, the next
    #: block is downloaded while they are staged; a longer read-ahead only costs memory
    read_ahead_limit_bytes = 2 * 1024 * 1024

    def __init__(self, destination: Destination, settings: "Settings | None" = None) -> None:
        super().__init__(destination)
        block = load_block("AzureCredentials", destination, settings.archive_credential_blocks if settings else False)
        self.destination = destination.with_options(block_options(block), f"block {block_name_for(destination)!r}")
        stall = settings.archive_upload_stall_seconds if settings is not None else 120.0
        try:
            self.client = azure_service_client(block, min(20.0, stall), stall)
        except NoAzureCredentials as exc:
            raise NoAzureCredentials(
                f"no Azure credentials for container '{destination.bucket}' ({exc}): set AZURE_STORAGE_CONNECTION_STRING "
                "(or AZURE_STORAGE_ACCOUNT_URL with AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN), install azure-identity "
                f"for DefaultAzureCredential, or create an AzureCredentials block named '{block_name_for(destination)}'"
            ) from None
        self.container = self.client.get_container_client(destination.bucket or "")
        # ARCHIVE_AZURE_BLOCK_SIZE, ARCHIVE_AZURE_CONCURRENCY
        self.block_size = settings.archive_azure_block_size if settings is not None else BLOCK_SIZE
        self.in_flight = settings.archive_azure_concurrency if settings is not None else MAX_IN_FLIGHT
        tier = self.destination.options.get("access_tier")
        self.tier = StandardBlobTier(tier) if tier else None

    def _key(self, key: str) -> str:
        return posixpath.join(self.destination.root, key) if self.destination.root else key

    def _where(self, key: str) -> str:
        return f"az://{self.destination.bucket}/{self._key(key)}"

    def _fail(self, exc: Exception, action: str, key: str) -> StorageError:
        container = self.destination.bucket
        code = getattr(exc, "error_code", None) or ""
        if code == "ContainerNotFound":
            return PermanentStorageError(f"Azure container '{container}' does not exist")
        status = getattr(exc, "status_code", None)
        if code == "AuthenticationFailed" or "failed to authenticate" in str(exc).lower():
            # the request's signature: a wrong account key, or a SAS that is wrong or expired
            # (Azure says AuthenticationFailed; Azurite AuthorizationFailure with the same message)
            return PermanentStorageError(
                f"Azure did not accept the credentials for container '{container}' ({code or status}): the account "
                f"key or SAS is wrong or expired (while trying to {action} {self._where(key)})"
            )
        if isinstance(exc, ClientAuthenticationError) or code in _DENIED_CODES or status == 403:
            return PermanentStorageError(
                f"access to Azure container '{container}' denied ({code or status or type(exc).__name__}) "
                f"while trying to {action} {self._where(key)}"
            )
        if isinstance(exc, (ServiceRequestError, ServiceResponseError)):
            return StorageError(f"Azure {action} of {self._where(key)} failed: connection problem ({type(exc).__name__})")
        return StorageError(f"Azure {action} of {self._where(key)} failed: {code or status or type(exc).__name__}")

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            props = self.container.get_blob_client(self._key(key)).get_blob_properties()
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise self._fail(exc, "stat", key) from None
            return None
        except AzureError as exc:
            raise self._fail(exc, "stat", key) from None
        md5 = props.content_settings.content_md5 if props.content_settings else None
        return ObjectInfo(size=int(props.size or 0), hashes={"md5": bytes(md5).hex()} if md5 else {})

    def properties(self, key: str):
        """The blob's properties (tier, metadata): for ``check``."""
        return self.container.get_blob_client(self._key(key)).get_blob_properties()

    def put(
        self, key: str, source: Readable, size: int | None, *, replace: bool = False, metadata: dict[str, str] | None = None
    ) -> ObjectInfo:
        if not replace and self.stat(key) is not None:  # fail before transferring anything
            raise KeyTaken(f"{self._where(key)} already exists and was not written by this recording's archive: left untouched")
        blob = self.container.get_blob_client(self._key(key))
        upload = uuid.uuid4().hex  # block ids of this upload only (another upload of the name stages its own)
        md5 = hashlib.md5(usedforsecurity=False)
        block_ids: list[str] = []
        uploads = PartUploads(self.in_flight, "rtk-azure-block", oldest_first=True)
        try:
            for data in _blocks(source, self.block_size, uploads.wait_below):
                md5.update(data)
                block_id = _b64(f"{upload}-{len(block_ids):08d}".encode())
                block_ids.append(block_id)
                # validate_content: the block's MD5 travels with it and the service checks it
                # in a box the call empties: the block is freed when it is staged, not when the
                # pool drops the call a moment after the result is set (one block more at the peak)
                uploads.submit(_stage, blob, block_id, [data])
                del data
            uploads.finish()
            conditions = {} if replace else {"match_condition": MatchConditions.IfMissing}
            blob.commit_block_list(
                block_ids,
                content_settings=ContentSettings(content_md5=bytearray(md5.digest())),
                metadata=azure_metadata(metadata) if metadata else None,
                standard_blob_tier=self.tier,
                **conditions,
            )
        except ResourceExistsError:
            raise KeyTaken(f"{self._where(key)} appeared during the upload and was not written by this archive: left untouched") from None
        except AzureError as exc:
            raise self._fail(exc, "upload", key) from None
        finally:
            uploads.abandon()  # after finish(): nothing left to drop
        info = self.confirm_stored(key, size)
        if info.hashes.get("md5") not in (None, md5.hexdigest()):
            self.delete(key)
            raise StorageError(f"{self._where(key)}: the stored MD5 differs from the bytes sent; removed")
        return info

    def read_bytes(self, key: str, limit: int = 1 << 20) -> bytes | None:
        try:
            return self.container.get_blob_client(self._key(key)).download_blob(offset=0, length=limit).readall()
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise self._fail(exc, "read", key) from None
            return None
        except HttpResponseError as exc:
            if exc.status_code == 416:  # an empty blob
                return b""
            raise self._fail(exc, "read", key) from None
        except AzureError as exc:
            raise self._fail(exc, "read", key) from None

    def read_chunks(self, key: str, chunk_size: int = 8 << 20) -> Iterator[bytes]:
        try:
            client = self.container.get_blob_client(self._key(key))
            props = client.get_blob_properties()

            def fetch(start: int, length: int) -> bytes:
                # one ETag throughout: a blob replaced meanwhile fails instead of mixing
                return client.download_blob(offset=start, length=length, etag=props.etag,
                                            match_condition=MatchConditions.IfNotModified).readall()

            yield from ranged_chunks(fetch, props.size, chunk_size, self.url(key))
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise self._fail(exc, "read", key) from None
            raise StorageError(f"{self.url(key)} is missing") from None
        except AzureError as exc:
            raise self._fail(exc, "read", key) from None

    def delete(self, key: str) -> None:
        try:
            self.container.get_blob_client(self._key(key)).delete_blob(delete_snapshots="include")
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                raise self._fail(exc, "delete", key) from None
        except AzureError as exc:
            raise self._fail(exc, "delete", key) from None

    def list(self, prefix: str = "") -> Iterator[tuple[str, ObjectInfo]]:
        """Every committed blob under the root (and ``prefix``), recursively: keys relative to the root."""
        root = self.destination.root.strip("/")
        start = posixpath.join(root, prefix) if root else prefix
        try:
            for item in self.container.list_blobs(name_starts_with=start or None):
                name = item.name[len(root) + 1 :] if root else item.name
                if root and not item.name.startswith(root + "/"):
                    continue
                if is_temp_name(posixpath.basename(name)):
                    continue
                md5 = item.content_settings.content_md5 if item.content_settings else None
                yield name, ObjectInfo(size=int(item.size or 0), hashes={"md5": bytes(md5).hex()} if md5 else {})
        except AzureError as exc:
            raise self._fail(exc, "list", prefix) from None

    def close(self) -> None:
        self.client.close()


def _stage(blob, block_id: str, box: list[bytes]) -> None:
    data = box.pop()
    try:
        blob.stage_block(block_id, data, length=len(data), validate_content=True)
    finally:
        del data


def _blocks(source: Readable, block_size: int = BLOCK_SIZE, before_read: Callable[[], None] | None = None) -> Iterator[bytes]:
    """The source in ``block_size`` pieces (the last shorter), until it ends. ``before_read``
    is called before each block is read (``put``: until a block in flight is done, so memory
    holds at most ``in_flight`` blocks, the one being read included)."""
    while True:
        if before_read is not None:
            before_read()
        parts, have = [], 0
        while have < block_size:
            data = source.read(block_size - have)
            if not data:
                break
            parts.append(data)
            have += len(data)
        if not have:
            return
        block = parts[0] if len(parts) == 1 else b"".join(parts)
        del parts
        yield block
        del block
        if have < block_size:
            return
