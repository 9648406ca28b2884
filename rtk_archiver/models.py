"""Typed models for everything that crosses a boundary.

* ``Recording`` / ``StorageConfig`` / ``Meeting``: what the RealtimeKit Recordings API returns
  (unknown extra fields are tolerated, secrets that do show up are held as ``SecretStr``).
* ``ObjectInfo``: what a storage backend says about a stored object.
* ``Sidecar``: the JSON metadata written beside every archived recording.
* ``RecordingOutcome`` / ``ArchiveReport``: what a run did, per recording.
"""

from __future__ import annotations

from datetime import datetime, timezone
from enum import Enum
from typing import Any, Literal
from pydantic import AliasChoices  # StorageConfig.account_id (its own line: merges beside other imports)

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class RecordingStatus(str, Enum):
    INVOKED = "INVOKED"
    RECORDING = "RECORDING"
    UPLOADING = "UPLOADING"
    UPLOADED = "UPLOADED"
    ERRORED = "ERRORED"
    PAUSED = "PAUSED"


class _ApiModel(BaseModel):
    # The API adds fields over time: tolerate and ignore what we do not know.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class StorageConfig(_ApiModel):
    """Where a recording belongs. Secrets are write-only in the API; if one comes back anyway
    it is kept as a SecretStr so it can never be printed by accident."""

    type: str | None = None
    bucket: str | None = None
    region: str | None = None
    path: str | None = None
    host: str | None = None
    port: int | None = None
    username: str | None = None
    auth_method: str | None = None
    #: Cloudflare R2 (type "cloudflare"): the bucket's account (the API's field name is not documented)
    account_id: str | None = Field(default=None, validation_alias=AliasChoices("account_id", "accountId", "account"))
    access_key: SecretStr | None = None
    secret: SecretStr | None = None
    password: SecretStr | None = None
    private_key: SecretStr | None = None

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, v: Any) -> Any:
        # The SDK types it as a number: 22.0 is 22. Anything else is a clear error.
        if v is None or v == "":
            return None
        if isinstance(v, bool):
            raise ValueError("port must be a number")
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, str) and v.strip().isdigit():
            return int(v.strip())
        return v

    @field_validator("access_key", "secret", "password", "private_key", mode="before")
    @classmethod
    def _secret(cls, v: Any) -> Any:
        if v is None or isinstance(v, SecretStr):
            return v
        return SecretStr(str(v))

    def public_dict(self) -> dict[str, Any]:
        """The non-secret fields, for sidecars, logs and reports."""
        return self.model_dump(exclude={"access_key", "secret", "password", "private_key"}, exclude_none=True)


class BucketConfig(_ApiModel):
    enabled: bool | None = None


class RecordingConfig(_ApiModel):
    """The meeting's recording configuration, as far as the archiver needs it."""

    realtimekit_bucket_config: BucketConfig | None = None


class Meeting(_ApiModel):
    id: str
    title: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    status: str | None = None
    recording_config: RecordingConfig | None = None


#: the layers of a track recording's ``download_url`` the archiver knows (RealtimeKit records
#: per-participant audio in ``default``; video tracks are "in development"): any other layer
#: fails that recording with a message naming it, rather than being archived half
KNOWN_TRACK_LAYERS = frozenset({"default"})
#: a track file's name, per RealtimeKit's template
#: ``{{file_name_prefix}}_{{user_id}}_{{peer_id}}_{{stream_kind}}_{{media_kind}}_{{date_time}}.webm``
_TRACK_FIELDS = ("file_name_prefix", "user_id", "peer_id", "stream_kind", "media_kind", "date_time")


class TrackFile(BaseModel):
    """One file of a track recording (``type: TRACK``): a layer, the file's name as
    RealtimeKit gives it, and its presigned URL."""

    layer: str
    name: str
    url: str

    def participant(self) -> dict[str, str]:
        """The fields the name carries (best effort, read from the right: a prefix may hold
        underscores); empty when the name does not follow the template."""
        stem = self.name.rsplit(".", 1)[0] if "." in self.name else self.name
        parts = stem.rsplit("_", 5)
        if len(parts) != 6 or not all(parts):
            return {}
        return dict(zip(_TRACK_FIELDS, parts))


def _shape(value: Any, depth: int = 0) -> str:
    """A short description of a JSON value's shape, for error messages (never its content)."""
    if isinstance(value, dict):
        if depth >= 2:
            return "object"
        keys = ", ".join(repr(k)[:40] for k in list(value)[:5])
        return f"object with keys [{keys}{', ...' if len(value) > 5 else ''}]"
    if isinstance(value, list):
        return f"list of {len(value)} ({_shape(value[0], depth + 1) if value else 'empty'})"
    return type(value).__name__


def parse_track_urls(value: Any) -> list[TrackFile]:
    """A track recording's ``download_url`` (a list of layers, each with files by name) as
    files. Only the documented shape is accepted; anything else raises ``ValueError`` naming
    the shape, so that recording fails alone, clearly."""
    documented = "a list of {layer_name, download_urls: {<file name>: {download_url}}}"
    if not isinstance(value, list):
        raise ValueError(f"download_url is an {_shape(value)}; the archiver knows a string or {documented}")
    files: list[TrackFile] = []
    for layer in value:
        if not isinstance(layer, dict) or not isinstance(layer.get("layer_name"), str) or not isinstance(layer.get("download_urls"), dict):
            raise ValueError(f"download_url holds a {_shape(layer)}; the archiver knows {documented}")
        name = layer["layer_name"]
        if name not in KNOWN_TRACK_LAYERS:
            raise ValueError(
                f"download_url has a layer {name[:60]!r} the archiver does not know yet (known: "
                f"{', '.join(sorted(KNOWN_TRACK_LAYERS))}); nothing of this recording is archived until it does"
            )
        for file_name, entry in layer["download_urls"].items():
            url = entry.get("download_url") if isinstance(entry, dict) else None
            if not isinstance(url, str) or not url or not file_name:
                raise ValueError(f"download_url's layer {name!r} holds a file entry that is a {_shape(entry)}, not {{download_url: <url>}}")
            files.append(TrackFile(layer=name, name=file_name, url=url))
    if not files:
        raise ValueError("download_url is a list without any file")
    return files


class Recording(_ApiModel):
    id: str
    status: str
    #: ``COMPOSITE`` (one video, optionally a separate audio) or ``TRACK`` (per-participant files)
    type: str | None = None
    invoked_time: datetime
    started_time: datetime | None = None
    stopped_time: datetime | None = None
    output_file_name: str
    download_url: str | None = None
    audio_download_url: str | None = None
    download_url_expiry: datetime | None = None
    file_size: int | None = None
    recording_duration: int | None = None
    session_id: str | None = None
    meeting_id: str | None = None
    meeting: Meeting | None = None
    storage_config: StorageConfig | None = None
    #: a track recording's files (its ``download_url`` is a list of layers): see parse_track_urls
    track_files: list[TrackFile] = Field(default_factory=list)

    @field_validator("invoked_time", "started_time", "stopped_time", "download_url_expiry", mode="after")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        # a timestamp without a time zone ("2026-12-06T18:49:33.1") is UTC, as the API's others
        return v.replace(tzinfo=timezone.utc) if v is not None and v.tzinfo is None else v

    @model_validator(mode="before")
    @classmethod
    def _track_urls(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("download_url") is not None and not isinstance(data["download_url"], str):
            data = dict(data)
            data["track_files"] = parse_track_urls(data.pop("download_url"))
        return data

    @field_validator("file_size", "recording_duration", mode="before")
    @classmethod
    def _int(cls, v: Any) -> Any:
        if isinstance(v, float) and v.is_integer():
            return int(v)
        return v

    @property
    def is_track(self) -> bool:
        return bool(self.track_files) or (self.type or "").upper() == "TRACK"

    @property
    def has_files(self) -> bool:
        """RealtimeKit serves this recording's files now (a URL for the video or for its tracks)."""
        return bool(self.download_url or self.track_files)

    @property
    def bucket_enabled(self) -> bool | None:
        """Whether the recording went to RealtimeKit's own bucket, as its meeting's recording
        config says (None: not said)."""
        config = self.meeting.recording_config if self.meeting else None
        bucket = config.realtimekit_bucket_config if config else None
        return bucket.enabled if bucket else None

    @property
    def meeting_ref(self) -> str | None:
        return self.meeting.id if self.meeting else self.meeting_id

    def label(self) -> str:
        """A short, secret-free description for logs."""
        return f"{self.id} ({self.output_file_name!r})"


class Paging(_ApiModel):
    total_count: int | None = None
    start_offset: int | None = None
    end_offset: int | None = None


class ObjectInfo(BaseModel):
    """What a backend knows about one stored object (rclone's ``stat``)."""

    size: int
    hashes: dict[str, str] = Field(default_factory=dict)


class FileEntry(BaseModel):
    """One archived file, as recorded in the sidecar.

    ``origin``: who wrote the file. ``realtimekit``: RealtimeKit's own upload to the
    recording's storage_config, proven to be the recording's bytes (``verified_by`` says how)
    and never replaced by the archiver. ``found``: a file at the recording's name without a
    sidecar beside it (an archive whose sidecar was deleted), proven the same way and kept,
    never replaced either. ``sha256`` is None only for such a file whose
    recording has no download URL (RealtimeKit's bucket disabled): then only its size could
    be checked."""

    kind: Literal["video", "audio", "track"]
    name: str
    size: int
    sha256: str | None = None
    hashes: dict[str, str] = Field(default_factory=dict)
    source_url_host: str | None = None
    origin: Literal["archiver", "realtimekit", "found"] = "archiver"
    #: how a RealtimeKit upload was proven: "sha256 read back", "md5 reported by the store", "size"
    verified_by: str | None = None
    #: a track file: its layer, its name as RealtimeKit gave it, the participant fields it carries
    layer: str | None = None
    source_name: str | None = None
    participant: dict[str, str] | None = None


#: free text from the API is cut to this many characters in a sidecar, so that a sidecar stays
#: far below the size read back to check it (a 1.2 MB meeting title made it unreadable)
SIDECAR_TEXT_LIMIT = 2048


def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > SIDECAR_TEXT_LIMIT:
        return value[:SIDECAR_TEXT_LIMIT] + "…[cut]"
    if isinstance(value, dict):
        return {_cut(k): _cut(v) for k, v in list(value.items())[:64]}
    return value


class Sidecar(BaseModel):
    """The JSON metadata beside an archived recording (``<video>.metadata.json``).

    Written twice: first as a claim (``state="claimed"``, ``claimed`` = the file names about
    to be written) before any file, so the names belong to this recording even if the run is
    killed half-way; last as the commit marker (``state="complete"``, ``files`` with sizes
    and hashes). Only what a sidecar naming a recording lists or claims is ever replaced."""

    schema_version: int = 2
    state: Literal["claimed", "complete"] = "complete"  # sidecars of schema 1 were complete
    claimed: list[str] = Field(default_factory=list)
    #: which attempt wrote a claim (a first attempt only ever removes its own claim)
    claim_token: str | None = None
    #: who holds a claim (host, pid) while it archives; the claim is renewed meanwhile
    #: (``archived_at``): see tasks/limits.py, ``claim_is_live``
    claim_holder: dict[str, Any] | None = None
    recording_id: str
    meeting_id: str | None = None
    meeting_title: str | None = None
    session_id: str | None = None
    status: str
    invoked_time: datetime
    started_time: datetime | None = None
    stopped_time: datetime | None = None
    recording_duration: int | None = None
    output_file_name: str
    storage_config: dict[str, Any] | None = None
    files: list[FileEntry] = Field(default_factory=list)
    archived_at: datetime
    archiver_version: str

    @field_validator("meeting_title", "output_file_name", "session_id", "meeting_id", mode="before")
    @classmethod
    def _bounded_text(cls, v: Any) -> Any:
        return _cut(v)

    @field_validator("storage_config", mode="before")
    @classmethod
    def _bounded_config(cls, v: Any) -> Any:
        return _cut(v)

    def names(self) -> set[str]:
        """Every file name this sidecar lists or claims (in its own directory)."""
        return {f.name for f in self.files} | set(self.claimed)


class OutcomeKind(str, Enum):
    ARCHIVED = "archived"
    #: RealtimeKit's own upload to the storage_config, proven to be the recording: sidecar only
    DELIVERED = "delivered by RealtimeKit"
    ALREADY_ARCHIVED = "already archived"
    WOULD_ARCHIVE = "would archive"  # dry run
    SKIPPED = "skipped"
    PENDING = "pending"  # not finished yet; a later run picks it up
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # the run was stopped (Ctrl-C / SIGTERM) before it was archived


class RecordingOutcome(BaseModel):
    recording_id: str
    output_file_name: str | None = None
    kind: OutcomeKind
    reason: str | None = None
    destination: str | None = None
    bytes_transferred: int = 0
    bytes_total: int = 0
    seconds: float = 0.0
    #: when the recording stopped (or was invoked, if it has not stopped yet)
    reference_time: datetime | None = None
    #: skipped for now, but a later run may archive it once the configuration allows it (no
    #: default destination, a storage type not supported yet): the poll's mark waits for it
    retry_later: bool = False
    #: what became of RealtimeKit's own upload to the storage_config, where it makes one:
    #: "delivered" (proven, kept), "missing" (archived by the archiver), "damaged" (present
    #: but not the recording's bytes: kept, the verified copy archived under another name)
    upload: Literal["delivered", "missing", "damaged"] | None = None
    #: a detail about that upload, for reports (sizes, what differed)
    upload_note: str | None = None


class RecordingRisk(BaseModel):
    """A finished recording that is not archived and whose files on RealtimeKit expire soon
    (at risk) or are already gone (lost). Named by the expiry watchdog (flows/watchdog.py)."""

    recording_id: str
    output_file_name: str | None = None
    #: when RealtimeKit's copy stops being reachable (None: unknown)
    deadline: datetime | None = None
    reason: str


class ArchiveReport(BaseModel):
    since: datetime | None = None
    until: datetime | None = None
    dry_run: bool = False
    outcomes: list[RecordingOutcome] = Field(default_factory=list)
    #: finished, not archived, files expire within ARCHIVE_EXPIRY_WARNING_HOURS
    at_risk: list[RecordingRisk] = Field(default_factory=list)
    #: finished, never archived, files already gone: reported by the first run that sees it
    lost: list[RecordingRisk] = Field(default_factory=list)

    def of(self, kind: OutcomeKind) -> list[RecordingOutcome]:
        return [o for o in self.outcomes if o.kind == kind]

    @property
    def failed(self) -> list[RecordingOutcome]:
        return self.of(OutcomeKind.FAILED)

    @property
    def bytes_transferred(self) -> int:
        return sum(o.bytes_transferred for o in self.outcomes)

    def counts(self) -> dict[str, int]:
        return {k.value: len(self.of(k)) for k in OutcomeKind}

    def run_failure_message(self) -> str | None:
        """None when the run succeeded; else why it failed: how many recordings failed, are at
        risk of expiring unarchived, or were lost, and the first reason. At-risk and lost
        recordings fail a run like failed ones do (a dry run only reports them)."""
        at_risk, lost = ([], []) if self.dry_run else (self.at_risk, self.lost)
        parts = [f"{len(self.failed)} of {len(self.outcomes)} recording(s) failed"] if self.failed else []
        parts += [
            f"{len(items)} recording(s) {what}"
            for items, what in ((at_risk, "at risk of expiring unarchived"), (lost, "lost"))
            if items
        ]
        if not parts:
            return None
        first = next(iter(self.failed), None)
        reason = f"{first.recording_id}: {first.reason or 'failed'}" if first else None
        if reason is None:
            risk = (at_risk or lost)[0]
            reason = f"{risk.recording_id}: {risk.reason}"
        return f"{', '.join(parts)}; first: {reason}"
