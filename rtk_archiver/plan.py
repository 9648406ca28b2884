"""Decide once what every recording of a run becomes: verdict, destination, keys.

A run is planned in three steps; only the middle one does I/O:

1. ``targets_for`` (pure): per recording, whether it can be archived now, its destination
   (the run's override, else its ``storage_config``, else the default destination) and the
   only names it may ever take there, in order: the plain name, the name with its id, and a
   second name with its id (``rtk_archiver.naming.candidate_keys``).
2. ``tasks.survey`` (I/O): what the destination holds at those names (sidecars, sizes).
3. ``plan_run`` (pure): the verdict and the keys of every recording, from 1 and 2.

The rules of step 3, which make a key belong to exactly one recording:

* A sidecar naming the recording (complete, or a claim left by a killed run) makes that
  candidate its own: complete and every listed file there at its size (and hashes the
  backend reports) -> already archived, nothing moves; else it is archived again there,
  replacing only the files that sidecar lists or claims.
* Otherwise the first candidate where nothing at all exists (no sidecar, no video, no audio)
  and that no other recording of this run takes (oldest recording first; names compared
  case-insensitively, for case-insensitive file systems) -> archived there, without ever
  replacing anything (every write is no-clobber).
* Otherwise -> failed: the names are taken by files the archiver did not write, which are
  never overwritten nor deleted.

The archive task carries a plan out: it claims the keys (a no-clobber write of a claim
sidecar), writes the files, then the complete sidecar. If the destination changed between
the survey and the claim (another run), the claim says so and the task stops rather than
guess.
"""

from __future__ import annotations

import posixpath
from datetime import datetime, timedelta, timezone
import re
from collections.abc import Iterable
from enum import Enum

from pydantic import BaseModel, Field

from rtk_archiver.models import FileEntry, ObjectInfo, OutcomeKind, Recording, Sidecar
from rtk_archiver.naming import RecordingKeys, candidate_keys, safe_relative_path, split_ext, video_name
from storage_backends.destination import (
    Destination,
    InvalidDestination,
    UnsupportedDestination,
    destination_from_storage_config,
    parse_destination_url,
)


#: bounds on a recording's directory (storage_config.path), far below the usual PATH_MAX of
#: 4096 bytes with the root and names added: a clear refusal instead of ENAMETOOLONG
MAX_DIRECTORY_BYTES = 1024
MAX_DIRECTORY_DEPTH = 32


#: how long RealtimeKit keeps a recording's files on its own bucket
RETENTION = timedelta(days=7)


def bucket_state(recording: Recording, now: datetime | None = None) -> str:
    """Where RealtimeKit's own copy of a finished recording stands, from its own fields:

    * ``served``: RealtimeKit serves its files now (a download URL);
    * ``expired``: it was on RealtimeKit's bucket and is gone (a URL expiry without a URL, or
      the meeting's bucket enabled, or, when nothing says, older than the retention);
    * ``never``: it never was on RealtimeKit's bucket (the bucket disabled: no URL and no
      expiry are generated at all, per the Recordings reference): its only copy is
      RealtimeKit's upload to its storage_config, if it has one."""
    if recording.has_files:
        return "served"
    if recording.download_url_expiry is not None:
        return "expired"
    enabled = recording.bucket_enabled
    if enabled is not None:
        return "expired" if enabled else "never"
    now = now or datetime.now(timezone.utc)
    ref = recording.stopped_time or recording.invoked_time
    return "expired" if ref < now - RETENTION else "never"


def retention_end(recording: Recording) -> datetime:
    """When RealtimeKit deletes the recording's files from its bucket (the archiver refreshes
    presigned URLs, so their own expiry is not a deadline)."""
    return (recording.stopped_time or recording.invoked_time) + RETENTION


def delivers_to_storage_config(recording: Recording, override: str | None) -> bool:
    """RealtimeKit uploads the recording itself to its storage_config, at
    ``<path>/<output_file_name>`` (recording-guide/custom-cloud-storage): the archiver then
    expects that file at the recording's plain name, and checks it instead of storing a second
    copy. Not for a run with a destination override (another place), nor for a track
    recording (always on RealtimeKit's bucket), nor when the name is not safe as it is (the
    archiver would not write, nor read, that name)."""
    sc = recording.storage_config
    return (
        not override and sc is not None and bool(sc.type) and not recording.is_track
        and video_name(recording.output_file_name) == recording.output_file_name
    )


def why_not_archivable(recording: Recording) -> tuple[OutcomeKind, str] | None:
    """None when the recording can be archived now; else what to report and why."""
    if recording.status == "ERRORED":
        return OutcomeKind.SKIPPED, "the recording ERRORED on RealtimeKit; there is no file to archive"
    if recording.status != "UPLOADED" or recording.stopped_time is None:
        return OutcomeKind.PENDING, f"not finished yet (status {recording.status}); a later run archives it"
    if not recording.has_files:
        state = bucket_state(recording)
        if state == "expired":
            return OutcomeKind.SKIPPED, "no download_url: its files expired from RealtimeKit's bucket"
        if recording.storage_config is None or not recording.storage_config.type:
            return OutcomeKind.SKIPPED, (
                "stored nowhere: RealtimeKit's bucket is disabled for it and it has no storage_config, so "
                "RealtimeKit kept no copy (an invalid recording, per RealtimeKit's docs)"
            )
        return OutcomeKind.SKIPPED, "no download_url: RealtimeKit's bucket is disabled for it"
    return None


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
    raise UnsupportedDestination("the recording has no storage_config and ARCHIVE_DEFAULT_DESTINATION is not set")


def place(recording: Recording, destination: Destination, from_storage_config: bool) -> tuple[Destination, str]:
    """The destination root and the recording's directory under it.

    ``storage_config.path`` is the recording's directory. On an SFTP destination that comes
    from the storage_config, a path starting with ``/`` is absolute on the server; anywhere
    else (object stores, an override or default destination) it is relative to the root
    (leading ``/`` dropped). Either way it is made safe (``..`` and the like never followed)."""
    sc = recording.storage_config
    raw = sc.path if sc is not None else None
    directory = safe_relative_path(raw)
    if len(directory.encode()) > MAX_DIRECTORY_BYTES or directory.count("/") >= MAX_DIRECTORY_DEPTH:
        raise InvalidDestination(
            f"storage_config.path is too long or too deep ({len(directory.encode())} bytes, "
            f"{directory.count('/') + 1} levels; at most {MAX_DIRECTORY_BYTES} bytes and {MAX_DIRECTORY_DEPTH} levels)"
        )
    if from_storage_config and destination.kind == "sftp" and raw and raw.strip().startswith("/"):
        return destination.model_copy(update={"root": "/"}), directory
    return destination, directory


def _from_storage_config(recording: Recording, override: str | None) -> bool:
    """Whether the recording's destination is its storage_config's (``resolve_destination``)."""
    sc = recording.storage_config
    return not override and bool(sc is not None and sc.type)


def placement(recording: Recording, override: str | None, default: str | None) -> tuple[Destination, str]:
    """Where a recording's files are: its destination root and directory under it. Archiving,
    the scrub and the preflight all ask this one function."""
    return place(recording, resolve_destination(recording, override, default), _from_storage_config(recording, override))


def scrub_scope(recording: Recording, override: str | None, default: str | None) -> tuple[Destination, str]:
    """What a scrub walks to find this recording's archive: its destination root (prefix
    ``""``), or, for an absolute SFTP ``storage_config.path`` (archived outside any root),
    that directory alone (prefix ``"dir/"``; ``"/"`` itself: prefix ``"/"``, not walked)."""
    base = resolve_destination(recording, override, default)
    dest, directory = place(recording, base, _from_storage_config(recording, override))
    if dest == base:
        return dest, ""
    return dest, f"{directory}/" if directory else "/"


def scope_label(destination: Destination, prefix: str) -> str:
    """How a scrub target (a destination, maybe one directory of it) is named."""
    return destination.display_url(prefix.strip("/")) if prefix else destination.display_url()


class Target(BaseModel):
    """Step 1: where one recording would go, decided without I/O."""

    recording: Recording
    verdict: OutcomeKind | None = None  # pending / skipped / failed before any I/O; None: archivable
    reason: str | None = None
    destination: Destination | None = None
    candidates: list[RecordingKeys] = Field(default_factory=list)  # plain name first, then with the id
    contested: bool = False  # another recording of the run wants one of its plain names
    retry_later: bool = False  # skipped for a reason a configuration change can remove
    #: RealtimeKit uploads it to this destination itself, at ``candidates[0].video``
    delivery: bool = False
    #: files at its plain names without a sidecar (an archive whose sidecar was lost) are
    #: checked: proven to be its bytes, they are kept and the sidecar written again
    found: bool = False

    @property
    def place_id(self) -> str:
        """Identity of the destination (for comparing keys across recordings)."""
        return self.destination.display_url() if self.destination else ""


def targets_for(
    recordings: Iterable[Recording], override: str | None, default: str | None, *, archivable_only: bool = True
) -> list[Target]:
    """Step 1 for a whole run, oldest recording first (that order decides who gets a name).
    ``archivable_only=False``: also recordings that cannot be archived now (to find where
    an earlier run archived them: the watchdog)."""
    targets: list[Target] = []
    for rec in sorted(recordings, key=lambda r: (r.stopped_time or r.invoked_time, r.id)):
        verdict = why_not_archivable(rec) if archivable_only else None
        delivery = delivers_to_storage_config(rec, override)
        if verdict is not None and delivery and not rec.has_files and bucket_state(rec) == "never":
            verdict = None  # its only copy is RealtimeKit's upload: checked (size) and recorded
        if verdict is not None:
            targets.append(Target(recording=rec, verdict=verdict[0], reason=verdict[1]))
            continue
        try:
            dest, directory = placement(rec, override, default)
        except UnsupportedDestination as exc:
            targets.append(Target(recording=rec, verdict=OutcomeKind.SKIPPED, reason=str(exc), retry_later=True))
            continue
        except InvalidDestination as exc:
            targets.append(Target(recording=rec, verdict=OutcomeKind.FAILED, reason=str(exc)))
            continue
        candidates = candidate_keys(rec, directory)
        targets.append(Target(recording=rec, destination=dest, candidates=candidates, delivery=delivery,
                              found=not delivery and not rec.is_track))
    # contested: one of its names (any candidate) is also a name another recording of the run
    # may take; then the survey looks at all its candidates, not only up to the first free one
    wanted: dict[tuple[str, str], set[str]] = {}
    for t in targets:
        for cand in t.candidates:
            for key in cand.all():
                wanted.setdefault((t.place_id, _fold(key)), set()).add(t.recording.id)
    for t in targets:
        t.contested = any(len(wanted[(t.place_id, _fold(k))]) > 1 for c in t.candidates for k in c.all())
    return targets


def _fold(key: str) -> str:
    return key.casefold()


# -- step 2's answer ---------------------------------------------------------------------------
class SidecarSeen(BaseModel):
    """What is at a sidecar key: nothing, a sidecar (of some recording), or something else."""

    present: bool = False
    sidecar: Sidecar | None = None  # None while present: not a sidecar (a file the archiver did not write)


class Observed(BaseModel):
    """What the survey saw at a destination for one recording: key -> stat (None: absent)."""

    objects: dict[str, ObjectInfo | None] = Field(default_factory=dict)
    sidecars: dict[str, SidecarSeen] = Field(default_factory=dict)
    error: str | None = None  # the destination could not be read (the recording fails with it)
    permanent: bool = False


# -- step 3 --------------------------------------------------------------------------------------
class Action(str, Enum):
    ARCHIVE = "archive"  # transfer (fresh names, or again over its own files)
    ALREADY_ARCHIVED = "already archived"
    #: RealtimeKit's upload is at the video name: prove it is the recording's bytes (download
    #: through the hashes, nothing uploaded), then archive only the rest (audio, sidecar); if
    #: it is not, archive the recording at ``fallback``
    PROVE_DELIVERY = "check RealtimeKit's upload"
    #: RealtimeKit's upload is the only copy (no download URL): check its size, write the sidecar
    RECORD_DELIVERY = "record RealtimeKit's upload"
    NONE = "none"  # pending / skipped / failed: see verdict


#: the actions the archive task carries out
TASK_ACTIONS = frozenset({Action.ARCHIVE, Action.PROVE_DELIVERY, Action.RECORD_DELIVERY})


class RecordingPlan(BaseModel):
    """What one recording becomes in this run; the archive task carries it out."""

    recording: Recording
    action: Action
    verdict: OutcomeKind | None = None
    reason: str | None = None
    destination: Destination | None = None
    layout: RecordingKeys | None = None
    #: keys this recording's own sidecar lists or claims: the only ones a write may replace
    own: list[str] = Field(default_factory=list)
    #: the sidecar already at ``keys.sidecar`` names this recording
    sidecar_is_own: bool = False
    retry_later: bool = False
    #: set by the archive task once it has written its claim (see tasks/archive.py)
    claim_token: str | None = None
    #: when the sidecar the survey saw at ``keys.sidecar`` was written (``sidecar_is_own``): the
    #: archive task tells from it whether another run wrote that sidecar since
    sidecar_seen_at: datetime | None = None
    bytes_total: int = 0
    #: PROVE_DELIVERY: where the recording is archived if RealtimeKit's upload is not its bytes
    fallback: RecordingKeys | None = None
    #: what is known of RealtimeKit's own upload (RecordingOutcome.upload) and a detail
    upload: str | None = None
    upload_note: str | None = None
    #: PROVE_DELIVERY: whose files are at the plain names: "realtimekit" (its upload to the
    #: storage_config), "found" (no sidecar beside them: an archive whose sidecar was lost?)
    origin: str | None = None
    #: files of the recording's own sidecar that RealtimeKit wrote and that are intact: kept as
    #: they are (never transferred again, never replaced), recorded again in the new sidecar
    kept: list[FileEntry] = Field(default_factory=list)

    def may_replace(self, key: str) -> bool:
        return key in self.own


def own_names(cand: RecordingKeys, sidecar: Sidecar, *, legacy: bool = True) -> set[str]:
    """The names a sidecar at ``cand.sidecar`` may claim for its recording: the candidate's
    own video and audio names, and the audio name of the earlier layout (``<stem>.audio.<ext>``).
    Anything else it lists (another file's name, ``../x``, a path) is never trusted: a sidecar
    planted or damaged cannot make the archiver replace, or count as archived, a file that is
    not this recording's. ``legacy=False``: without the earlier layout's audio name, which the
    archiver only reads, never replaces (a new recording's audio may have that name now)."""
    if cand.video is None:  # a track recording: its track names only
        allowed = {posixpath.basename(t.key) for t in cand.tracks}
        return {n for n in sidecar.names() if n in allowed}
    video = posixpath.basename(cand.video)
    allowed = {video} | ({posixpath.basename(cand.audio)} if cand.audio else set())
    legacy_audio = re.compile(re.escape(split_ext(video)[0]) + r"\.audio\.[A-Za-z0-9]{1,5}")
    return {n for n in sidecar.names() if n in allowed or (legacy and legacy_audio.fullmatch(n))}


def delivered_names(sidecar: Sidecar) -> set[str]:
    """Names of files the archiver did not write that the sidecar records (RealtimeKit's
    upload, files found without a sidecar and proven): never replaced, never deleted by the
    archiver (they are not its own)."""
    return {f.name for f in sidecar.files if f.origin != "archiver"}


def is_archived(sidecar: Sidecar, keys: RecordingKeys, objects: dict[str, ObjectInfo | None]) -> bool:
    """True when the complete sidecar's every file is at the destination, at its size and
    with the hashes the backend reports, under names that are this recording's own (its video
    under the video name)."""
    if sidecar.state != "complete" or not sidecar.files:
        return False
    trusted = own_names(keys, sidecar)
    if any(f.name not in trusted for f in sidecar.files):
        return False
    if keys.video is None:  # a track recording: every file it lists now is there
        listed = {keys.beside(f.name) for f in sidecar.files if f.kind == "track"}
        if not keys.tracks or any(t.key not in listed for t in keys.tracks):
            return False
    elif not any(f.kind == "video" and keys.beside(f.name) == keys.video for f in sidecar.files):
        return False
    if keys.audio is not None and not any(f.kind == "audio" for f in sidecar.files):
        return False  # the recording has an audio file now that the archive lacks
    for entry in sidecar.files:
        info = objects.get(keys.beside(entry.name))
        if info is None or info.size != entry.size:
            return False
        for name, value in info.hashes.items():
            known = entry.sha256 if name == "sha256" else entry.hashes.get(name)
            if known is not None and known != value:
                return False
    return True


def _intact(entry: FileEntry, info: ObjectInfo | None) -> bool:
    if info is None or info.size != entry.size:
        return False
    for name, value in info.hashes.items():
        known = entry.sha256 if name == "sha256" else entry.hashes.get(name)
        if known is not None and known != value:
            return False
    return True


def is_damaged_delivery(sidecar: Sidecar, keys: RecordingKeys, objects: dict[str, ObjectInfo | None]) -> bool:
    """The sidecar records RealtimeKit's upload as the recording, and that file is no longer
    intact: the archiver never replaces it, it archives the recording under another name."""
    return any(
        f.origin != "archiver" and not _intact(f, objects.get(keys.beside(f.name))) for f in sidecar.files
    )


def _where(t: Target, key: str) -> str:
    return t.destination.display_url(key) if t.destination else key


def _delivery_plan(
    t: Target, seen: Observed, video: ObjectInfo, *, fallback: RecordingKeys | None = None, own: list[str] | None = None,
    sidecar_seen_at: datetime | None = None,
) -> RecordingPlan:
    """RealtimeKit's upload is at the recording's plain video name: prove it (or, without a
    download URL, record it at its size)."""
    first = t.candidates[0]
    if fallback is None and t.recording.has_files:
        fallback = next(
            (c for c in t.candidates[1:] if not (seen.sidecars.get(c.sidecar) or SidecarSeen(present=True)).present
             and all(k in seen.objects and seen.objects[k] is None for k in c.all() if k != c.sidecar)),
            None,
        )
    return RecordingPlan(
        recording=t.recording,
        action=Action.PROVE_DELIVERY if t.recording.has_files else Action.RECORD_DELIVERY,
        destination=t.destination, layout=first, fallback=fallback, bytes_total=video.size,
        upload="delivered" if t.delivery else None, origin="realtimekit" if t.delivery else "found",
        own=own or [], sidecar_is_own=own is not None, sidecar_seen_at=sidecar_seen_at,
    )


def plan_run(targets: list[Target], observed: dict[str, Observed], force_ids: Iterable[str] = ()) -> list[RecordingPlan]:
    """Step 3: the plan of every recording, in the order of ``targets`` (oldest first).

    ``force_ids``: recordings to archive again over their own files even when they look
    archived (the scrub found a file missing or changed)."""
    force = set(force_ids)
    plans: dict[str, RecordingPlan] = {}
    taken: set[tuple[str, str]] = set()
    #: recordings whose recorded RealtimeKit upload changed since (pass 1): why
    damaged: dict[str, str] = {}

    def claim(t: Target, cand: RecordingKeys) -> None:
        for key in cand.all():
            taken.add((t.place_id, _fold(key)))

    # pass 1: recordings that already own a candidate keep it
    for t in targets:
        rid = t.recording.id
        if t.verdict is not None or not t.candidates:
            plans[rid] = RecordingPlan(
                recording=t.recording, action=Action.NONE, verdict=t.verdict, reason=t.reason, retry_later=t.retry_later
            )
            continue
        seen = observed.get(rid) or Observed()
        if seen.error is not None:
            plans[rid] = RecordingPlan(
                recording=t.recording, action=Action.NONE, verdict=OutcomeKind.FAILED, reason=seen.error,
                destination=t.destination,
            )
            continue
        for cand in t.candidates:
            sc = seen.sidecars.get(cand.sidecar, SidecarSeen()).sidecar
            if sc is None or sc.recording_id != rid:
                continue
            if sc.state == "complete" and is_damaged_delivery(sc, cand, seen.objects):
                # RealtimeKit's upload it recorded changed since: kept as it is (the scrub reports
                # it), and the recording gets a name of its own (pass 2)
                claim(t, cand)
                damaged[rid] = (
                    f"RealtimeKit's upload at {_where(t, cand.main)}, recorded as this recording's, changed since"
                )
                continue
            keys = cand
            claim(t, keys)
            delivered = delivered_names(sc)
            own = [keys.sidecar] + [keys.beside(n) for n in sorted(own_names(cand, sc, legacy=False) - delivered)]
            total = sum(f.size for f in sc.files)
            if (
                (t.delivery or t.found) and cand is t.candidates[0] and sc.state == "claimed" and cand.video
                and posixpath.basename(cand.video) not in sc.claimed
            ):
                # an earlier attempt at checking RealtimeKit's upload died: check it again
                video = seen.objects.get(cand.video)
                if video is not None:
                    plans[rid] = _delivery_plan(t, seen, video, own=own, sidecar_seen_at=sc.archived_at)
                    break
            if rid not in force and is_archived(sc, keys, seen.objects):
                plans[rid] = RecordingPlan(
                    recording=t.recording, action=Action.ALREADY_ARCHIVED, destination=t.destination, layout=keys,
                    own=own, sidecar_is_own=True, bytes_total=total,
                    upload="delivered" if delivered else None,
                )
            else:
                plans[rid] = RecordingPlan(
                    recording=t.recording, action=Action.ARCHIVE, destination=t.destination, layout=keys, own=own,
                    sidecar_is_own=True, bytes_total=total or (t.recording.file_size or 0),
                    sidecar_seen_at=sc.archived_at,
                    kept=[f for f in sc.files if f.name in delivered and sc.state == "complete"],
                )
            break
    # pass 2: the others take the first free name nobody else in the run takes (a recording
    # RealtimeKit uploads itself: its plain name, where that upload is, first)
    for t in targets:
        rid = t.recording.id
        if rid in plans:
            continue
        seen = observed.get(rid) or Observed()

        def free(cand: RecordingKeys) -> bool:
            sidecar_there = seen.sidecars.get(cand.sidecar)
            return (
                sidecar_there is not None
                and not sidecar_there.present
                and all(k in seen.objects and seen.objects[k] is None for k in cand.all() if k != cand.sidecar)
                and not any((t.place_id, _fold(k)) in taken for k in cand.all())
            )

        upload: str | None = "damaged" if rid in damaged else None
        note: str | None = damaged.get(rid)
        first = t.candidates[0]
        if (t.delivery or t.found) and rid not in damaged:
            video = seen.objects.get(first.video) if first.video else None
            size = t.recording.file_size
            rest_free = (
                first.sidecar in seen.sidecars and not seen.sidecars[first.sidecar].present
                and (first.audio is None or first.audio in seen.objects)  # an audio there is proven too
                and not any((t.place_id, _fold(k)) in taken for k in first.all())
            )
            if video is None and first.video in seen.objects:
                if t.delivery:
                    upload = "missing"
                    note = f"RealtimeKit's own upload is not at {_where(t, first.main)}"
            elif video is not None and size is not None and video.size != size:
                if t.delivery:
                    upload = "damaged"
                    note = f"RealtimeKit's upload at {_where(t, first.main)} holds {video.size} bytes, the recording has {size}"
            elif video is not None and rest_free:
                claim(t, first)
                plan = _delivery_plan(t, seen, video, fallback=next((c for c in t.candidates[1:] if free(c)), None))
                if plan.fallback is not None:
                    claim(t, plan.fallback)
                plans[rid] = plan
                continue
            elif video is not None and not t.recording.has_files:
                plans[rid] = RecordingPlan(
                    recording=t.recording, action=Action.NONE, verdict=OutcomeKind.FAILED, destination=t.destination,
                    reason=(
                        f"RealtimeKit's upload, its only copy, is at {_where(t, first.main)}, but the name of its sidecar "
                        "(or audio) is taken by a file the archiver did not write: nothing recorded"
                    ),
                )
                continue
        if t.delivery and not t.recording.has_files:  # its only copy, RealtimeKit's upload, is not there (intact)
            what = "damaged" if upload == "damaged" else "missing"
            plans[rid] = RecordingPlan(
                recording=t.recording, action=Action.NONE, verdict=OutcomeKind.SKIPPED, destination=t.destination,
                upload=what, upload_note=note,
                reason=(
                    f"lost: RealtimeKit's bucket is disabled for it, and its only copy, RealtimeKit's upload to "
                    f"{t.place_id}, is {'not intact' if what == 'damaged' else 'not there'}"
                    + (f" ({note})" if note else "")
                ),
            )
            continue
        for cand in t.candidates:
            if free(cand):
                claim(t, cand)
                plans[rid] = RecordingPlan(
                    recording=t.recording, action=Action.ARCHIVE, destination=t.destination, layout=cand,
                    bytes_total=t.recording.file_size or 0, upload=upload, upload_note=note,
                )
                break
        else:
            names = ", ".join(posixpath.basename(c.main) for c in t.candidates)
            plans[rid] = RecordingPlan(
                recording=t.recording, action=Action.NONE, verdict=OutcomeKind.FAILED, destination=t.destination,
                upload=upload, upload_note=note,
                reason=(
                    f"every name this recording may take ({names}, or their audio / sidecar names) is taken at "
                    f"{t.place_id or 'the destination'}, by files this recording's archive did not write or by other "
                    "recordings; nothing is overwritten. Move the files away, or archive this recording with "
                    "--destination elsewhere"
                ),
            )
    return [plans[t.recording.id] for t in targets]
