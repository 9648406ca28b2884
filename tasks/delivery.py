"""RealtimeKit's own upload to a recording's storage_config: is it the recording?

RealtimeKit publishes a recording with a ``storage_config`` to that bucket itself, at
``<path>/<output_file_name>`` (the plan's ``Action.PROVE_DELIVERY``). Before the archiver
writes no second copy it proves the file there is the recording's bytes: the size first,
then the content: the recording is downloaded through the hashes (nothing uploaded) and
compared with the cheapest proof the store offers:

1. a hash the store reports for the object and that a stream can compute (S3 / R2 / Spaces:
   the ETag of a single-part upload is its md5, a full-object SHA256 checksum; GCS: md5 and
   crc32c; Azure: Content-MD5);
2. else the object read back and hashed (sha256).

``ARCHIVE_RTK_UPLOAD_PROOF=size`` skips the download (size only). A recording without a
download URL (RealtimeKit's bucket disabled) can only be checked by size.
"""

from __future__ import annotations

import hmac
import logging

from rtk_archiver.models import FileEntry, ObjectInfo, Recording
from rtk_archiver.streams import VerifyingReader, new_hasher
from storage_backends import StorageBackend

#: hashes a store may report for an object, as the stream computes them (s3-sha256 without
#: a part count is the whole object's sha256)
_COMPARABLE = ("md5", "crc32c", "sha256", "s3-sha256")


class Proof:
    """What the check of RealtimeKit's upload found: ``entry`` (the file, proven) or ``why`` not."""

    def __init__(self, entry: FileEntry | None, why: str | None = None) -> None:
        self.entry, self.why = entry, why


def delivered_entry(recording: Recording, name: str, info: ObjectInfo, *, sha256: str | None, hashes: dict[str, str],
                    verified_by: str, source_url_host: str | None = None, kind: str = "video",
                    origin: str = "realtimekit") -> FileEntry:
    return FileEntry(
        kind=kind, name=name, size=info.size, sha256=sha256, hashes=hashes, origin=origin,  # type: ignore[arg-type]
        verified_by=verified_by, source_url_host=source_url_host,
    )


def label(origin: str) -> str:
    return "RealtimeKit's upload" if origin == "realtimekit" else "the file found without a sidecar"


def check_size(recording: Recording, info: ObjectInfo | None, where: str, origin: str = "realtimekit") -> str | None:
    """Why the object is not the recording's video by its size (None: it may be)."""
    if info is None:
        return f"{label(origin)} is not at {where}"
    if recording.file_size is not None and info.size != recording.file_size:
        return f"{label(origin)} at {where} holds {info.size} bytes, the recording has {recording.file_size}"
    return None


def _stored_hashes(info: ObjectInfo) -> dict[str, str]:
    """The hashes of ``info`` a stream can compute, by the stream's name for them."""
    out: dict[str, str] = {}
    for name in _COMPARABLE:
        value = info.hashes.get(name)
        if not value:
            continue
        if name == "s3-sha256":
            if "-" in value:  # a composite of the parts: their boundaries are unknown here
                continue
            name = "sha256"
        out.setdefault(name, value.lower())
    return out


def prove(
    recording: Recording,
    backend: StorageBackend,
    key: str,
    info: ObjectInfo,
    download,
    logger: logging.Logger | logging.LoggerAdapter,
    *,
    kind: str = "video",
    origin: str = "realtimekit",
) -> Proof:
    """Stream ``download`` (an opened ``tasks.transfer.Download`` of the recording's video)
    through sha256 and the hashes the store reports for ``key``, and compare. Raises what the
    download raises (the task retries); returns a Proof."""
    where = backend.url(key)
    what = label(origin)
    stored = _stored_hashes(info)
    reader = VerifyingReader(download.chunks(), download.size, [n for n in stored if n != "sha256"])
    try:
        while reader.read(1 << 20):
            pass
        reader.verify_end()
    finally:
        reader.close()
        download.close()
    digests = reader.hexdigests()
    if reader.received != info.size:
        return Proof(None, f"{what} at {where} holds {info.size} bytes, the recording's {kind} has {reader.received}")
    host = _host(download.url)
    for name, value in stored.items():
        if not hmac.compare_digest(digests[name], value):
            return Proof(None, f"{what} at {where} is not the recording's {kind} ({name} differs)")
    if stored:
        names = "/".join(sorted(stored))
        logger.info("%s: %s at %s is its %s (%s reported by the store)", recording.label(), what, where, kind, names)
        return Proof(delivered_entry(recording, key.rsplit("/", 1)[-1], info, sha256=digests["sha256"],
                                     hashes={k: v for k, v in digests.items() if k != "sha256"},
                                     verified_by=f"{names} reported by the store", source_url_host=host,
                                     kind=kind, origin=origin))
    hasher, size = new_hasher("sha256"), 0
    for chunk in backend.read_chunks(key):
        hasher.update(chunk)
        size += len(chunk)
    if size != info.size or not hmac.compare_digest(hasher.hexdigest(), digests["sha256"]):
        return Proof(None, f"{what} at {where} is not the recording's {kind} (sha256 differs, read back)")
    logger.info("%s: %s at %s is its %s (sha256, read back)", recording.label(), what, where, kind)
    return Proof(delivered_entry(recording, key.rsplit("/", 1)[-1], info, sha256=digests["sha256"],
                                 hashes={k: v for k, v in digests.items() if k != "sha256"},
                                 verified_by="sha256 read back", source_url_host=host, kind=kind, origin=origin))


def _host(url: str) -> str | None:
    import httpx

    try:
        return httpx.URL(url).host
    except Exception:  # noqa: BLE001
        return None
