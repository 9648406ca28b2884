"""Units of work that check what a destination holds against the sidecars the archiver wrote.

* ``check_archive``: every file one sidecar lists is there, at its recorded size, with the
  hashes the storage reports (GCS crc32c; S3 checksums where stored) matching the sidecar's,
  and, with ``deep``, on storage that reports none (local, SFTP), re-read and re-hashed
  (sha256, streamed: one chunk in memory).
* ``verify_destination``: the scrub of one destination: its listing streamed, each sidecar
  checked, at most ``ARCHIVE_VERIFY_OPS_PER_SECOND`` storage operations a second.
* ``find_archives``: whether recordings the watchdog would call lost are in fact archived
  (a recording archived days ago has no download URL any more: that is no loss).

Nothing here writes or deletes anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import posixpath
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Literal

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from rtk_archiver.log import run_logger
from rtk_archiver.models import ObjectInfo, Recording, Sidecar
from rtk_archiver.naming import candidate_keys, redact_urls
from rtk_archiver.settings import load_settings
from storage_backends import Destination, StorageBackend, open_backend
from storage_backends.base import StorageError
from storage_backends.nofollow import NotOurs
from tasks.limits import claim_is_live
from tasks.retry import retry_transient

SIDECAR_SUFFIX = ".metadata.json"
#: listing entries remembered, so that a sidecar's files listed just before it need no stat
RECENT_ENTRIES = 4096
#: listing entries counted as one storage operation (a page)
ENTRIES_PER_OP = 1000

#: "not ours": a link (or FIFO, device) where an archive file should be: never read through
Problem = Literal["missing", "size", "hash", "sidecar", "not ours"]


class FileProblem(BaseModel):
    """One thing wrong with an archived recording."""

    recording_id: str | None  # None: the sidecar itself cannot be read
    sidecar: str  # key of the sidecar, relative to the destination root
    file: str | None = None  # key of the file, if the problem is a file's
    problem: Problem
    detail: str


class DestinationScrub(BaseModel):
    """What the scrub found at one destination."""

    destination: str  # display URL, no secrets
    sidecars: int = 0
    files: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0
    problems: list[FileProblem] = Field(default_factory=list)
    error: str | None = None  # the destination could not be (completely) listed
    in_progress: int = 0  # sidecars that are live claims (being archived right now): not checked
    foreign: int = 0  # *.metadata.json files the archiver did not write: left alone


class OpsLimiter:
    """At most ``per_second`` operations a second, paced evenly (thread-safe)."""

    def __init__(self, per_second: float, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / per_second
        self.clock, self.sleep = clock, sleep
        self.next = clock()
        self.lock = threading.Lock()

    def wait(self) -> None:
        with self.lock:
            now = self.clock()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            self.sleep(start - now)


def _no_limit() -> None:
    return None


def hashes_agree(info: ObjectInfo, sha256: str, hashes: dict[str, str]) -> tuple[bool, list[str]]:
    """(all hashes both sides know agree, the names compared)."""
    compared = []
    for name, value in info.hashes.items():
        known = sha256 if name == "sha256" else hashes.get(name)
        if known is None:
            continue
        compared.append(name)
        if known.lower() != value.lower():
            return False, compared
    return True, compared


def check_archive(
    backend: StorageBackend,
    sidecar_key: str,
    sidecar: Sidecar,
    *,
    listed: dict[str, ObjectInfo] | None = None,
    deep: bool = False,
    wait: Callable[[], None] = _no_limit,
) -> tuple[list[FileProblem], int, int]:
    """Check every file ``sidecar`` lists (in the sidecar's directory): (problems, files
    checked, bytes re-hashed). ``listed``: what the listing already said about some keys."""
    problems: list[FileProblem] = []
    directory = posixpath.dirname(sidecar_key)
    hashed = 0

    def problem(kind: Problem, detail: str, key: str | None = None) -> None:
        problems.append(FileProblem(recording_id=sidecar.recording_id, sidecar=sidecar_key, file=key, problem=kind, detail=detail))

    if not sidecar.files:
        problem("sidecar", "the sidecar lists no files")
    for entry in sidecar.files:
        if not entry.name or "/" in entry.name or "\\" in entry.name or entry.name in (".", ".."):
            problem("sidecar", f"the sidecar lists an unsafe file name {entry.name!r}: not followed")
            continue
        key = posixpath.join(directory, entry.name) if directory else entry.name
        info = (listed or {}).get(key)
        if info is None or (getattr(backend, "hash_types", ()) and not info.hashes):
            # not listed nearby, or listed without the hashes the backend has: ask it
            wait()
            try:
                info = backend.stat(key)
            except NotOurs as exc:
                problem("not ours", f"{entry.kind} file {entry.name}: not intact: {exc}", key)
                continue
        if info is None:
            problem("missing", f"{entry.kind} file {entry.name} ({entry.size} bytes) is missing", key)
            continue
        if info.size != entry.size:
            problem("size", f"{entry.kind} file {entry.name} holds {info.size} bytes, the sidecar says {entry.size}", key)
            continue
        agree, compared = hashes_agree(info, entry.sha256, entry.hashes)
        if not agree:
            problem("hash", f"{entry.kind} file {entry.name}: {'/'.join(compared)} differs from the sidecar's", key)
            continue
        if deep and not compared and entry.sha256:
            wait()
            digest = hashlib.sha256()
            try:
                for chunk in backend.read_chunks(key):
                    digest.update(chunk)
                    hashed += len(chunk)
            except NotOurs as exc:  # replaced by a link since it was listed
                problem("not ours", f"{entry.kind} file {entry.name}: not intact: {exc}", key)
                continue
            if not hmac.compare_digest(digest.hexdigest(), entry.sha256.lower()):
                problem("hash", f"{entry.kind} file {entry.name}: sha256 differs from the sidecar's (re-read)", key)
    return problems, len(sidecar.files), hashed


#: how every sidecar the archiver writes begins (tasks/archive.py: JSON, schema_version first)
_OUR_SIDECAR = re.compile(rb'\A\s*\{\s*"schema_version"\s*:')
_OUR_HEADER = b'{"schema_version":'  # the same, without whitespace
#: the keys of a sidecar (rtk_archiver.models.Sidecar)
_OUR_KEYS = frozenset(Sidecar.model_fields)
_NOT_JSON = object()


class NotOurSidecar(str):
    """Why a ``*.metadata.json`` is somebody else's file, not a sidecar of the archiver."""


def written_by_archiver(raw: bytes, media_beside: Callable[[], bool] = lambda: False) -> bool:
    """Whether an unreadable ``*.metadata.json`` is a damaged sidecar of ours rather than a
    user's own file. JSON: an object naming a recording and an archiver version, or with most
    of a sidecar's keys. Not JSON (cut short, overwritten): it begins as ours do (or as much of
    our first line as is left), or names a recording and an archiver version, or it is empty or
    an object cut short with its media file beside it (``media_beside``: the name without
    ``.metadata.json`` exists)."""
    try:
        value = json.loads(raw)
    except ValueError:
        value = _NOT_JSON
    if value is not _NOT_JSON:
        if not isinstance(value, dict):
            return False
        keys = set(value)
        return {"recording_id", "archiver_version"} <= keys or len(keys & _OUR_KEYS) >= 5
    head = re.sub(rb"\s+", b"", raw.lstrip(b"\xef\xbb\xbf"))[: len(_OUR_HEADER)]
    if _OUR_SIDECAR.match(raw) or (head and _OUR_HEADER.startswith(head)):
        return True
    if b'"recording_id"' in raw and b'"archiver_version"' in raw:
        return True
    return (not head or head[:1] == b"{") and media_beside()


def read_sidecar_at(backend: StorageBackend, key: str, wait: Callable[[], None] = _no_limit) -> Sidecar | str | None:
    """The sidecar at key; a string saying why it cannot be read (a ``NotOurSidecar`` if it
    is not one of ours at all); None if absent."""
    wait()
    raw = backend.read_bytes(key)
    if raw is None:
        return None
    def media_beside() -> bool:
        try:
            return backend.stat(key[: -len(SIDECAR_SUFFIX)]) is not None
        except Exception:  # noqa: BLE001 - a link, an error: not proof that it is ours
            return False

    try:
        return Sidecar.model_validate_json(raw)
    except ValueError as exc:
        if not written_by_archiver(raw, media_beside):
            return NotOurSidecar("not a sidecar of the archiver (a file of its own name): left alone")
        first = exc.errors()[0] if hasattr(exc, "errors") and exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ())) or "content"
        return f"the sidecar cannot be read ({where}: {first.get('msg', 'not JSON')})"


@task(  # retries: ARCHIVE_TASK_RETRIES / ARCHIVE_RETRY_DELAY_SECONDS, as every task (flows.retries.retrying)
    name="verify-destination",
    task_run_name="verify {label}",
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,
    persist_result=False,
)
def verify_destination(destination: Destination, label: str, deep: bool = False, prefix: str = "") -> DestinationScrub:
    """Scrub one destination (only ``prefix``, a directory ``dir/``, if given): stream its
    listing, check every sidecar's files."""
    settings = load_settings()
    logger = run_logger()
    limiter = OpsLimiter(settings.archive_verify_ops_per_second)
    result = DestinationScrub(destination=label)
    recent: OrderedDict[str, ObjectInfo] = OrderedDict()
    started = time.monotonic()
    with open_backend(destination, settings) as backend:
        limiter.wait()  # the first page
        for n, (key, info) in enumerate(backend.list(prefix), start=1):
            if n % ENTRIES_PER_OP == 0:
                limiter.wait()
            recent[key] = info
            if len(recent) > RECENT_ENTRIES:
                recent.popitem(last=False)
            if not key.endswith(SIDECAR_SUFFIX):
                continue
            sidecar = read_sidecar_at(backend, key, limiter.wait)
            if sidecar is None:
                continue  # removed while listing
            if isinstance(sidecar, NotOurSidecar):
                logger.info("%s: %s", backend.url(key), sidecar)
                result.foreign += 1
                continue
            result.sidecars += 1
            if isinstance(sidecar, str):
                result.problems.append(FileProblem(recording_id=None, sidecar=key, problem="sidecar", detail=sidecar))
                continue
            if sidecar.state == "claimed" and claim_is_live(sidecar.claim_holder, sidecar.archived_at, sidecar.claim_token):
                logger.info("%s: recording %s is being archived right now (its claim is live): checked next time",
                            backend.url(key), sidecar.recording_id)
                result.in_progress += 1
                continue
            problems, files, hashed = check_archive(backend, key, sidecar, listed=recent, deep=deep, wait=limiter.wait)
            result.files += files
            result.bytes_hashed += hashed
            result.problems.extend(problems)
            for p in problems:
                logger.error("%s: recording %s: %s", backend.url(p.file or p.sidecar), p.recording_id, p.detail)
    result.seconds = round(time.monotonic() - started, 3)
    logger.info(
        "Verified %s: %d sidecar(s), %d file(s), %d problem(s)%s in %.1f s",
        label, result.sidecars, result.files, len(result.problems),
        f", {result.bytes_hashed} bytes re-hashed" if deep else "", result.seconds,
    )
    return result


class ArchiveCheck(BaseModel):
    archived: set[str] = Field(default_factory=set)  # an intact archive was found
    unknown: dict[str, str] = Field(default_factory=dict)  # id -> why it could not be checked


@task(name="find-archives", cache_policy=NO_CACHE, persist_result=False)
def find_archives(recordings: list[Recording], destination: str | None = None) -> ArchiveCheck:
    """Which of these recordings have an intact archive (sidecar naming them, every file at
    its size) where the archiver would put them (``destination``, else their storage_config,
    else the default destination)."""
    from rtk_archiver.plan import Action, Observed, plan_run, targets_for  # the one place keys are decided
    from tasks.survey import survey_destination

    settings = load_settings()
    check = ArchiveCheck()
    targets = targets_for(recordings, destination, settings.archive_default_destination, archivable_only=False)
    groups: dict[str, list] = {}
    for t in targets:
        if t.destination is not None:
            groups.setdefault(t.place_id, []).append(t)
    observed: dict[str, Observed] = {}
    for label, group in groups.items():
        try:
            observed.update(survey_destination.fn(group[0].destination, group))
        except Exception as exc:  # noqa: BLE001 - named per recording, never fatal
            reason = redact_urls(f"{type(exc).__name__}: {exc}" if not isinstance(exc, StorageError) else str(exc))
            observed.update({t.recording.id: Observed(error=reason) for t in group})
    for plan in plan_run(targets, observed):
        rid = plan.recording.id
        if plan.action == Action.ALREADY_ARCHIVED:
            check.archived.add(rid)
        elif rid in observed and observed[rid].error:
            check.unknown[rid] = f"{plan.destination.display_url() if plan.destination else '?'} could not be checked: {observed[rid].error}"
    return check


def sidecar_keys(recording: Recording) -> Iterable[str]:
    """Where the archiver puts this recording's sidecar (any of the names it may take)."""
    return {keys.sidecar for keys in candidate_keys(recording)}
