"""The unit of work: archive one recording (video, audio, sidecar) to its destination.

Order of writes: video, audio, then the sidecar, last, as the commit marker. "Already
archived" is decided from the destination itself: the sidecar names this recording and
every file it lists is there with the recorded size (and hashes where the backend has
them), so it holds across machines and reruns.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE

from rtk_archiver import __version__
from rtk_archiver.api import ApiError, RealtimeKitAPI
from rtk_archiver.log import run_logger
from rtk_archiver.models import FileEntry, OutcomeKind, Recording, RecordingOutcome, Sidecar
from rtk_archiver.naming import RecordingKeys, keys_for, redact_urls
from rtk_archiver.settings import Settings, load_settings
from storage_backends import (
    Destination,
    StorageBackend,
    UnsupportedDestination,
    destination_from_storage_config,
    open_backend,
    parse_destination_url,
)
from tasks.limits import api_throttle, archiving_slot
from tasks.retry import retry_transient
from tasks.transfer import Download, DownloadError, download_client, stream_file

def resolve_destination(recording: Recording, override: str | None, default: str | None) -> Destination:
    """The one place a recording's destination is chosen: the run's override, else its
    storage_config, else the default destination."""
    if override:
        return parse_destination_url(override)
    sc = recording.storage_config
    if sc is not None and sc.type:
        return destination_from_storage_config(sc)
    if default:
        return parse_destination_url(default)
    raise UnsupportedDestination(
        "the recording has no storage_config and ARCHIVE_DEFAULT_DESTINATION is not set"
    )


def read_sidecar(backend: StorageBackend, key: str) -> Sidecar | None:
    raw = backend.read_bytes(key)
    if raw is None:
        return None
    try:
        return Sidecar.model_validate_json(raw)
    except ValueError:
        return None  # unreadable sidecar: archive again, it will be replaced


def verify_archived(backend: StorageBackend, keys: RecordingKeys, sidecar: Sidecar) -> bool:
    """True when every file the sidecar lists is at the destination, complete."""
    wanted = {"video": keys.video, "audio": keys.audio}
    listed = {entry.kind: entry for entry in sidecar.files}
    if set(listed) != {k for k, v in wanted.items() if v}:
        return False
    for kind, entry in listed.items():
        key = wanted[kind]
        info = backend.stat(key) if key else None
        if info is None or info.size != entry.size:
            return False
        for name, value in info.hashes.items():
            known = entry.sha256 if name == "sha256" else entry.hashes.get(name)
            if known is not None and known != value:
                return False
    return True


def _sidecar(recording: Recording, files: list[FileEntry]) -> Sidecar:
    meeting = recording.meeting
    return Sidecar(
        recording_id=recording.id,
        meeting_id=recording.meeting_ref,
        meeting_title=meeting.title if meeting else None,
        session_id=recording.session_id,
        status=recording.status,
        invoked_time=recording.invoked_time,
        started_time=recording.started_time,
        stopped_time=recording.stopped_time,
        recording_duration=recording.recording_duration,
        output_file_name=recording.output_file_name,
        storage_config=recording.storage_config.public_dict() if recording.storage_config else None,
        files=files,
        archived_at=datetime.now(timezone.utc),
        archiver_version=__version__,
    )


def why_not_archivable(recording: Recording) -> tuple[OutcomeKind, str] | None:
    """None when the recording can be archived now; else what to report and why."""
    if recording.status == "ERRORED":
        return OutcomeKind.SKIPPED, "the recording ERRORED on RealtimeKit; there is no file to archive"
    if recording.status != "UPLOADED" or recording.stopped_time is None:
        return OutcomeKind.PENDING, f"not finished yet (status {recording.status}); a later run archives it"
    if not recording.download_url:
        return OutcomeKind.SKIPPED, "no download_url: the RealtimeKit bucket is disabled for it or its files expired"
    return None


@task(
    name="archive-recording",
    task_run_name="archive {recording.id}",
    retries=3,
    retry_delay_seconds=[10, 30, 90],
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def archive_recording(
    recording: Recording,
    destination: str | None = None,
    dry_run: bool = False,
    disambiguate: bool = False,
) -> RecordingOutcome:
    """Archive one recording; returns what happened. Raises on failure (Prefect retries
    transient failures; permanent ones fail at once)."""
    settings = load_settings()
    logger = run_logger()
    started = time.monotonic()
    base = RecordingOutcome(recording_id=recording.id, output_file_name=recording.output_file_name, kind=OutcomeKind.SKIPPED)
    verdict = why_not_archivable(recording)
    if verdict is not None:
        logger.info("Not archiving %s: %s", recording.label(), verdict[1])
        return base.model_copy(update={"kind": verdict[0], "reason": verdict[1]})
    try:
        target = resolve_destination(recording, destination, settings.archive_default_destination)
    except UnsupportedDestination as exc:
        logger.info("Skipping %s: %s", recording.label(), exc)
        return base.model_copy(update={"reason": str(exc)})

    with archiving_slot(recording.id, target.kind), open_backend(target, settings) as backend:
        keys = keys_for(recording, disambiguate)
        existing = read_sidecar(backend, keys.sidecar)
        if existing is not None and existing.recording_id != recording.id:
            logger.warning(
                "%s is taken by recording %s: archiving %s under a name with its id",
                backend.url(keys.video), existing.recording_id, recording.id,
            )
            keys = keys_for(recording, disambiguate=True)
            existing = read_sidecar(backend, keys.sidecar)
        where = backend.url(keys.video)
        total = sum(f.size for f in existing.files) if existing else (recording.file_size or 0)
        if existing is not None and verify_archived(backend, keys, existing):
            logger.info("Already archived: %s at %s", recording.label(), where)
            return base.model_copy(update={"kind": OutcomeKind.ALREADY_ARCHIVED, "destination": where, "bytes_total": total})
        if dry_run:
            logger.info("Would archive %s to %s", recording.label(), where)
            return base.model_copy(update={"kind": OutcomeKind.WOULD_ARCHIVE, "destination": where, "bytes_total": total})

        files = _transfer(recording, backend, keys, settings, logger)
        sidecar = _sidecar(recording, files)
        backend.put_bytes(keys.sidecar, json.dumps(sidecar.model_dump(mode="json"), indent=2).encode(), replace=True)

    moved = sum(f.size for f in files)
    seconds = time.monotonic() - started
    logger.info(
        "Archived %s to %s: %d bytes in %.1f s (%.1f MB/s)",
        recording.label(), where, moved, seconds, moved / max(seconds, 1e-6) / 1e6,
    )
    return base.model_copy(
        update={
            "kind": OutcomeKind.ARCHIVED,
            "destination": where,
            "bytes_transferred": moved,
            "bytes_total": moved,
            "seconds": round(seconds, 3),
        }
    )


def _transfer(recording: Recording, backend: StorageBackend, keys: RecordingKeys, settings: Settings, logger) -> list[FileEntry]:
    """Video then audio, each streamed straight into the backend."""
    timeout = httpx.Timeout(settings.archive_download_timeout_seconds, connect=15.0)
    files: list[FileEntry] = []
    current = recording

    def fresh_url(kind: str) -> str | None:
        nonlocal current
        current = _refresh(recording.id, settings)
        return current.download_url if kind == "video" else current.audio_download_url

    with download_client(timeout) as http:
        for kind, key in (("video", keys.video), ("audio", keys.audio)):
            if key is None:
                continue
            url = current.download_url if kind == "video" else current.audio_download_url
            if not url:
                raise DownloadError(f"the recording no longer has a {kind} download URL", expired=True)
            try:
                download = Download(
                    http,
                    url,
                    kind=kind,
                    expected_size=current.file_size if kind == "video" else None,
                    url_expiry=current.download_url_expiry,
                    refresh=lambda kind=kind: fresh_url(kind),
                    chunk_size=settings.archive_chunk_size,
                    max_resumes=settings.archive_download_resumes,
                    logger=logger,
                    stall_seconds=settings.archive_download_stall_seconds,
                )
            except httpx.HTTPError as exc:
                raise DownloadError(f"{kind} download failed: {type(exc).__name__}: {redact_urls(str(exc))}") from None
            files.append(
                stream_file(
                    download, backend=backend, key=key, logger=logger,
                    read_ahead=settings.archive_read_ahead_chunks, replace=True,
                )
            )
    return files


def _refresh(recording_id: str, settings: Settings) -> Recording:
    try:
        with RealtimeKitAPI(settings, throttle=api_throttle) as api:
            return api.get_recording(recording_id)
    except ApiError as exc:
        raise DownloadError(f"could not refresh the download URLs: {exc}") from None
