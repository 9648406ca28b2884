"""The simulator's in-memory state: recordings, credentials, URL signing, and datasets."""

from __future__ import annotations

import hashlib
import hmac
import random
import re
import secrets
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from collections.abc import Callable
from typing import Any

STATUSES = ("INVOKED", "RECORDING", "UPLOADING", "UPLOADED", "ERRORED", "PAUSED")
SECRET_FIELDS = ("access_key", "secret", "password", "private_key")
RETENTION = timedelta(days=7)
#: a track recording's output_file_name, as RealtimeKit documents it
TRACK_TEMPLATE = "{{file_name_prefix}}_{{user_id}}_{{peer_id}}_{{stream_kind}}_{{media_kind}}_{{date_time}}.webm"
#: the credentials a simulator has unless a test gives it others (``rtk-archiver simulator`` never does)
DEFAULT_TOKEN, DEFAULT_ACCOUNT_ID, DEFAULT_APP_ID = "sim-token", "sim-account", "sim-app"
#: the statuses a recording can be added with through the simulator's controls (``/_sim``): not
#: UPLOADING, which nothing would ever finish (a stopped recording passes through it by itself)
ADDABLE_STATUSES = ("UPLOADED", "RECORDING", "PAUSED", "INVOKED", "ERRORED")
#: the largest file the controls accept (1 PiB, the largest ``fileSize`` the webhook receiver takes);
#: sizes cost nothing: media is generated as it is read (simulator/content.py)
MAX_FILE_SIZE = 1 << 50


def _utc(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "meeting"


@dataclass
class SimRecording:
    """One recording as the simulator holds it (the API view is built from it per request)."""

    id: str
    status: str
    invoked_time: datetime
    started_time: datetime | None
    stopped_time: datetime | None
    output_file_name: str
    file_size: int
    audio_size: int | None  # None: no separate audio file
    meeting_id: str
    meeting_title: str
    session_id: str | None
    storage_config: dict[str, Any] | None  # as given, secrets included: never served
    bucket_enabled: bool = True
    recording_duration: Any = None
    extra: dict[str, Any] = field(default_factory=dict)  # unknown fields, served as-is
    #: "COMPOSITE" (a video, maybe an audio) or "TRACK" (one file per participant: ``tracks``)
    type: str = "COMPOSITE"
    #: a track recording's files: (name, size), served as ``track-<n>``
    tracks: list[tuple[str, int]] = field(default_factory=list)
    #: what RealtimeKit's own upload to the storage_config does (simulator/delivery.py):
    #: "complete", "missing" (the upload failed), "truncated", "different" (other bytes)
    upload: str = "complete"
    #: what happened to that upload ("uploaded to ...", or why not)
    upload_result: str | None = None
    #: the object's version at RealtimeKit's bucket: 0 is the recording's media; a later
    #: version (the file replaced: same name, other bytes) is ``media_source(id, version)``'s
    version: int = 0

    @property
    def expired(self) -> bool:
        ref = self.stopped_time or self.invoked_time
        return ref < datetime.now(timezone.utc) - RETENTION

    def track_kind(self, n: int) -> str:
        return f"track-{n}"


@dataclass
class Faults:
    """Faults the simulator injects, set per test (``state.faults``). Counters are consumed
    one per request."""

    # --- API ---
    api_errors: list[int] = field(default_factory=list)  # statuses to answer next, one per API request
    retry_after: int = 1  # Retry-After (seconds) sent with an injected 429 / 503
    api_delay: float = 0.0  # seconds before every API answer
    api_resets: int = 0  # next N API answers: headers, then the connection drops
    api_malformed: int = 0  # next N API answers: 200 with a body that is not JSON
    total_count_offset: int = 0  # paging.total_count off by this much
    on_list_page: Callable[[int], None] | None = None  # run before serving page N (change data mid-listing)
    leak_secrets: bool = False  # serve storage_config secrets (a misbehaving API)
    # --- downloads ---
    download_resets: int = 0  # next N downloads drop the connection after ``reset_after`` bytes
    reset_after: int = 64 * 1024
    download_stalls: int = 0  # next N downloads stall ``stall_seconds`` after ``reset_after`` bytes
    stall_seconds: float = 5.0
    download_trickles: int = 0  # next N downloads: ``reset_after`` bytes, then ``trickle_bytes`` every ``trickle_interval`` s
    trickle_bytes: int = 1
    trickle_interval: float = 2.0
    trickle_max_seconds: float | None = None  # then drop the connection (None: trickle to the end)
    ignore_range: bool = False  # answer Range requests with 200 and the whole file
    size_skew: int = 0  # serve file_size + size_skew bytes (longer or shorter than the API says)
    error_pages: int = 0  # next N downloads answer 200 with ``error_page`` instead of the media
    error_page: bytes = b"<html><head><title>Error</title></head><body>AccessDenied</body></html>"
    error_page_type: str | None = "text/html"  # its Content-Type (None: no Content-Type header)
    media_type: str | None = ""  # Content-Type of the media: "" video/mp4 or audio/mp4; None: none
    chunked: bool = False  # media without Content-Length (Transfer-Encoding: chunked)
    hide_file_size: bool = False  # the API serves file_size null
    fault_kinds: tuple[str, ...] = ("video", "audio")  # the media the download faults apply to
    replace_on_reset: bool = False  # an injected reset also replaces the file (its version + 1, same size)
    honour_if_range: bool = True  # False: a Range is served even when If-Range names another version
    validators: bool = True  # serve ETag and Last-Modified with the media (False: neither)


class SimulatorState:
    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        account_id: str = DEFAULT_ACCOUNT_ID,
        app_id: str = DEFAULT_APP_ID,
        url_ttl_seconds: float = 3600.0,
        default_per_page: int = 25,
        max_per_page: int = 100,
        upload_delay_seconds: float = 1.0,
    ) -> None:
        self.token = token
        self.account_id = account_id
        self.app_id = app_id
        self.url_ttl_seconds = url_ttl_seconds
        self.default_per_page = default_per_page
        self.max_per_page = max_per_page
        self.upload_delay_seconds = upload_delay_seconds
        self.faults = Faults()
        self.public_url = "http://127.0.0.1"  # set by the server to where it listens
        self.recordings: dict[str, SimRecording] = {}
        #: (recording id, kind) -> downloads that started at byte 0 (tests count transfers)
        self.downloads: Counter[tuple[str, str]] = Counter()
        self.lock = threading.RLock()
        self._key = secrets.token_bytes(32)
        self._counter = 0
        #: RealtimeKit's own upload of a finished recording to its storage_config
        #: (simulator/delivery.py ``Deliverer``); None: no upload is made (as if every one failed)
        self.deliverer: Callable[[SimRecording], None] | None = None

    # -- building recordings -------------------------------------------------------------------
    def add_recording(self, **fields: Any) -> dict[str, Any]:
        """Add a recording; any field can be given. Returns its API view (no secrets).

        Besides API fields: ``audio`` (bool) or ``audio_size`` for a separate audio file,
        ``bucket_enabled`` (False: no download URLs at all), ``meeting_title``, ``type="TRACK"``
        with ``tracks`` (a number of participant files, or [(name, size), ...]), ``upload``
        (what RealtimeKit's own upload to the storage_config does: see SimRecording); unknown
        keys are served as extra fields."""
        with self.lock:
            self._counter += 1
            n = self._counter
        now = datetime.now(timezone.utc)
        status = fields.pop("status", "UPLOADED")
        finished = status in ("UPLOADING", "UPLOADED", "ERRORED")
        raw_duration = fields.pop("recording_duration", 600 + n)  # any value: tests send bad ones
        duration = raw_duration if isinstance(raw_duration, int) else 600 + n
        stopped = _utc(fields.pop("stopped_time", now - timedelta(minutes=30 + n) if finished else None))
        started = _utc(fields.pop("started_time", (stopped or now) - timedelta(seconds=duration)))
        invoked = _utc(fields.pop("invoked_time", started - timedelta(seconds=3)))
        title = fields.pop("meeting_title", f"Team sync {n}")
        rid = str(fields.pop("id", uuid.uuid4()))
        file_size = int(fields.pop("file_size", 200_000))
        audio = fields.pop("audio", False)
        audio_size = fields.pop("audio_size", max(1, file_size // 8) if audio else None)
        rec_type = str(fields.pop("type", "COMPOSITE"))
        tracks = fields.pop("tracks", 2 if rec_type == "TRACK" else 0)
        prefix = fields.pop("file_name_prefix", "rtk")
        if isinstance(tracks, int):
            when = int((stopped or now).timestamp() * 1000)
            tracks = [
                (f"{prefix}_user-{k + 1}_peer-{uuid.uuid5(uuid.NAMESPACE_OID, f'{rid}:{k}').hex[:12]}_peer_audio_{when}.webm",
                 max(1, file_size // (k + 2)))
                for k in range(tracks)
            ]
        upload = str(fields.pop("upload", "complete"))
        rec = SimRecording(
            id=rid,
            status=status,
            invoked_time=invoked,
            started_time=started,
            stopped_time=stopped,
            output_file_name=fields.pop("output_file_name", f"{_slug(title)}_{rid[:8]}.mp4"),
            file_size=file_size,
            audio_size=audio_size,
            meeting_id=str(fields.pop("meeting_id", uuid.uuid5(uuid.NAMESPACE_URL, title))),
            meeting_title=title,
            session_id=fields.pop("session_id", str(uuid.uuid5(uuid.NAMESPACE_OID, rid))),
            storage_config=fields.pop("storage_config", None),
            bucket_enabled=fields.pop("bucket_enabled", True),
            recording_duration=raw_duration if finished else None,
            extra=fields,
            type=rec_type,
            tracks=[(str(n), int(z)) for n, z in tracks],
            upload=upload,
        )
        if rec_type == "TRACK" and "output_file_name" not in fields:
            rec.output_file_name = TRACK_TEMPLATE
        with self.lock:
            self.recordings[rid] = rec
        if rec.status == "UPLOADED":
            self._deliver(rec)
        return self.view(rec)

    # -- the simulator's own controls (app.py ``/_sim/...``; ``rtk-archiver simulator add``) --
    def add_controlled(self, *, file_size: int, status: str = "UPLOADED", audio: bool = False,
                       audio_size: int | None = None, meeting_title: str | None = None) -> SimRecording:
        """A recording made on the platform just now: finished (stopped now, so that the next
        poll's window has it) or still going (``RECORDING`` / ``PAUSED`` / ``INVOKED``: stop it
        with the API's stop call), on RealtimeKit's bucket, with no storage_config (it goes to
        the archiver's default destination). Status listeners (webhooks) are told."""
        if status not in ADDABLE_STATUSES:
            raise ValueError(f"status must be one of {', '.join(ADDABLE_STATUSES)}")
        for name, value in (("file_size", file_size), ("audio_size", audio_size)):
            if value is not None and not 1 <= value <= MAX_FILE_SIZE:
                raise ValueError(f"{name} must be 1 byte to 1 PiB")
        now = datetime.now(timezone.utc)
        fields: dict[str, Any] = {"status": status, "file_size": file_size, "audio": audio or audio_size is not None,
                                  "storage_config": None, "bucket_enabled": True}
        if audio_size is not None:
            fields["audio_size"] = audio_size
        if meeting_title:
            fields["meeting_title"] = meeting_title
        if status in ("UPLOADED", "ERRORED"):
            fields.update(stopped_time=now, started_time=now - timedelta(seconds=600), recording_duration=600)
        else:
            fields.update(stopped_time=None, started_time=now, invoked_time=now)
        rec = self.recordings[self.add_recording(**fields)["id"]]
        self._status_changed(rec)
        return rec

    def enlarge(self, recording_id: str, file_size: int) -> SimRecording:
        """Make a composite recording's video ``file_size`` bytes (more than it has): the same
        file, longer (its first bytes unchanged, a new ETag). KeyError: no such recording."""
        with self.lock:
            rec = self.recordings[recording_id]
            if rec.type == "TRACK":
                raise ValueError("a track recording has one file per participant; enlarge a composite recording")
            if not file_size <= MAX_FILE_SIZE:
                raise ValueError("file_size must be at most 1 PiB")
            if file_size <= rec.file_size:
                raise ValueError(f"the recording has {rec.file_size} bytes already; give a larger size")
            rec.file_size = file_size
            return rec

    def summary(self, rec: SimRecording) -> dict[str, Any]:
        """What the controls answer about a recording: its status and real sizes (the API
        serves ``file_size`` only once it is UPLOADED)."""
        return {
            "id": rec.id, "status": rec.status, "type": rec.type, "file_size": rec.file_size,
            "audio_size": rec.audio_size if rec.type != "TRACK" else None,
            "output_file_name": rec.output_file_name, "meeting_id": rec.meeting_id,
            "stopped_time": iso(rec.stopped_time), "storage_config": bool(rec.storage_config),
            "bucket_enabled": rec.bucket_enabled, "expired": rec.expired,
            "upload_delay_seconds": self.upload_delay_seconds,
        }

    def _deliver(self, rec: SimRecording) -> None:
        """RealtimeKit's own upload of a finished recording to its storage_config."""
        if self.deliverer is not None and rec.storage_config and rec.type != "TRACK" and rec.upload_result is None:
            self.deliverer(rec)

    # -- URL signing ---------------------------------------------------------------------------
    def sign(self, recording_id: str, kind: str, expires: int) -> str:
        msg = f"{recording_id}:{kind}:{expires}".encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def check_signature(self, recording_id: str, kind: str, expires: int, signature: str) -> bool:
        return hmac.compare_digest(self.sign(recording_id, kind, expires), signature)

    # -- API views -----------------------------------------------------------------------------
    def public_storage_config(self, rec: SimRecording) -> dict[str, Any] | None:
        if rec.storage_config is None or self.faults.leak_secrets:
            return rec.storage_config
        return {k: v for k, v in rec.storage_config.items() if k not in SECRET_FIELDS}

    def view(self, rec: SimRecording, *, base_url: str | None = None, detailed: bool = False) -> dict[str, Any]:
        """The recording as the API returns it, with freshly signed URLs."""
        base_url = base_url or self.public_url
        has_files = rec.status == "UPLOADED" and rec.bucket_enabled and not rec.expired
        expiry = datetime.now(timezone.utc) + timedelta(seconds=self.url_ttl_seconds)
        exp = int(expiry.timestamp())

        def url(kind: str, ext: str) -> str:
            return f"{base_url}/rtk-bucket/{rec.id}/{kind}{ext}?X-Expires={exp}&X-Signature={self.sign(rec.id, kind, exp)}"

        sc = self.public_storage_config(rec)
        if rec.type == "TRACK":  # per-participant files: a list of layers (track-recording guide)
            download_url: Any = [{"layer_name": "default", "download_urls": {
                name: {"download_url": url(rec.track_kind(n), ".webm")} for n, (name, _) in enumerate(rec.tracks)
            }}] if has_files and rec.tracks else None
        else:
            download_url = url("video", ".mp4") if has_files else None
        if has_files:
            url_expiry: str | None = iso(expiry)
        elif rec.status == "UPLOADED" and rec.bucket_enabled and rec.expired:
            # gone from RealtimeKit's bucket: the expiry stays, the URL does not
            url_expiry = iso((rec.stopped_time or rec.invoked_time) + RETENTION)
        else:
            url_expiry = None  # bucket disabled: none is generated at all
        data: dict[str, Any] = {
            "id": rec.id,
            "type": rec.type,
            "status": rec.status,
            "invoked_time": iso(rec.invoked_time),
            "started_time": iso(rec.started_time),
            "stopped_time": iso(rec.stopped_time),
            "output_file_name": rec.output_file_name,
            "download_url": download_url,
            "audio_download_url": url("audio", ".m4a") if has_files and rec.audio_size and rec.type != "TRACK" else None,
            "download_url_expiry": url_expiry,
            "file_size": rec.file_size if rec.status == "UPLOADED" and not self.faults.hide_file_size else None,
            "recording_duration": rec.recording_duration,
            "session_id": rec.session_id,
            "storage_config": sc,
        }
        if detailed:
            caller = {"name": "api-key", "type": "ORGANIZATION", "user_Id": str(uuid.uuid5(uuid.NAMESPACE_DNS, rec.meeting_id))}
            data["start_reason"] = {"caller": caller, "reason": "API_CALL"}
            if rec.stopped_time:
                data["stop_reason"] = {"caller": caller, "reason": "API_CALL"}
        else:
            data["meeting"] = {
                "id": rec.meeting_id,
                "title": rec.meeting_title,
                "created_at": iso(rec.invoked_time - timedelta(minutes=5)),
                "updated_at": iso(rec.invoked_time),
                "status": "ACTIVE",
                "record_on_start": False,
                "recording_config": {
                    "storage_config": sc,
                    "realtimekit_bucket_config": {"enabled": rec.bucket_enabled},
                    "audio_config": {"export_file": bool(rec.audio_size), "codec": "AAC", "channel": "stereo"},
                    "max_seconds": 86400,
                },
            }
        data.update(rec.extra)
        return data

    def media_size(self, rec: SimRecording, kind: str) -> int | None:
        size = {"video": rec.file_size, "audio": rec.audio_size}.get(kind)
        if kind.startswith("track-") and kind[6:].isdigit() and int(kind[6:]) < len(rec.tracks):
            size = rec.tracks[int(kind[6:])][1]
        return size + self.faults.size_skew if size is not None else None

    # -- transitions ---------------------------------------------------------------------------
    def apply_action(self, rec: SimRecording, action: str) -> str | None:
        """stop / pause / resume; returns an error message for an impossible transition."""
        with self.lock:
            if action == "stop" and rec.status in ("RECORDING", "PAUSED", "INVOKED"):
                now = datetime.now(timezone.utc)
                rec.stopped_time = now
                rec.recording_duration = int((now - (rec.started_time or now)).total_seconds())
                rec.status = "UPLOADING"
                timer = threading.Timer(self.upload_delay_seconds, self._finish_upload, args=(rec.id,))
                timer.daemon = True
                timer.start()
                self._status_changed(rec)
                return None
            if action == "pause" and rec.status == "RECORDING":
                rec.status = "PAUSED"
                self._status_changed(rec)
                return None
            if action == "resume" and rec.status == "PAUSED":
                rec.status = "RECORDING"
                self._status_changed(rec)
                return None
            return f"cannot {action} a recording whose status is {rec.status}"

    def _finish_upload(self, recording_id: str) -> None:
        with self.lock:
            rec = self.recordings.get(recording_id)
            if rec is not None and rec.status == "UPLOADING":
                rec.status = "UPLOADED"
                self._deliver(rec)
                self._status_changed(rec)

    # -- status webhooks (simulator/webhooks.py) -----------------------------------------------
    def add_status_listener(self, listener: Callable[["SimulatorState", SimRecording], None]) -> None:
        """Call ``listener(state, recording)`` after every status change made through the state's
        methods (``apply_action``, the end of an upload, ``set_status``)."""
        with self.lock:
            self.__dict__.setdefault("_status_listeners", []).append(listener)

    def _status_changed(self, rec: SimRecording) -> None:
        for listener in list(self.__dict__.get("_status_listeners", ())):
            listener(self, rec)

    def set_status(self, recording_id: str, status: str) -> dict[str, Any]:
        """Move a recording to ``status`` as the platform would (a stop time once it has stopped),
        tell the listeners (the webhook sender), and return its API view."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        with self.lock:
            rec = self.recordings[recording_id]
            rec.status = status
            if status in ("UPLOADING", "UPLOADED", "ERRORED") and rec.stopped_time is None:
                now = datetime.now(timezone.utc)
                rec.stopped_time = now
                rec.recording_duration = int((now - (rec.started_time or now)).total_seconds())
            if status == "UPLOADED":
                self._deliver(rec)
            self._status_changed(rec)
            return self.view(rec)


STORAGE_KINDS: tuple[dict[str, Any] | None, ...] = (
    None,
    {"type": "aws", "bucket": "rtk-recordings", "region": "us-east-1", "path": "meetings/aws"},
    {"type": "digitalocean", "bucket": "rtk-spaces", "region": "nyc3", "path": "meetings/do"},
    {"type": "gcs", "bucket": "rtk-gcs", "region": "us-central1", "path": "meetings/gcs"},
    {"type": "sftp", "host": "sftp.example.com", "port": 22, "username": "archiver", "auth_method": "PASSWORD", "path": "meetings/sftp"},
    {"type": "sftp", "host": "sftp.example.com", "port": 2222, "username": "archiver", "auth_method": "KEY", "path": "/srv/meetings"},
    {"type": "azure", "bucket": "rtk-azure", "region": "westeurope", "path": "meetings/azure"},
)


#: the storage kinds of the ``platform`` dataset: what one S3 API (moto, in the demo) can take
#: RealtimeKit's uploads for: AWS, Cloudflare R2, and none (the default destination)
PLATFORM_STORAGE_KINDS: tuple[dict[str, Any] | None, ...] = (
    None,
    {"type": "aws", "bucket": "rtk-recordings", "region": "us-east-1", "path": "meetings/aws",
     "access_key": "AKIASIMULATOR", "secret": "simulator-secret"},
    None,
    {"type": "cloudflare", "bucket": "rtk-r2", "account_id": "sim-account", "path": "meetings/r2",
     "access_key": "r2-simulator", "secret": "simulator-secret"},
)
#: what RealtimeKit's own uploads do in the ``platform`` dataset, in turn
PLATFORM_UPLOADS = ("complete", "complete", "missing", "complete", "truncated", "complete", "different")


def generate_recordings(
    state: SimulatorState, count: int, seed: int = 1, min_size: int = 32 * 1024, max_size: int = 1024 * 1024,
    platform: bool = False, archivable: bool = False,
) -> list[dict[str, Any]]:
    """A deterministic dataset: every status, with and without audio, every storage_config
    kind, some with the RealtimeKit bucket disabled, some expired, spread over ~10 days.
    Ids and names depend only on ``seed``; times are relative to now.

    ``archivable``: instead, only recordings an archiver can archive anywhere
    (``rtk-archiver simulator --archivable``): UPLOADED, stopped within the last 3 days (so
    more than ``ARCHIVE_EXPIRY_WARNING_HOURS``, 48, before RealtimeKit's 7 days end), on
    RealtimeKit's bucket, with no storage_config (they go to ARCHIVE_DEFAULT_DESTINATION),
    every other one with audio.

    ``platform``: the rest of the platform too, for the demo: track recordings (every
    seventh), storage configs on one S3 API (AWS, R2) whose RealtimeKit uploads are complete,
    missing, truncated or different in turn (``PLATFORM_UPLOADS``), bucket-disabled ones
    (their only copy is that upload) and one stored nowhere."""
    if archivable and platform:
        raise ValueError("archivable and platform are two different datasets")
    if archivable:
        return _archivable_recordings(state, count, seed, min_size, max_size)
    rng = random.Random(seed)
    kinds = PLATFORM_STORAGE_KINDS if platform else STORAGE_KINDS
    now = datetime.now(timezone.utc)
    made = []
    for i in range(count):
        # two thirds UPLOADED, the rest cycling through the other statuses
        status = "UPLOADED" if i % 3 else STATUSES[(i // 3) % len(STATUSES)]
        age = timedelta(hours=1 + rng.random() * 24 * (10 if i % 5 == 4 else 6))
        duration = rng.randint(60, 3600)
        stopped = now - age if status in ("UPLOADING", "UPLOADED", "ERRORED") else None
        started = (stopped or now - age) - timedelta(seconds=duration)
        rid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        title = f"{rng.choice(['Standup', 'Retro', 'Planning', 'All hands', 'Interview', '1:1'])} {i + 1}"
        sc = kinds[i % len(kinds)]
        # the bucket disabled: only with a storage_config (RealtimeKit's docs call one with
        # neither an invalid recording), but for one in the platform dataset, stored nowhere
        disabled = i % 11 == 10 and (sc is not None or (platform and i == 32))
        extra: dict[str, Any] = {}
        if platform:
            extra["upload"] = PLATFORM_UPLOADS[(i // len(kinds)) % len(PLATFORM_UPLOADS)]
            if i % 5 == 2 and sc is None and not disabled:  # always on RealtimeKit's bucket
                extra.update(type="TRACK", tracks=1 + i % 3, output_file_name=TRACK_TEMPLATE)
        if "type" not in extra:
            extra["output_file_name"] = f"{_slug(title)}_{rid[:8]}.mp4"
        made.append(
            state.add_recording(
                id=rid,
                status=status,
                invoked_time=started - timedelta(seconds=3),
                started_time=started,
                stopped_time=stopped,
                recording_duration=duration,
                meeting_title=title,
                file_size=rng.randint(min_size, max_size),
                audio=(i % 2 == 0),
                storage_config=sc,
                bucket_enabled=not disabled,
                **extra,
            )
        )
    return made


#: how far back the ``archivable`` dataset's recordings stopped (at most): RealtimeKit keeps
#: files 7 days, and the watchdog warns 48 h before the end
ARCHIVABLE_SPREAD = timedelta(days=3)


def _archivable_recordings(
    state: SimulatorState, count: int, seed: int, min_size: int, max_size: int
) -> list[dict[str, Any]]:
    """``generate_recordings(archivable=True)``: every recording finished, with files, and
    stored on RealtimeKit's bucket only."""
    rng = random.Random(f"archivable:{seed}")
    now = datetime.now(timezone.utc)
    made = []
    for i in range(count):
        stopped = now - timedelta(minutes=5) - rng.random() * (ARCHIVABLE_SPREAD - timedelta(minutes=5))
        duration = rng.randint(60, 3600)
        started = stopped - timedelta(seconds=duration)
        rid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        title = f"{rng.choice(['Standup', 'Retro', 'Planning', 'All hands', 'Interview', '1:1'])} {i + 1}"
        made.append(
            state.add_recording(
                id=rid, status="UPLOADED", invoked_time=started - timedelta(seconds=3), started_time=started,
                stopped_time=stopped, recording_duration=duration, meeting_title=title,
                output_file_name=f"{_slug(title)}_{rid[:8]}.mp4", file_size=rng.randint(min_size, max_size),
                audio=(i % 2 == 0), storage_config=None, bucket_enabled=True,
            )
        )
    return made
