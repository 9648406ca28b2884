"""Streaming one file from a presigned download URL into a storage backend.

Download and upload run as one stream (httpx -> VerifyingReader -> backend.put): memory
stays bounded by a few chunks whatever the file size. Size is checked against
``Content-Length`` and the API's ``file_size``; sha256 (and any hash the backend reports)
is computed on the way and compared with what the backend says it stored.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone

import httpx

from rtk_archiver.models import FileEntry
from rtk_archiver.naming import redact_urls
from rtk_archiver.streams import SizeMismatch, VerifyingReader
from storage_backends import StorageBackend, StorageError


class DownloadError(Exception):
    """The source file could not be downloaded (transient unless ``expired``)."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


class IntegrityError(StorageError):
    """What the backend stored differs from what was downloaded."""


class _Progress:
    """Logs a line at most every ``every`` seconds while bytes flow."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, label: str, total: int, every: float = 5.0):
        self.logger, self.label, self.total, self.every = logger, label, total, every
        self.done = 0
        self.started = self.last = time.monotonic()

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / max(now - self.started, 1e-6) / 1e6
            pct = 100.0 * self.done / self.total if self.total else 100.0
            self.logger.info("%s: %.0f%% (%d / %d bytes, %.1f MB/s)", self.label, pct, self.done, self.total, rate)


def _expired(expiry: datetime | None) -> bool:
    return expiry is not None and expiry <= datetime.now(timezone.utc)


def stream_file(
    http: httpx.Client,
    url: str,
    *,
    kind: str,
    backend: StorageBackend,
    key: str,
    expected_size: int | None,
    url_expiry: datetime | None,
    chunk_size: int,
    logger: logging.Logger | logging.LoggerAdapter,
) -> FileEntry:
    """Download ``url`` straight into ``backend`` at ``key``. Returns the verified entry."""
    stored = None
    try:
        with http.stream("GET", url) as response:
            if response.status_code in (401, 403):
                raise DownloadError(
                    f"{kind} download refused ({response.status_code})"
                    + ("; the presigned URL has expired" if _expired(url_expiry) else ""),
                    expired=True,
                )
            if response.status_code == 404:
                raise DownloadError(f"{kind} file not found on RealtimeKit's bucket (404)", expired=True)
            if response.status_code != 200:
                raise DownloadError(f"{kind} download failed with HTTP {response.status_code}")
            length = response.headers.get("content-length")
            size = int(length) if length and length.isdigit() else expected_size
            if size is None:
                raise DownloadError(f"{kind} download has no Content-Length and the API gave no file_size")
            if expected_size is not None and size != expected_size:
                raise DownloadError(
                    f"{kind} download announces {size} bytes but the API says file_size={expected_size}"
                )
            progress = _Progress(logger, f"{kind} -> {backend.url(key)}", size)
            reader = VerifyingReader(
                response.iter_bytes(chunk_size), size, backend.hash_types, on_progress=progress
            )
            stored = backend.put(key, reader, size)
            reader.verify_end()
    except SizeMismatch as exc:
        if stored is not None:  # a body that turned out too long after the backend committed
            backend.delete(key)
        raise DownloadError(f"{kind} download was incomplete or corrupt: {exc}") from None
    except httpx.HTTPError as exc:
        raise DownloadError(f"{kind} download failed: {type(exc).__name__}: {redact_urls(str(exc))}") from None

    digests = reader.hexdigests()
    if stored.size != size:
        backend.delete(key)
        raise IntegrityError(f"{backend.url(key)} holds {stored.size} bytes after upload, expected {size}")
    for name, value in stored.hashes.items():
        if name in digests and digests[name] != value:
            backend.delete(key)
            raise IntegrityError(f"{backend.url(key)}: {name} differs from the downloaded bytes")
    return FileEntry(
        kind=kind,  # type: ignore[arg-type]
        name=key.rsplit("/", 1)[-1],
        size=size,
        sha256=digests["sha256"],
        hashes={k: v for k, v in digests.items() if k != "sha256"},
        source_url_host=httpx.URL(url).host,
    )
