"""Preflight: check every destination a run would use, before it runs.

For each destination (the default one, a ``--destination`` override, and the distinct
``storage_config``s of the recordings in a window): resolve its credentials, connect (for
SFTP: verify the host key), write a small probe object under its prefix (no-clobber, a unique
name), stat it (size and the backend's checksums), read it back, delete it. Each destination
gets a row saying what works, which checksums and storage options apply, or what failed and
how to fix it. Nothing but the probe is ever written, and the probe is removed.
"""

from __future__ import annotations

import io
import posixpath
import uuid
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from rtk_archiver.api import InvalidRecording, RealtimeKitAPI
from rtk_archiver.display import markdown_text
from rtk_archiver.models import Recording
from rtk_archiver.naming import redact_urls
from rtk_archiver.plan import placement
from rtk_archiver.settings import Settings
from rtk_archiver.streams import VerifyingReader
from storage_backends import (
    Destination,
    InvalidDestination,
    UnsupportedDestination,
    destination_from_storage_config,
    open_backend,
    parse_destination_url,
)

PROBE_PREFIX = ".rtk-archiver-check-"
MAX_RECORDING_LENGTH = timedelta(seconds=86400)


class DestinationCheck(BaseModel):
    source: str  # where the run would get it from
    destination: str  # display URL (no secrets)
    status: Literal["ok", "failed", "skipped"]
    works: list[str] = Field(default_factory=list)  # steps that succeeded, in order
    checksums: list[str] = Field(default_factory=list)
    #: the storage options in force; for a store reached at an endpoint of its own (R2) also
    #: where: ``endpoint`` and ``region``
    options: dict[str, str] = Field(default_factory=dict)
    reason: str | None = None
    fix: str | None = None


class CheckReport(BaseModel):
    checks: list[DestinationCheck] = Field(default_factory=list)
    since: datetime | None = None
    until: datetime | None = None

    @property
    def failed(self) -> list[DestinationCheck]:
        return [c for c in self.checks if c.status == "failed"]


#: message fragment -> how to fix it (the backends' own messages already say which variable
#: or block when credentials are missing)
_FIXES = (
    ("no s3 credentials", "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or create the S3Credentials block named in the message"),
    ("no r2 credentials", "set R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY (an R2 API token's) or create the R2Credentials block named in the message"),
    ("cloudflare account id", "set (or correct) the storage_config's account_id or CLOUDFLARE_ACCOUNT_ID, or set ARCHIVE_R2_ENDPOINT_URL"),
    ("no gcs credentials", "set GOOGLE_APPLICATION_CREDENTIALS or create the GCSCredentials block named in the message"),
    ("no azure credentials", "set AZURE_STORAGE_CONNECTION_STRING (or account URL + key / SAS) or create the AzureCredentials block named in the message"),
    ("host key", "add the server's host key to SFTP_KNOWN_HOSTS (ssh-keyscan, after checking its fingerprint with the server's owner)"),
    ("authentication failed", "set SFTP_PASSWORD / SFTP_PRIVATE_KEY(_FILE) or the SFTPCredentials block for this user and host"),
    ("does not exist", "create it, or correct its name in the storage_config / destination URL"),
    ("key or sas is wrong", "correct the account key or SAS (AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_KEY / AZURE_STORAGE_SAS_TOKEN or the AzureCredentials block); a SAS: check its expiry"),
    ("a file is in the way", "remove or rename the file in the way, or choose another directory"),
    ("a path component is a file", "remove or rename the file in the way, or choose another directory"),
    ("permission denied to", "make the directory writable by the SSH user, or choose a directory it may write"),
    ("permission denied", "make the directory writable by the archiver's user"),
    ("denied", "grant these credentials write, read and delete on the prefix (s3:PutObject/GetObject/DeleteObject, Storage Object Admin, Storage Blob Data Contributor)"),
    ("storage option", "use one of the options listed in the message (README: Storage backends and credentials)"),
    ("storage_config.", "correct the recording's storage_config in RealtimeKit"),
    ("already exists", "remove the leftover probe object named in the message"),
)


def fix_for(reason: str) -> str:
    low = reason.lower()
    for fragment, fix in _FIXES:
        if fragment in low:
            return fix
    return "check the endpoint, the network and the store's status, then run the check again"


def probe_destination(destination: Destination, settings: Settings, source: str, subdir: str = "") -> DestinationCheck:
    """Write, stat, read back and delete a probe object at ``destination`` (under ``subdir``)."""
    row = DestinationCheck(source=source, destination=destination.display_url(subdir), status="failed")
    key = posixpath.join(subdir, f"{PROBE_PREFIX}{uuid.uuid4().hex}.txt") if subdir else f"{PROBE_PREFIX}{uuid.uuid4().hex}.txt"
    data = f"rtk-archiver check probe {uuid.uuid4()}\n".encode()
    backend = None
    made: list[str] = []
    step = "credentials"
    try:
        backend = open_backend(destination, settings)
        row.options = dict(backend.destination.options)
        details = getattr(backend, "check_details", None)  # where an S3-compatible store is reached
        if details is not None:
            row.options.update(details())
        row.works.append("credentials")
        if destination.kind == "sftp":
            step = "connect"  # the host key verified, then the login
            backend.connect()
            row.works += ["connect", "host key", "login"]
        step = "write"
        made = backend.missing_dirs(key)  # removed again after the probe (never a directory that was there)
        reader = VerifyingReader([data], len(data), backend.hash_types)
        info = backend.put(key, reader, len(data), replace=False)
        row.works.append("write")
        digests = reader.hexdigests()
        step = "stat"
        stat = backend.stat(key)
        if stat is None or stat.size != len(data):
            raise RuntimeError(f"the probe holds {stat.size if stat else 'nothing'} after writing {len(data)} bytes")
        for name, value in stat.hashes.items():
            if name in digests and digests[name] != value:
                raise RuntimeError(f"the probe's {name} differs from the bytes written")
        row.checksums = ["sha256 (sidecar)", *sorted(set(stat.hashes) | set(info.hashes))]
        notes = getattr(backend, "checksum_notes", None)  # what the store checks beyond what it reported
        if notes is not None:
            row.checksums += notes()
        row.works.append("stat")
        step = "read"
        if backend.read_bytes(key) != data:
            raise RuntimeError("the probe read back differs from the bytes written")
        row.works.append("read")
        step = "delete"
        backend.delete(key)
        if backend.stat(key) is not None:
            raise RuntimeError("the probe is still there after deleting it")
        row.works.append("delete")
        row.status = "ok"
    except Exception as exc:  # noqa: BLE001 - every failure becomes the row's reason
        message = redact_urls(str(exc) or type(exc).__name__)
        row.reason = f"{step}: {message}"
        row.fix = _fix_at(step, message)
    finally:
        # also on Ctrl-C: the probe (a name of its own, never anyone else's) and the
        # directories made for it are removed before the interrupt goes on
        if backend is not None and step in ("write", "stat", "read", "delete"):
            _remove_probe(backend, key, made)
        if backend is not None:
            try:
                backend.close()
            except Exception:  # noqa: BLE001
                pass
    return row


def _fix_at(step: str, message: str) -> str:
    if step == "connect" and "host key" not in message.lower() and "authentication" not in message.lower():
        return "check the host name and port, the network and that the SSH server is running"
    return fix_for(message)


def _remove_probe(backend, key: str, made: list[str]) -> None:
    try:
        backend.delete(key)  # a name of the probe's own (random): if present, it is the probe
        for directory in made:  # deepest first; a directory something else now holds stays
            backend.remove_empty_dir(directory)
    except BaseException:  # noqa: BLE001 - what the row (or the interrupt) says is what matters
        pass


def recordings_in(settings: Settings, since: datetime, until: datetime) -> list[Recording]:
    with RealtimeKitAPI(settings) as api:
        found = []
        for item in api.iter_recordings(start_time=since - MAX_RECORDING_LENGTH, end_time=until):
            if isinstance(item, InvalidRecording):
                continue
            when = item.stopped_time or item.invoked_time
            if since <= when < until:
                found.append(item)
        return found


def check_destinations(
    settings: Settings,
    destination: str | None = None,
    recordings: list[Recording] | None = None,
    source_error: str | None = None,
) -> CheckReport:
    """One row per distinct destination a run would use."""
    report = CheckReport()
    seen: set[str] = set()
    # source, destination, sub-directory, error, what to show when there is no destination
    targets: list[tuple[str, Destination | None, str, str | None, str]] = []
    if source_error:
        report.checks.append(
            DestinationCheck(source="RealtimeKit API", destination="(listing recordings)", status="failed",
                             reason=source_error, fix="check CLOUDFLARE_API_TOKEN / CLOUDFLARE_ACCOUNT_ID / REALTIMEKIT_APP_ID")
        )
    for label, url in (("--destination", destination), ("ARCHIVE_DEFAULT_DESTINATION", settings.archive_default_destination)):
        if url:
            try:
                targets.append((label, parse_destination_url(url), "", None, url))
            except InvalidDestination as exc:
                targets.append((label, None, "", str(exc), url))
    if not destination:  # with an override every recording goes there
        counts: dict[str, int] = {}
        configs: dict[str, tuple[Destination | None, str, str | None, str]] = {}
        for rec in recordings or []:
            sc = rec.storage_config
            if sc is None or not sc.type:
                continue
            subdir = ""
            try:  # where archiving puts its files (an absolute SFTP path is absolute here too)
                dest: Destination | None
                dest, subdir = placement(rec, None, None)
                ident, err = dest.model_dump_json() + subdir, None
            except UnsupportedDestination as exc:
                dest, ident, err = None, f"unsupported:{sc.type}", f"skipped: {exc}"
            except InvalidDestination as exc:
                dest, ident, err = None, f"invalid:{exc}", str(exc)
            counts[ident] = counts.get(ident, 0) + 1
            configs[ident] = (dest, subdir, err, sc.type or "?")
        for ident, (dest, subdir, err, stype) in configs.items():
            n = counts[ident]
            label = f"storage_config {stype} ({n} recording{'s' if n != 1 else ''})"
            targets.append((label, dest, subdir, err, f"({stype})"))
    for label, dest, subdir, err, shown in targets:
        if dest is None:
            skipped = bool(err and err.startswith("skipped: "))
            reason = (err or "")[len("skipped: "):] if skipped else err
            report.checks.append(
                DestinationCheck(source=label, destination=redact_urls(shown), status="skipped" if skipped else "failed",
                                 reason=reason, fix=None if skipped else fix_for(reason or ""))
            )
            continue
        ident = dest.model_dump_json() + subdir
        if ident in seen:
            continue
        seen.add(ident)
        report.checks.append(probe_destination(dest, settings, label, subdir))
    return report


def run_check(
    settings: Settings,
    since: datetime | None = None,
    until: datetime | None = None,
    destination: str | None = None,
    include_recordings: bool = True,
) -> CheckReport:
    """The whole preflight: the window's recordings (default: the lookback), then every
    destination they, the default destination and the override would use."""
    from flows.windows import resolve_window

    since, until = resolve_window(since, until, settings)
    recordings: list[Recording] = []
    error = None
    if include_recordings and not destination:
        try:
            recordings = recordings_in(settings, since, until)
        except Exception as exc:  # noqa: BLE001 - reported as a failed row
            error = redact_urls(str(exc) or type(exc).__name__)
    report = check_destinations(settings, destination, recordings, source_error=error)
    report.since, report.until = since, until
    return report


def markdown_table(report: CheckReport) -> str:
    lines = [
        "| status | destination | used by | works | checksums | options | reason / fix |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in report.checks:
        detail = "" if c.status == "ok" else f"{c.reason or ''}" + (f" — fix: {c.fix}" if c.fix else "")
        options = ", ".join(f"{k}={v}" for k, v in sorted(c.options.items()))
        cells = [c.status, c.destination, c.source, ", ".join(c.works), ", ".join(c.checksums), options, detail]
        lines.append("| " + " | ".join(markdown_text(x) for x in cells) + " |")
    if not report.checks:
        lines.append("| - | no destination to check | | | | | |")
    return "\n".join(lines)
