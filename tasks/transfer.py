"""Streaming one file from a presigned download URL into a storage backend.

Download and upload run as one stream (httpx -> VerifyingReader -> backend.put), the download
(and hashing) in a read-ahead thread a few chunks ahead of the upload, so both run at once:
memory stays bounded by a few chunks whatever the file size. Size is checked against
``Content-Length`` and the API's ``file_size`` (a body with neither is streamed to its end);
an error page (HTML / JSON / XML) answered in place of the media is refused; sha256 (and any
hash the backend reports) is computed on the way and compared with what the backend says
it stored. A download that stalls or trickles is resumed; a stop request (Ctrl-C, SIGTERM)
aborts the transfer between reads.
"""

from __future__ import annotations

import functools
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone

import httpx

from rtk_archiver import interrupt
from rtk_archiver.models import FileEntry
from rtk_archiver.naming import redact_urls
from rtk_archiver.streams import SizeMismatch, VerifyingReader
from storage_backends import StorageBackend, StorageError


class DownloadError(Exception):
    """The source file could not be downloaded (transient unless ``expired``)."""

    def __init__(self, message: str, *, expired: bool = False) -> None:
        super().__init__(message)
        self.expired = expired


class SourceChanged(DownloadError):
    """The file at the URL was replaced while it was being downloaded (a resumed request
    found another version): the bytes already streamed belong to the old one, so this
    attempt stores nothing and the next one starts over from byte 0."""


class IntegrityError(StorageError):
    """What the backend stored differs from what was downloaded."""


class _Progress:
    """Logs a line at most every ``every`` seconds while bytes flow."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, label: str, total: int | None, every: float = 5.0):
        self.logger, self.label, self.total, self.every = logger, label, total, every
        self.done = 0
        self.started = self.last = time.monotonic()

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.done / max(now - self.started, 1e-6) / 1e6
            if self.total:
                pct = 100.0 * self.done / self.total
                self.logger.info("%s: %.0f%% (%d / %d bytes, %.1f MB/s)", self.label, pct, self.done, self.total, rate)
            else:
                self.logger.info("%s: %d bytes (size unknown, %.1f MB/s)", self.label, self.done, rate)


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One TLS context for every download of the process: building one (loading the CA
    bundle) took ~20 ms of CPU, paid per recording when each transfer made its own client."""
    return httpx.create_ssl_context()


#: bytes httpcore asks the socket for per read of a body (its default: 64 KiB): fewer trips
#: through httpcore and h11 per byte; a read returns what has arrived, up to this. Measured on
#: a 256 MiB download from the simulator (CPU of the download loop): 0.39-0.66 s at 64 KiB,
#: 0.31-0.47 s at 256 KiB, 0.20-0.28 s at 1 MiB; but 1 MiB reads raised the peak RSS of a
#: 256 MiB transfer to SFTP by ~5 MiB (each read allocates its whole size first), 256 KiB did not.
DOWNLOAD_READ_BYTES = 256 * 1024


def larger_socket_reads() -> None:
    """httpcore's sync HTTP/1.1 connections read up to ``DOWNLOAD_READ_BYTES`` at a time
    (a class attribute: process-wide, never lowered)."""
    from httpcore._sync.http11 import HTTP11Connection

    if getattr(HTTP11Connection, "READ_NUM_BYTES", 0) < DOWNLOAD_READ_BYTES:
        HTTP11Connection.READ_NUM_BYTES = DOWNLOAD_READ_BYTES


def download_client(timeout: httpx.Timeout) -> httpx.Client:
    larger_socket_reads()
    return httpx.Client(timeout=timeout, follow_redirects=True, verify=tls_context())


def _expired(expiry: datetime | None) -> bool:
    return expiry is not None and expiry <= datetime.now(timezone.utc)


#: a download that receives less than this in ``stall_seconds`` (of waiting on the network) is stalled
STALL_BYTES = 64 * 1024
#: bytes of the body looked at to tell an error page from media
SNIFF_BYTES = 512
#: Content-Types that are never a recording: an error page answered in its place
_ERROR_TYPES = frozenset(
    {"text/html", "application/xhtml+xml", "application/json", "text/json", "application/xml", "text/xml"}
)


class DownloadStalled(httpx.TransportError):
    """Less than ``STALL_BYTES`` arrived in ``stall_seconds``: resumed like a reset."""


class BodyEndedEarly(httpx.RemoteProtocolError):
    """The body ended before the bytes its Content-Length (or Content-Range) announced."""


def _media_type(response: httpx.Response) -> str | None:
    value = response.headers.get("content-type")
    return value.split(";", 1)[0].strip().lower() or None if value else None


def _is_error_type(media_type: str | None) -> bool:
    return media_type is not None and (
        media_type in _ERROR_TYPES or media_type.endswith("+json") or media_type.endswith("+xml")
    )


def error_page_kind(head: bytes) -> str | None:
    """'HTML', 'XML' or 'JSON' when the first bytes of a body are such a document (an error
    page in place of the media), else None. Strict: text only (no control bytes), starting
    with markup or a JSON object / array, so no real media file matches."""
    text = head[:SNIFF_BYTES]
    if text.startswith(b"\xef\xbb\xbf"):
        text = text[3:]
    stripped = text.lstrip(b" \t\r\n")
    if not stripped or stripped[:1] not in (b"<", b"{", b"["):
        return None
    if any(b < 0x20 and b not in (9, 10, 13) for b in text) or b"\x7f" in text:
        return None
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(text) - 3:  # not just a character cut at the end of the sample
            return None
    if stripped[:1] != b"<":
        return "JSON"
    return "XML" if stripped[:5].lower() == b"<?xml" else "HTML"


class Download:
    """The body of a presigned URL as a stream of chunks that survives a broken connection.

    A connection reset, a body cut short or a stall (less than ``STALL_BYTES`` received in
    ``stall_seconds`` of waiting, a trickle included, or nothing at all) is resumed from the
    byte where it stopped with an HTTP ``Range`` request, at most ``max_resumes`` times; a
    server that ignores ``Range`` answers 200 with the whole file, and the bytes already
    streamed are skipped (a restart of the download, invisible to the upload). A refused or
    expired URL (401/403/404) is replaced by a fresh one from ``refresh`` (a new GET of the
    recording), once per request.

    Wrong bytes are refused: an answer whose Content-Type is an HTML / JSON / XML document,
    or whose first bytes are one, is an error page, not the media; an empty body is refused
    unless the API said the file is empty. Without Content-Length (chunked) and without the
    API's ``file_size``, ``size`` is None and the body is streamed to its end.

    A stop request (``rtk_archiver.interrupt``) raises ``Interrupted`` between reads.
    """

    def __init__(
        self,
        http: httpx.Client,
        url: str,
        *,
        kind: str,
        expected_size: int | None,
        url_expiry: datetime | None,
        refresh: Callable[[], str | None] | None,
        chunk_size: int,
        max_resumes: int,
        logger: logging.Logger | logging.LoggerAdapter,
        stall_seconds: float | None = None,
    ) -> None:
        self.http, self.url, self.kind = http, url, kind
        self.expected_size, self.url_expiry, self.refresh = expected_size, url_expiry, refresh
        self.chunk_size, self.max_resumes, self.logger = chunk_size, max_resumes, logger
        self.stall_seconds = stall_seconds
        self.resumes = 0
        self.received = 0  # bytes of the body streamed so far
        self._timeout = self._request_timeout()
        #: the version of the file being read: a strong ETag, else Last-Modified (None: the
        #: server names none); a resumed request asks for the rest of this one (If-Range)
        self.etag: str | None = None
        self.last_modified: str | None = None
        self.response = self._request(0)
        self.etag, self.last_modified = _validators(self.response)
        size = _content_length(self.response)
        if expected_size is not None and size is not None and size != expected_size:
            if size <= STALL_BYTES:  # small: say so if it is an error page, not just its size
                try:
                    self._sniffed(self.response.read())
                except httpx.HTTPError:
                    pass
                finally:
                    self.close()
            self.close()
            raise DownloadError(f"{kind} download announces {size} bytes but the API says file_size={expected_size}")
        #: bytes the body must have; None: unknown (no Content-Length, no file_size): to its end
        self.size: int | None = size if size is not None else expected_size

    def _request_timeout(self) -> httpx.Timeout | None:
        """The client's timeouts with the read timeout capped at ``stall_seconds``: a body
        that sends nothing at all is a stall too."""
        if not self.stall_seconds:
            return None
        base = self.http.timeout
        read = min(base.read, self.stall_seconds) if base.read is not None else self.stall_seconds
        return httpx.Timeout(connect=base.connect, read=read, write=base.write, pool=base.pool)

    def _request(self, start: int) -> httpx.Response:
        headers = {"Accept-Encoding": "identity"}  # the stored bytes are the file's bytes
        if start:
            headers["Range"] = f"bytes={start}-"
            if self.etag or self.last_modified:
                headers["If-Range"] = self.etag or self.last_modified
        extra = {"timeout": self._timeout} if self._timeout is not None else {}
        for attempt in (1, 2):
            interrupt.check()
            response = self.http.send(self.http.build_request("GET", self.url, headers=headers, **extra), stream=True)
            status = response.status_code
            if status in (200, 206):
                media_type = _media_type(response)
                if _is_error_type(media_type):
                    response.close()
                    raise DownloadError(
                        f"{self.kind} download answered {status} with Content-Type {media_type}: "
                        "an error page, not the media; nothing was archived"
                    )
                return response
            response.close()
            if status in (401, 403, 404) and attempt == 1 and self.refresh is not None:
                self.logger.info("%s URL refused (%d): fetching a fresh one", self.kind, status)
                fresh = self.refresh()
                if not fresh:
                    raise DownloadError(f"the recording no longer has a {self.kind} download URL", expired=True)
                self.url = fresh
                continue
            if status in (401, 403):
                expired = "; the presigned URL has expired" if _expired(self.url_expiry) else ""
                raise DownloadError(f"{self.kind} download refused ({status}){expired}", expired=True)
            if status == 404:
                raise DownloadError(f"{self.kind} file not found on RealtimeKit's bucket (404)", expired=True)
            raise DownloadError(f"{self.kind} download failed with HTTP {status}")
        raise AssertionError("unreachable")

    def chunks(self) -> Iterator[bytes]:
        """The body in chunks of ``chunk_size`` bytes (the last one shorter)."""
        pending: list[bytes] = []
        pending_size = 0
        for piece in self._pieces():
            pending.append(piece)
            pending_size += len(piece)
            if pending_size >= self.chunk_size:
                yield b"".join(pending)
                pending, pending_size = [], 0
        if pending:
            yield b"".join(pending)

    def _timed(self, raw: Iterator[bytes]) -> Iterator[bytes]:
        """``raw`` with stall detection: time is counted only while waiting on the network
        (not while the consumer holds a piece: a slow upload is not a stalled download)."""
        window, waited = 0, 0.0
        while True:
            started = time.monotonic()
            try:
                piece = next(raw)
            except StopIteration:
                return
            except httpx.ReadTimeout:
                if self.stall_seconds and self._timeout is not None and self._timeout.read == self.stall_seconds:
                    raise DownloadStalled(f"stalled: nothing received for {self.stall_seconds:g} s") from None
                raise
            waited += time.monotonic() - started
            window += len(piece)
            if window >= STALL_BYTES:
                window, waited = 0, 0.0
            elif self.stall_seconds and waited >= self.stall_seconds:
                raise DownloadStalled(
                    f"stalled: {window} bytes in {waited:.0f} s (less than {STALL_BYTES // 1024} KiB "
                    f"in ARCHIVE_DOWNLOAD_STALL_SECONDS={self.stall_seconds:g})"
                )
            yield piece

    def _pieces(self) -> Iterator[bytes]:
        # httpx's own regrouping (iter_raw(chunk_size)) cost 2.4x the CPU of the raw reads
        # (0.70 s vs 0.29 s per 512 MiB here): the pieces as read, grouped by ``chunks``.
        pos, skip = 0, 0
        head: bytes | None = b""  # the body's first bytes, held until sniffed (None: done)
        while True:
            try:
                for chunk in self._timed(self.response.iter_raw()):
                    interrupt.check()
                    if skip:  # a server that ignored Range sent the whole file again
                        drop = min(skip, len(chunk))
                        chunk, skip = chunk[drop:], skip - drop
                        if not chunk:
                            continue
                    if head is not None:
                        head += chunk
                        if len(head) < SNIFF_BYTES:
                            continue
                        chunk, head = self._sniffed(head), None
                    pos += len(chunk)
                    self.received = pos
                    yield chunk
                interrupt.check()
                if head is not None:  # a body shorter than the sniffed head
                    chunk, head = self._sniffed(head), None
                    if chunk:
                        pos += len(chunk)
                        self.received = pos
                        yield chunk
                if self.size is None or pos >= self.size:
                    if pos == 0 and not self.expected_size == 0:
                        raise DownloadError(f"{self.kind} download is empty (0 bytes): not a recording; nothing was archived")
                    return
                raise BodyEndedEarly(f"body ended after {pos} of {self.size} bytes")
            except httpx.TransportError as exc:
                self.response.close()
                if head:  # not handed out yet: asked for again from ``pos``
                    head = b""
                self.resumes += 1
                if self.resumes > self.max_resumes:
                    of = f"{self.size}" if self.size is not None else "an unknown number of"
                    raise DownloadError(
                        f"{self.kind} download broke {self.resumes} times (last: {_describe(exc)}); "
                        f"received {pos} of {of} bytes"
                    ) from None
                self.logger.warning(
                    "%s download interrupted at byte %d of %s (%s): resuming",
                    self.kind, pos, self.size if self.size is not None else "?", _describe(exc),
                )
                interrupt.sleep(min(0.2 * 2**self.resumes, 5.0))
                self.response = self._request(pos)
                self._same_file(pos)
                if self.response.status_code == 206:
                    first, total = _content_range(self.response.headers.get("content-range"))
                    if first != pos:
                        self.close()
                        raise DownloadError(f"{self.kind} resume asked for byte {pos}, server sent {first}")
                    if self.size is None and total is not None:
                        self.size = total
                else:
                    skip = pos
                    length = _content_length(self.response)
                    if self.size is None and length is not None:
                        self.size = length

    def _same_file(self, pos: int) -> None:
        """A resumed answer is the rest of the file that was being read, or SourceChanged:
        its ETag / Last-Modified (when both answers name one), the total of its
        Content-Range or, for a whole-file answer, its length must be the first answer's.
        A server that honours If-Range answers a changed file with 200 and the whole new
        file; one that does not is caught by its validators or its size."""
        response, was = self.response, None
        etag, last_modified = _validators(response)
        if self.etag and etag and etag != self.etag:
            was, now = self.etag, etag
        elif self.last_modified and last_modified and last_modified != self.last_modified and not (self.etag and etag):
            was, now = self.last_modified, last_modified
        else:
            if response.status_code == 206:
                total = _content_range(response.headers.get("content-range"))[1]
            else:
                total = _content_length(response)
            if total is not None and self.size is not None and total != self.size:
                was, now = f"{self.size} bytes", f"{total} bytes"
        if was is None:
            return
        self.close()
        raise SourceChanged(
            f"{self.kind} file changed on RealtimeKit's side during the download (resumed at byte {pos}: "
            f"{was} before, {now} now): the bytes already read are of another version; nothing was "
            "archived, the next attempt starts over"
        )

    def _sniffed(self, head: bytes) -> bytes:
        what = error_page_kind(head)
        if what is not None:
            media_type = _media_type(self.response) or "no Content-Type"
            raise DownloadError(
                f"{self.kind} download answered {self.response.status_code} ({media_type}) with "
                f"{'a' if what == 'JSON' else 'an'} {what} document, not the media: an error page; nothing was archived"
            )
        return head

    def close(self) -> None:
        self.response.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, (DownloadStalled, BodyEndedEarly)):
        return str(exc)
    message = redact_urls(str(exc))[:200]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _validators(response: httpx.Response) -> tuple[str | None, str | None]:
    """(strong ETag or None, Last-Modified or None) of an answer. A weak ETag (``W/``) names
    equivalent content, not the same bytes, so a range of it cannot be trusted (RFC 9110)."""
    etag = response.headers.get("etag")
    if etag is not None and (etag.startswith("W/") or not etag.strip()):
        etag = None
    return etag, response.headers.get("last-modified") or None


def _content_length(response: httpx.Response) -> int | None:
    length = response.headers.get("content-length")
    return int(length) if length and length.isdigit() and "chunked" not in response.headers.get("transfer-encoding", "") else None


def _content_range(content_range: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size or None) of a ``bytes a-b/total`` header."""
    try:
        span, _, total = content_range.split(" ", 1)[1].partition("/") if content_range else ("", "", "")
        return int(span.split("-", 1)[0]), int(total) if total.isdigit() else None
    except (IndexError, ValueError):
        return None, None


def stream_file(
    download: Download,
    *,
    backend: StorageBackend,
    key: str,
    logger: logging.Logger | logging.LoggerAdapter,
    read_ahead: int = 0,
    replace: bool = False,
    metadata: dict[str, str] | None = None,
) -> FileEntry:
    """Stream an opened download straight into ``backend`` at ``key``; returns the verified entry.
    ``read_ahead``: chunks the download may run ahead of the upload (in a thread). A download
    of unknown size (``download.size`` None) is streamed to its end and recorded at the
    bytes received. ``metadata``: object metadata (recording and meeting ids) for backends
    that store it. Hashes the backend computed and checked itself while uploading (S3's
    composite sha256, Azure's md5) are recorded in the entry beside the ones computed here."""
    kind, size = download.kind, download.size
    stored = None
    progress = _Progress(logger, f"{kind} -> {backend.url(key)}", size)
    if read_ahead:  # at least what the backend sends at once (GCS: one resumable-upload chunk)
        read_ahead = max(read_ahead, -(-backend.read_ahead_bytes // download.chunk_size))
        # at most what a backend with parts in flight needs (S3, Azure: the download goes on
        # while a part is read; more only costs memory)
        if (limit := getattr(backend, "read_ahead_limit_bytes", None)) is not None:
            read_ahead = min(read_ahead, max(1, limit // download.chunk_size))
    reader = VerifyingReader(download.chunks(), size, backend.hash_types, on_progress=progress, read_ahead=read_ahead)
    try:
        extra = {"metadata": metadata} if metadata else {}  # backends without metadata take none
        stored = backend.put(key, reader, size, replace=replace, **extra)
        reader.verify_end()
    except SizeMismatch as exc:
        if stored is not None:  # a body that turned out too long after the backend committed
            backend.delete(key)
        raise DownloadError(f"{kind} download was incomplete or corrupt: {exc}") from None
    except httpx.HTTPError as exc:
        raise DownloadError(f"{kind} download failed: {type(exc).__name__}: {redact_urls(str(exc))}") from None
    finally:
        reader.close()
        download.close()

    digests = reader.hexdigests()
    expected = size if size is not None else reader.received
    if stored.size != expected:
        backend.delete(key)
        raise IntegrityError(f"{backend.url(key)} holds {stored.size} bytes after upload, expected {expected}")
    for name, value in stored.hashes.items():
        if name in digests and digests[name] != value:
            backend.delete(key)
            raise IntegrityError(f"{backend.url(key)}: {name} differs from the downloaded bytes")
    return FileEntry(
        kind=kind,  # type: ignore[arg-type]
        name=key.rsplit("/", 1)[-1],
        size=expected,
        sha256=digests["sha256"],
        hashes={k: v for k, v in {**stored.hashes, **digests}.items() if k != "sha256"},
        source_url_host=httpx.URL(download.url).host,
    )
