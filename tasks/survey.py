"""Step 2 of planning a run (see ``rtk_archiver.plan``): look at what a destination holds
at the names its recordings may take. Read-only: stats and sidecar reads, nothing written."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from rtk_archiver.models import Sidecar
from rtk_archiver.plan import Observed, SidecarSeen, Target, is_damaged_delivery, own_names
from rtk_archiver.settings import load_settings
from storage_backends import Destination, StorageBackend, StorageError, open_backend
from tasks.define import task
from tasks.retry import is_permanent, retry_transient

#: a sidecar is far smaller (models.SIDECAR_TEXT_LIMIT); anything larger is not one
SIDECAR_READ_LIMIT = 1 << 20


def read_sidecar_seen(backend: StorageBackend, key: str) -> SidecarSeen:
    raw = backend.read_bytes(key, SIDECAR_READ_LIMIT)
    if raw is None:
        return SidecarSeen(present=False)
    try:
        return SidecarSeen(present=True, sidecar=Sidecar.model_validate_json(raw))
    except ValueError:
        return SidecarSeen(present=True, sidecar=None)  # something the archiver did not write


def survey_one(backend: StorageBackend, target: Target) -> Observed:
    """Candidates in order: read the sidecar; if it names this recording, stat what it
    lists and stop; else stat the candidate's video and audio names, and stop at the first
    free one unless another recording of the run wants the same name."""
    obs = Observed()
    rid = target.recording.id

    def stat(key: str) -> None:
        if key not in obs.objects:
            obs.objects[key] = backend.stat(key)

    for cand in target.candidates:
        seen = obs.sidecars[cand.sidecar] = read_sidecar_seen(backend, cand.sidecar)
        if seen.sidecar is not None and seen.sidecar.recording_id == rid:
            for name in sorted(own_names(cand, seen.sidecar)):
                stat(cand.beside(name))
            for key in cand.all():
                if key != cand.sidecar:
                    stat(key)
            if seen.sidecar.state == "complete" and is_damaged_delivery(seen.sidecar, cand, obs.objects):
                continue  # RealtimeKit's upload it records changed: the recording needs another name
            break
        for key in cand.all():
            if key != cand.sidecar:
                stat(key)
        free = not seen.present and all(obs.objects[k] is None for k in cand.all() if k != cand.sidecar)
        if free and not target.contested:
            break
    return obs


@task(name="survey-destination", retries=3, retry_delay_seconds=[5, 20, 60], retry_condition_fn=retry_transient,
      no_cache=True, persist_result=False)
def survey_destination(destination: Destination, targets: list[Target]) -> dict[str, Observed]:
    """What ``destination`` holds at the candidate names of each target (by recording id).
    A permanent failure (credentials, missing bucket, refused host key) is recorded for every
    recording of the destination; a transient one fails the task, which Prefect retries."""
    settings = load_settings()
    local = threading.local()
    opened: list[StorageBackend] = []
    lock = threading.Lock()

    def backend() -> StorageBackend:
        b = getattr(local, "backend", None)
        if b is None:
            b = local.backend = open_backend(destination, settings)
            with lock:
                opened.append(b)
        return b

    def one(target: Target) -> tuple[str, Observed]:
        try:
            return target.recording.id, survey_one(backend(), target)
        except StorageError as exc:
            if not is_permanent(exc):
                raise  # the task is retried
            # one odd entry (a symlink out of the root, a directory at a sidecar name) fails
            # the recording it belongs to, not the whole destination
            return target.recording.id, Observed(error=str(exc), permanent=True)

    try:
        workers = max(1, min(settings.archive_max_concurrent, len(targets)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rtk-survey") as pool:
            return dict(pool.map(one, targets))
    finally:
        for b in opened:
            try:
                b.close()
            except Exception:  # noqa: BLE001 - closing after the answer is known
                pass
