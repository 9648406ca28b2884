"""The unit of work: archive one recording (video, audio, sidecar) to its destination.

The plan (``rtk_archiver.plan``) has decided the keys and that the recording needs a
transfer; this task carries it out. Order of writes: a claim sidecar naming the recording
and the files it is about to write (no-clobber), video, audio, then the complete sidecar,
last, as the commit marker. Only keys the recording's own sidecar lists or claims are ever
replaced; every other write is no-clobber, so nothing the archiver did not write is
overwritten.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import datetime, timezone

import httpx

from rtk_archiver import __version__
from rtk_archiver.api import ApiError, RealtimeKitAPI
from rtk_archiver.log import run_logger
from rtk_archiver.models import FileEntry, OutcomeKind, Recording, RecordingOutcome, Sidecar
from rtk_archiver.naming import redact_urls
from rtk_archiver.plan import TASK_ACTIONS, Action, RecordingPlan, is_archived, own_names
from rtk_archiver.settings import Settings, load_settings
from storage_backends import PermanentStorageError, StorageBackend, StorageError, open_backend
from storage_backends.base import KeyTaken
from tasks.define import task
from tasks.limits import CLAIM_POLL_SECONDS, CLAIM_RENEW_SECONDS, CLAIM_WAIT_SECONDS, api_throttle, claim_holder, claim_is_live, live_tokens, transfer_gate
from tasks.survey import read_sidecar_seen
from tasks.retry import retry_transient
from rtk_archiver.streams import SizeMismatch
from tasks import delivery
from tasks.transfer import Download, DownloadError, download_client, stream_file

class KeyConflict(PermanentStorageError):
    """The destination changed between the survey and the claim: a name planned as free was
    taken by something else. Nothing was written; the next run plans again."""


class ArchivingElsewhere(Exception):
    """Another run is archiving this recording right now (its claim is live): not an error;
    the recording is reported pending, and a later run finds it archived."""




class OverlappingArchive(StorageError):
    """Another run archiving the same recording stored a file first. Transient: the retry
    finds that run's sidecar naming this recording, and either finds it archived or carries
    on over the recording's own files."""


def _sidecar(
    recording: Recording, files: list[FileEntry], *, claimed: list[str] | None = None, token: str | None = None,
    holder: dict | None = None,
) -> Sidecar:
    meeting = recording.meeting
    return Sidecar(
        state="claimed" if claimed is not None else "complete",
        claimed=claimed or [],
        claim_token=token,
        claim_holder=holder,
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


def _encode(sidecar: Sidecar) -> bytes:
    return json.dumps(sidecar.model_dump(mode="json"), indent=2).encode()


def _live_claim(sidecar: Sidecar | None) -> bool:
    """The sidecar is a claim of another attempt that is archiving right now (tasks/limits.py)."""
    if sidecar is None or sidecar.state != "claimed":
        return False
    return claim_is_live(sidecar.claim_holder, sidecar.archived_at, sidecar.claim_token)


def _elsewhere(backend: StorageBackend, plan: RecordingPlan, sidecar: Sidecar) -> ArchivingElsewhere:
    holder = sidecar.claim_holder or {}
    return ArchivingElsewhere(
        f"being archived by another run right now (claim at {backend.url(plan.layout.sidecar)} held by pid "
        f"{holder.get('pid')} on {holder.get('host')}, renewed {sidecar.archived_at.isoformat()}); a later run "
        "finds it archived"
    )


def _archived_meanwhile(backend: StorageBackend, plan: RecordingPlan, sidecar: Sidecar) -> bool:
    keys = plan.layout
    names = own_names(keys, sidecar)
    return is_archived(sidecar, keys, {keys.beside(n): backend.stat(keys.beside(n)) for n in names})


def _claim(backend: StorageBackend, plan: RecordingPlan) -> RecordingPlan | None:
    """Write the claim sidecar (no-clobber unless the sidecar there is this recording's own).
    Returns the plan to carry on with, or None when another run has meanwhile archived the
    recording completely (nothing to do); raises ``ArchivingElsewhere`` when another run's claim
    on it is live (that run is archiving it now)."""
    keys = plan.layout
    assert keys is not None
    kept = {f.name for f in plan.kept}
    names = [keys.name_of(k) for _, k in keys.files() if keys.name_of(k) not in kept]
    if plan.action != Action.ARCHIVE:  # files found there (RealtimeKit's upload): checked, never written
        there = {keys.video} | ({keys.audio} if keys.audio and backend.stat(keys.audio) is not None else set())
        names = [n for n in names if keys.beside(n) not in there]
    token = uuid.uuid4().hex
    known: list[FileEntry] = []  # what an earlier complete sidecar of this recording knew
    if plan.sidecar_is_own:  # replaced below: unless another run claimed or archived it since the survey
        seen = read_sidecar_seen(backend, keys.sidecar)
        if seen.sidecar is not None and seen.sidecar.recording_id == plan.recording.id:
            if _live_claim(seen.sidecar):
                raise _elsewhere(backend, plan, seen.sidecar)
            if seen.sidecar.archived_at != plan.sidecar_seen_at and _archived_meanwhile(backend, plan, seen.sidecar):
                return None
            known = list(seen.sidecar.files)  # a complete sidecar's, or a dead claim's that carried them
    # the claim carries them: a failed or killed attempt never loses the sizes and hashes of
    # the files it did not replace (``_restore_known``)
    claim = _encode(_sidecar(plan.recording, known, claimed=names, token=token, holder=claim_holder()))
    live_tokens.add(token)
    try:
        backend.put_bytes(keys.sidecar, claim, replace=plan.sidecar_is_own)
        # the files themselves stay no-clobber unless an earlier sidecar of this recording
        # lists them: a file that appeared since the survey is never overwritten
        return plan.model_copy(update={"own": sorted(set(plan.own) | {keys.sidecar}), "claim_token": token})
    except KeyTaken:
        pass
    except BaseException:
        live_tokens.discard(token)
        raise
    live_tokens.discard(token)
    # someone was quicker: fine if it is this recording (an overlapping run), else stop
    seen = read_sidecar_seen(backend, keys.sidecar)
    if seen.sidecar is None or seen.sidecar.recording_id != plan.recording.id:
        raise KeyConflict(
            f"{backend.url(keys.sidecar)} was taken by something else while this run was planning; nothing "
            "was written for this recording and the next run picks another name"
        ) from None
    if _archived_meanwhile(backend, plan, seen.sidecar):
        return None
    if _live_claim(seen.sidecar):
        raise _elsewhere(backend, plan, seen.sidecar)
    # a claim whose holder is gone (killed): take it over, this recording's own files included
    # (this recording's current names, never an older layout's, nor RealtimeKit's upload)
    own = {keys.sidecar} | {keys.beside(n) for n in names}
    live_tokens.add(token)
    try:
        backend.put_bytes(keys.sidecar, claim, replace=True)
    except BaseException:
        live_tokens.discard(token)
        raise
    return plan.model_copy(update={"own": sorted(own), "sidecar_is_own": True, "claim_token": token})


class ClaimKeeper:
    """Renews this attempt's claim (rewrites it with a new ``archived_at``) every
    CLAIM_RENEW_SECONDS while the files transfer, over a connection of its own, so that other
    runs see it live; never over a sidecar that is no longer this attempt's claim."""

    def __init__(self, plan: RecordingPlan, settings: Settings) -> None:
        self.plan, self.settings = plan, settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rtk-claim-{plan.recording.id}", daemon=True)

    def __enter__(self) -> "ClaimKeeper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        keys = self.plan.layout
        backend = None
        try:
            while not self._stop.wait(CLAIM_RENEW_SECONDS):
                try:
                    if backend is None:
                        backend = open_backend(self.plan.destination, self.settings).__enter__()
                    seen = read_sidecar_seen(backend, keys.sidecar)
                    if seen.sidecar is None or seen.sidecar.claim_token != self.plan.claim_token or seen.sidecar.state != "claimed":
                        return
                    renewed = seen.sidecar.model_copy(update={"archived_at": datetime.now(timezone.utc)})
                    if not self._stop.is_set():
                        backend.put_bytes(keys.sidecar, _encode(renewed), replace=True)
                except Exception:  # noqa: BLE001 - try again at the next interval
                    pass
        finally:
            if backend is not None:
                try:
                    backend.__exit__(None, None, None)
                except Exception:  # noqa: BLE001
                    pass


@task(
    name="archive-recording",
    task_run_name="archive {plan.recording.id}",
    retries=3,
    retry_delay_seconds=[10, 30, 90],
    retry_condition_fn=retry_transient,
    no_cache=True,
    persist_result=False,
)
def archive_recording(plan: RecordingPlan) -> RecordingOutcome:
    """Carry out one recording's plan (``rtk_archiver.plan``): claim its keys, stream video and
    audio, write the sidecar last. Raises on failure (Prefect retries transient failures;
    permanent ones fail at once)."""
    settings = load_settings()
    logger = run_logger()
    started = time.monotonic()
    recording = plan.recording
    assert plan.action in TASK_ACTIONS and plan.destination is not None and plan.layout is not None
    base = RecordingOutcome(
        recording_id=recording.id, output_file_name=recording.output_file_name, kind=OutcomeKind.ARCHIVED,
        upload=plan.upload, upload_note=plan.upload_note,
    )

    with transfer_gate(plan.destination.kind), open_backend(plan.destination, settings) as backend:
        if plan.action == Action.RECORD_DELIVERY:
            return _record_delivery(backend, plan, base, logger)
        if plan.action == Action.PROVE_DELIVERY:
            settled = _prove_delivery(backend, plan, base, settings, logger, started)
            if isinstance(settled, RecordingOutcome):
                return settled
            plan, base = settled  # not the recording's bytes: archived at the fallback name
        where = backend.url(plan.layout.main)
        current = _claim_waiting(backend, plan, base, logger)
        if isinstance(current, RecordingOutcome):
            return current
        if current is None:
            logger.info("Already archived (by an overlapping run): %s at %s", recording.label(), where)
            return base.model_copy(update={"kind": OutcomeKind.ALREADY_ARCHIVED, "destination": where, "bytes_total": plan.bytes_total})
        files: list[FileEntry] = []
        try:
            if current.sidecar_is_own:  # an earlier attempt at it: it may have died mid-upload
                backend.remove_abandoned(current.layout.main)
            with ClaimKeeper(current, settings):
                _transfer(recording, backend, current, settings, logger, files)
        except BaseException as exc:
            live_tokens.discard(current.claim_token)
            overlapping = isinstance(exc, KeyTaken) and _named_by_sidecar(backend, current)
            if not files and not current.sidecar_is_own:
                _release_claim(backend, current)
            elif current.sidecar_is_own:
                _restore_known(backend, current, files)
            if overlapping:
                raise OverlappingArchive(
                    f"a file of {recording.id} was stored by someone else while this run uploaded it (an overlapping "
                    f"run of the same recording?): {exc}; retried over this recording's own files"
                ) from None
            raise
        try:
            backend.put_bytes(current.layout.sidecar, _encode(_sidecar(recording, [*current.kept, *files])), replace=True)
        finally:
            live_tokens.discard(current.claim_token)

    moved = sum(f.size for f in files)
    seconds = time.monotonic() - started
    logger.info(
        "Archived %s to %s: %d bytes in %.1f s (%.1f MB/s)",
        recording.label(), where, moved, seconds, moved / max(seconds, 1e-6) / 1e6,
    )
    return base.model_copy(
        update={
            "destination": where,
            "bytes_transferred": moved,
            "bytes_total": moved,
            "seconds": round(seconds, 3),
        }
    )


def _named_by_sidecar(backend: StorageBackend, plan: RecordingPlan) -> bool:
    """The sidecar at the plan's key names this recording (its claim, or an overlapping run's)."""
    assert plan.layout is not None
    try:
        seen = read_sidecar_seen(backend, plan.layout.sidecar)
    except Exception:  # noqa: BLE001 - then it is not known to be ours
        return False
    return seen.sidecar is not None and seen.sidecar.recording_id == plan.recording.id


def _restore_known(backend: StorageBackend, plan: RecordingPlan, stored: list[FileEntry]) -> None:
    """A failed attempt over this recording's earlier sidecar: what that sidecar knew (carried
    in this attempt's claim), updated with the files this attempt stored, is written back as
    the complete sidecar. The scrub then still sees every file's size and hash (and reports
    the one that is still damaged); the next run archives it again. Only over this attempt's
    own claim, and only when that claim carried files."""
    assert plan.layout is not None
    try:
        seen = read_sidecar_seen(backend, plan.layout.sidecar)
        claim = seen.sidecar
        if claim is None or claim.state != "claimed" or claim.claim_token != plan.claim_token or not claim.files:
            return
        new = {f.name: f for f in stored}
        files = [new.pop(f.name, f) for f in claim.files] + list(new.values())
        backend.put_bytes(plan.layout.sidecar, _encode(_sidecar(plan.recording, files)), replace=True)
    except Exception:  # noqa: BLE001 - the transfer's error is the one to report; the claim keeps them
        pass


def _release_claim(backend: StorageBackend, plan: RecordingPlan) -> None:
    """A first attempt that failed before any file was stored leaves nothing behind: its own
    claim is removed (a later attempt or run claims again). Only that claim: if an overlapping
    run of the same recording has written the sidecar since, it stays."""
    assert plan.layout is not None
    try:
        seen = read_sidecar_seen(backend, plan.layout.sidecar)
        if seen.sidecar is not None and seen.sidecar.state == "claimed" and seen.sidecar.claim_token == plan.claim_token:
            backend.delete(plan.layout.sidecar)
    except Exception:  # noqa: BLE001 - the transfer's error is the one to report
        pass


def _source_url(recording: Recording, keys, kind: str, key: str) -> str | None:
    """The download URL of the file at ``key`` in ``recording`` (as the API gives it now)."""
    if kind == "video":
        return recording.download_url
    if kind == "audio":
        return recording.audio_download_url
    track = next((t for t in keys.tracks if t.key == key), None)
    if track is None:
        return None
    return next((f.url for f in recording.track_files if f.layer == track.layer and f.name == track.source_name), None)


def _open_download(http, recording: Recording, keys, kind: str, key: str, settings: Settings, logger, refresh) -> Download:
    url = _source_url(recording, keys, kind, key)
    if not url:
        raise DownloadError(f"the recording no longer has a {kind} download URL", expired=True)
    try:
        return Download(
            http,
            url,
            kind=kind,
            expected_size=recording.file_size if kind == "video" else None,
            url_expiry=recording.download_url_expiry,
            refresh=refresh,
            chunk_size=settings.archive_chunk_size,
            max_resumes=settings.archive_download_resumes,
            logger=logger,
            stall_seconds=settings.archive_download_stall_seconds,
        )
    except httpx.HTTPError as exc:
        raise DownloadError(f"{kind} download failed: {type(exc).__name__}: {redact_urls(str(exc))}") from None


def _timeout(settings: Settings) -> httpx.Timeout:
    return httpx.Timeout(settings.archive_download_timeout_seconds, connect=15.0)


def _transfer(
    recording: Recording, backend: StorageBackend, plan: RecordingPlan, settings: Settings, logger, files: list[FileEntry]
) -> list[FileEntry]:
    """Each file of the recording (video, audio, or its tracks), streamed straight into the
    backend (appended to ``files`` as each is stored); a key is replaced only if the plan
    proved it is this recording's own. Files the plan keeps (RealtimeKit's proven upload) are
    not transferred."""
    keys = plan.layout
    assert keys is not None
    kept = {f.name for f in plan.kept} | {f.name for f in files}
    state = {"current": recording}

    def fresh_url(kind: str, key: str) -> str | None:
        state["current"] = _refresh(recording.id, settings)
        return _source_url(state["current"], keys, kind, key)

    with download_client(_timeout(settings)) as http:
        for kind, key in keys.files():
            if keys.name_of(key) in kept:
                continue
            download = _open_download(
                http, state["current"], keys, kind, key, settings, logger, lambda kind=kind, key=key: fresh_url(kind, key)
            )
            entry = stream_file(
                download, backend=backend, key=key, logger=logger,
                read_ahead=settings.archive_read_ahead_chunks, replace=plan.may_replace(key),
                metadata={"rtk-recording-id": recording.id, "rtk-meeting-id": recording.meeting_ref or ""},
            )
            track = next((t for t in keys.tracks if t.key == key), None)
            if track is not None:
                source = next((f for f in recording.track_files if f.layer == track.layer and f.name == track.source_name), None)
                entry = entry.model_copy(update={
                    "layer": track.layer, "source_name": track.source_name,
                    "participant": (source.participant() or None) if source else None,
                })
            files.append(entry)
    return files


def _claim_waiting(backend: StorageBackend, plan: RecordingPlan, base: RecordingOutcome, logger) -> RecordingPlan | RecordingOutcome | None:
    """``_claim``, waiting while another run's claim on the recording is live (as a lock
    would), up to CLAIM_WAIT_SECONDS: then the recording is reported pending."""
    waited = time.monotonic()
    while True:
        try:
            return _claim(backend, plan)
        except ArchivingElsewhere as busy:
            if time.monotonic() - waited > CLAIM_WAIT_SECONDS:
                logger.warning("%s: %s; not waiting longer", plan.recording.label(), busy)
                return base.model_copy(update={"kind": OutcomeKind.PENDING, "reason": str(busy), "retry_later": True})
            if time.monotonic() - waited < CLAIM_POLL_SECONDS:
                logger.info("%s: %s; waiting for it", plan.recording.label(), busy)
            time.sleep(CLAIM_POLL_SECONDS)


def _record_delivery(backend: StorageBackend, plan: RecordingPlan, base: RecordingOutcome, logger) -> RecordingOutcome:
    """A recording without a download URL (RealtimeKit's bucket disabled): its only copy is
    RealtimeKit's upload. Checked by its size and recorded in a sidecar (no-clobber)."""
    keys, recording = plan.layout, plan.recording
    assert keys is not None and keys.video is not None
    where = backend.url(keys.video)
    info = backend.stat(keys.video)
    why = delivery.check_size(recording, info, where)
    if why is not None:
        return base.model_copy(update={
            "kind": OutcomeKind.SKIPPED, "upload": "damaged" if info is not None else "missing", "upload_note": why,
            "reason": f"lost: RealtimeKit's bucket is disabled for it, and its only copy is not intact: {why}",
        })
    assert info is not None
    how = "size (no download URL: RealtimeKit's bucket is disabled)" if recording.file_size is not None else (
        "presence (no download URL, and the API gives no file_size)"
    )
    entry = delivery.delivered_entry(recording, keys.name_of(keys.video), info, sha256=None,
                                     hashes={k: v for k, v in info.hashes.items()}, verified_by=how)
    try:
        backend.put_bytes(keys.sidecar, _encode(_sidecar(recording, [entry])), replace=False)
    except KeyTaken:
        seen = read_sidecar_seen(backend, keys.sidecar)
        if seen.sidecar is None or seen.sidecar.recording_id != recording.id:
            raise KeyConflict(f"{backend.url(keys.sidecar)} was taken by something else while this run was planning") from None
        return base.model_copy(update={"kind": OutcomeKind.ALREADY_ARCHIVED, "destination": where, "bytes_total": info.size, "upload": "delivered"})
    logger.info("%s: RealtimeKit's upload at %s recorded (%s)", recording.label(), where, how)
    return base.model_copy(update={
        "kind": OutcomeKind.DELIVERED, "destination": where, "bytes_total": info.size, "upload": "delivered",
        "upload_note": f"verified by {how}",
    })


def _prove_delivery(
    backend: StorageBackend, plan: RecordingPlan, base: RecordingOutcome, settings: Settings, logger, started: float
) -> RecordingOutcome | tuple[RecordingPlan, RecordingOutcome]:
    """RealtimeKit's upload is at the recording's video name: claim the other names (audio,
    sidecar), prove the upload is the recording's bytes, archive the audio, write the sidecar.
    When it is not, the claim is released and the plan to archive the recording at its
    fallback name is returned (RealtimeKit's file is never touched)."""
    recording = plan.recording
    keys = plan.layout
    assert keys is not None and keys.video is not None
    where = backend.url(keys.video)
    current = _claim_waiting(backend, plan, base, logger)
    if isinstance(current, RecordingOutcome):
        return current
    if current is None:
        logger.info("Already archived (by an overlapping run): %s at %s", recording.label(), where)
        return base.model_copy(update={"kind": OutcomeKind.ALREADY_ARCHIVED, "destination": where, "bytes_total": plan.bytes_total})
    origin = plan.origin or "realtimekit"
    files: list[FileEntry] = []
    try:
        info = backend.stat(keys.video)
        why = delivery.check_size(recording, info, where, origin)
        present = [("video", keys.video, info)]
        if why is None and keys.audio and (audio_info := backend.stat(keys.audio)) is not None:
            present.append(("audio", keys.audio, audio_info))  # an audio there: proven too, else a new name
        if why is None and settings.archive_rtk_upload_proof == "size" and origin == "realtimekit" and len(present) == 1:
            files.append(delivery.delivered_entry(
                recording, keys.name_of(keys.video), info, sha256=None, hashes=dict(info.hashes),
                verified_by="size (ARCHIVE_RTK_UPLOAD_PROOF=size)",
            ))
        elif why is None:
            proven: list[FileEntry] = []
            with download_client(_timeout(settings)) as http:
                for kind, key, obj in present:
                    download = _open_download(
                        http, recording, keys, kind, key, settings, logger,
                        lambda kind=kind, key=key: _source_url(_refresh(recording.id, settings), keys, kind, key),
                    )
                    try:
                        proof = delivery.prove(recording, backend, key, obj, download, logger, kind=kind, origin=origin)
                    except SizeMismatch as exc:
                        raise DownloadError(f"{kind} download was incomplete or corrupt: {exc}") from None
                    except httpx.HTTPError as exc:
                        raise DownloadError(f"{kind} download failed: {type(exc).__name__}: {redact_urls(str(exc))}") from None
                    if proof.entry is None:
                        why = proof.why
                        break
                    proven.append(proof.entry)
            if why is None:
                files.extend(proven)
        if files:
            if current.sidecar_is_own:
                backend.remove_abandoned(keys.main)
            with ClaimKeeper(current, settings):
                _transfer(recording, backend, current, settings, logger, files)
            backend.put_bytes(keys.sidecar, _encode(_sidecar(recording, files)), replace=True)
    except BaseException:
        live_tokens.discard(current.claim_token)
        if not any(f.origin == "archiver" for f in files) and not current.sidecar_is_own:
            _release_claim(backend, current)
        raise
    live_tokens.discard(current.claim_token)
    if files:
        moved = sum(f.size for f in files if f.origin == "archiver")
        how = files[0].verified_by
        if origin == "found":
            logger.info("%s: its files were at %s without a sidecar (proven by %s): kept, sidecar written",
                        recording.label(), where, how)
            return base.model_copy(update={
                "kind": OutcomeKind.ARCHIVED if moved else OutcomeKind.ALREADY_ARCHIVED, "destination": where,
                "reason": f"found at its names without a sidecar (proven: {how}); kept, the sidecar written again",
                "bytes_transferred": moved, "bytes_total": sum(f.size for f in files),
                "seconds": round(time.monotonic() - started, 3),
            })
        logger.info("%s: delivered by RealtimeKit at %s (verified by %s); %d bytes archived beside it",
                    recording.label(), where, how, moved)
        return base.model_copy(update={
            "kind": OutcomeKind.DELIVERED, "destination": where, "upload": "delivered",
            "upload_note": f"verified by {how}", "bytes_transferred": moved, "bytes_total": sum(f.size for f in files),
            "seconds": round(time.monotonic() - started, 3),
        })
    # not the recording's bytes: RealtimeKit's file stays as it is; the recording gets its own name
    _release_claim(backend, current)
    logger.warning("%s: %s; archiving the recording under its own name", recording.label(), why)
    if plan.fallback is None:
        raise KeyConflict(
            f"{why}; it is kept as it is, and every other name this recording may take is taken: nothing archived"
        )
    damaged = {"upload": "damaged", "upload_note": why} if origin == "realtimekit" else {}
    fallback = plan.model_copy(update={
        "action": Action.ARCHIVE, "layout": plan.fallback, "fallback": None, "own": [], "sidecar_is_own": False,
        "sidecar_seen_at": None, "claim_token": None, "bytes_total": recording.file_size or 0, "origin": None, **damaged,
    })
    return fallback, base.model_copy(update=damaged)


def _refresh(recording_id: str, settings: Settings) -> Recording:
    try:
        with RealtimeKitAPI(settings, throttle=api_throttle) as api:
            return api.get_recording(recording_id)
    except ApiError as exc:
        raise DownloadError(f"could not refresh the download URLs: {exc}") from None
