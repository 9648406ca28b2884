"""The one small interface every storage backend implements (after rclone's put / stat / hashes).

Keys are '/'-separated paths relative to the destination's root (bucket + prefix, base
directory, SFTP directory). They are already made safe by ``rtk_archiver.naming``.
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import ClassVar, Protocol

from rtk_archiver.models import ObjectInfo

from .destination import Destination


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class StorageError(Exception):
    """A transfer to/from a backend failed. Messages never contain secrets.
    Transient by default: the task that hit it may retry."""


class PermanentStorageError(StorageError):
    """Retrying will not help (bad credentials, missing bucket, refused host key, bad config)."""


class KeyTaken(PermanentStorageError):
    """``put(..., replace=False)`` found something already at the key: nothing was written
    there (the archiver never overwrites what it cannot prove it wrote)."""


class StorageBackend(ABC):
    #: hash names (hashlib names, or "crc32c") that ``stat``/``put`` report and that the
    #: transfer computes while streaming, for an end-to-end check beyond sha256.
    hash_types: ClassVar[tuple[str, ...]] = ()
    #: bytes the download should be able to run ahead of ``put``: a backend that uploads in
    #: chunks asks for one chunk, so the next is downloaded while the current one is sent
    read_ahead_bytes: ClassVar[int] = 0

    def __init__(self, destination: Destination) -> None:
        self.destination = destination

    # -- the interface ---------------------------------------------------------------------
    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Size (and hashes where the backend has them) of the object at key; None if absent."""

    @abstractmethod
    def put(
        self, key: str, source: Readable, size: int | None, *, replace: bool = False, metadata: dict[str, str] | None = None
    ) -> ObjectInfo:
        """Stream exactly ``size`` bytes (``None``: unknown, until ``source`` ends) from
        ``source`` to key, with bounded memory; returns what the server stored.

        Atomic: nothing is visible at key until the whole object is there. If ``source.read``
        raises (short or long body, checksum trouble, network) or the upload fails, nothing
        partial is left behind (temp file removed, multipart upload aborted, resumable upload
        not finalized) and the exception propagates.

        No-clobber unless ``replace``: with ``replace=False`` an object already at key (put
        there by anyone, at any time before the commit) makes the put fail with ``KeyTaken``
        and leaves that object untouched. ``replace=True`` is only for keys the caller has
        proven are its own (see ``tasks/archive.py``).

        ``metadata``: names of the recording and meeting, stored as object metadata where the
        store has it (S3, GCS, Azure); file systems (local, SFTP) ignore it.
        """

    @abstractmethod
    def read_bytes(self, key: str, limit: int = 1 << 20) -> bytes | None:
        """A small object's content (sidecars), or None if absent."""

    @abstractmethod
    def read_chunks(self, key: str, chunk_size: int = 8 << 20) -> Iterator[bytes]:
        """The whole object's content, streamed in chunks of at most ``chunk_size`` bytes
        (bounded memory): proving a file someone else uploaded, and the scrub's ``--deep``
        re-hash. A missing object or a failure mid-stream raises ``StorageError``."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove key if present."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[tuple[str, ObjectInfo]]:
        """Every object whose key starts with ``prefix``, recursively, streamed (bounded
        memory: a page or one directory at a time), as (key relative to the destination root,
        size and the hashes the listing gives). Temp files (names containing ``.rtkpart-``)
        are left out. An error listing any part raises ``StorageError``."""

    # -- helpers with defaults -------------------------------------------------------------
    def confirm_stored(self, key: str, size: int | None) -> ObjectInfo:
        """After an upload: the server's view of key, which must hold ``size`` bytes (else the
        object is removed and StorageError raised). ``size=None``: whatever was stored."""
        info = self.stat(key)
        if info is None or (size is not None and info.size != size):
            self.delete(key)
            raise StorageError(f"{self.url(key)} holds {info.size if info else 0} bytes after upload, expected {size}")
        return info

    def put_bytes(self, key: str, data: bytes, *, replace: bool = False) -> ObjectInfo:
        return self.put(key, io.BytesIO(data), len(data), replace=replace)

    def url(self, key: str = "") -> str:
        """Where key is, for people: no secrets."""
        return self.destination.display_url(key)

    def remove_abandoned(self, key: str) -> None:  # noqa: B027 - optional hook
        """Look now for temp files that dead uploads left beside ``key`` and remove them (an
        earlier attempt at this recording may have died mid-upload). Backends whose unfinished
        uploads are invisible (S3, GCS, Azure) have none."""

    def connect(self) -> None:  # noqa: B027 - optional hook
        """Reach the store now (SFTP: connect, verify the host key, log in) instead of at the
        first request; the preflight calls it to name the step that fails."""

    def missing_dirs(self, key: str) -> list[str]:
        """The directories of ``key`` below the root that do not exist yet, deepest first
        (what writing ``key`` would create). Stores without directories: none."""
        return []

    def remove_empty_dir(self, directory: str) -> None:  # noqa: B027 - optional hook
        """Remove the directory ``directory`` (a key prefix without the trailing ``/``) if it
        is an empty real directory; anything else (not empty, a link, gone) is left alone."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ranged_chunks(fetch: Callable[[int, int], bytes], size: int, chunk_size: int, where: str) -> Iterator[bytes]:
    """An object of ``size`` bytes read as ranges of at most ``chunk_size``: ``fetch(start,
    length)`` returns the bytes from ``start``; an empty answer before the end raises."""
    start = 0
    while start < size:
        chunk = fetch(start, min(chunk_size, size - start))
        if not chunk:
            raise StorageError(f"{where} ended at {start} bytes, expected {size}")
        start += len(chunk)
        yield chunk
