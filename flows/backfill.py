"""Backfills: archive a past date range, planned from one listing of it.

1. One listing of [start, end) (an ``end`` in the future is cut to now, and the run says so).
2. ``flows.windows.plan_windows`` cuts the range where the recordings are, not by the clock:
   each window holds about ``recordings_per_window`` recordings, and a big backfill has at
   least ``parallelism`` windows so that it spreads over every worker.
3. One window (a small backfill): this run archives the listed recordings itself, like
   ``rtk-archiver archive --since --until`` (no child run, no second listing). Several: each
   is a flow run of the ``archive-recordings/archive-window`` deployment (``rtk-archiver serve``
   or ``prefect deploy --all``), at most ``parallelism`` at once over all workers; without that
   deployment this run archives them all itself.

The backfill fails when any window failed (its own recordings, or a child run that did not
complete). Following a child through a busy or restarting Prefect server: every call is
retried on transient API errors (Prefect's client, and ``run_window`` for up to
``API_PATIENCE_SECONDS``); a window that still cannot be created or followed counts as failed,
and the other windows go on. Re-running over the same or an overlapping range is safe and cheap: archiving is
idempotent (already archived recordings transfer 0 bytes), so an interrupted or failed backfill
is resumed by running it again.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, TypeVar

import httpx

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Failed, State
from pydantic import BaseModel, Field

from flows.archive import archive_all, finish_report, invalid_outcome
from flows.runtime import ArchiveTaskRunner, retrying
from flows.watchdog import watch_for_loss
from flows.parameters import form_field
from flows.windows import DESTINATION_HELP, OptionalDestination, PlannedWindow, plan_windows
from flows.failure import failed_on_purpose
from rtk_archiver.display import markdown_text, printable_row
from rtk_archiver.models import ArchiveReport
from rtk_archiver.naming import redact_urls
from rtk_archiver.settings import load_settings
from tasks.limits import ensure_limits
from tasks.listing import list_recordings

T = TypeVar("T")
WINDOW_DEPLOYMENT = "archive-recordings/archive-window"
DEFAULT_RECORDINGS_PER_WINDOW = 250


class WindowResult(BaseModel):
    window: str
    since: datetime
    until: datetime
    recordings: int  # found by the planning listing
    run: str  # "this run" or the child flow run's name
    state: str
    ok: bool
    reason: str | None = None


class BackfillReport(BaseModel):
    start: datetime
    end: datetime  # what was backfilled: the requested end, or now when that was in the future
    requested_end: datetime
    recordings: int
    windows: list[WindowResult] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @property
    def failed(self) -> list[WindowResult]:
        return [w for w in self.windows if not w.ok]


class BackfillFailed(Exception):
    """The data of a Failed backfill: the report rides along."""

    def __init__(self, message: str, report: BackfillReport) -> None:
        super().__init__(message)
        self.report = report


def _window_deployment_exists() -> bool:
    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(WINDOW_DEPLOYMENT)
        return True
    except ObjectNotFound:
        return False


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _label(w: PlannedWindow) -> str:
    return f"window {w.since:%Y-%m-%d %H:%M:%S} to {w.until:%Y-%m-%d %H:%M:%S}"


@flow(name="backfill-recordings", task_runner=ArchiveTaskRunner(), validate_parameters=True)
def backfill(
    # constraints in the annotation, default, title and help in form_field(): Prefect's form shows them all
    start: datetime = form_field(
        ..., "Start of the range",
        "Archive the recordings that stopped at or after this date or date-time (UTC if no zone); it must be in the past.",
    ),
    end: datetime = form_field(
        ..., "End of the range",
        "Archive the recordings that stopped before this date or date-time (UTC if no zone). An end in the future "
        "is cut to now: the scheduled poll archives what stops later.",
    ),
    recordings_per_window: Annotated[int, Field(ge=1, le=100_000)] = form_field(
        DEFAULT_RECORDINGS_PER_WINDOW, "Recordings per window",
        "At most this many recordings in each window, planned from one listing of the range. A backfill of this many "
        "recordings or fewer is archived by this run itself; a bigger one is split into windows, each archived by a "
        f"child run ({WINDOW_DEPLOYMENT}).",
    ),
    parallelism: Annotated[int, Field(ge=1, le=64)] = form_field(
        4, "Child runs at once",
        "At most this many windows are archived at the same time, as child runs over all workers; a big backfill is "
        "split into at least this many windows.",
    ),
    window_hours: Annotated[float, Field(gt=0, le=24 * 366)] | None = form_field(
        None, "Longest window (hours)",
        "Optional: no window is longer than this many hours. None (the default): the windows follow the recordings, "
        "whatever their length.",
    ),
    # a text box; empty means not given (each recording's own destination)
    destination: OptionalDestination = form_field("", "Destination", DESTINATION_HELP),
    dry_run: bool = form_field(False, "Dry run", "Only report what would be archived; nothing is written."),
) -> BackfillReport:
    """Archive every recording that stopped in [start, end), planned from one listing."""
    logger = get_run_logger()
    settings = load_settings()
    start, requested_end = _aware(start), _aware(end)
    now = datetime.now(timezone.utc)
    if start >= now:
        raise ValueError(f"start ({start.isoformat()}) is in the future: nothing to backfill yet (the scheduled poll archives what is to come)")
    if start >= requested_end:
        raise ValueError(f"start ({start.isoformat()}) must be before end ({requested_end.isoformat()})")
    end = min(requested_end, now)
    report = BackfillReport(start=start, end=end, requested_end=requested_end, recordings=0)
    if end < requested_end:
        note = (f"end {requested_end.isoformat()} is in the future: backfilled up to now, {end.isoformat()}; "
                "the scheduled poll archives what stops later")
        report.notes.append(note)
        logger.warning(note)
    ensure_limits(settings)

    listing = retrying(list_recordings, settings)(start, end)
    times = [r.stopped_time or r.invoked_time for r in listing.recordings]
    report.recordings = len(times)
    windows = plan_windows(
        start, end, times, per_window=recordings_per_window, parallelism=parallelism,
        max_span=timedelta(hours=window_hours) if window_hours else None,
    )
    fan_out = len(windows) > 1 and _window_deployment_exists()
    logger.info(
        "Backfill of %d recording(s) from %s to %s: %s",
        len(times), start.isoformat(), end.isoformat(),
        f"{len(windows)} window(s) as runs of {WINDOW_DEPLOYMENT}, {parallelism} at once" if fan_out
        else "archived by this run (no child runs)",
    )

    if fan_out:
        parent = FlowRunContext.get()
        parent_id = str(parent.flow_run.id) if parent and parent.flow_run else None

        def run(window: PlannedWindow) -> WindowResult:
            params = {"since": window.since, "until": window.until, "dry_run": dry_run}
            if destination is not None:  # not given: left out (the server takes no null for it)
                params["destination"] = destination
            return run_window(window, params, parent_id, logger)

        # each thread runs in a copy of this run's context, so the children are its subflows
        contexts = [contextvars.copy_context() for _ in windows]
        with ThreadPoolExecutor(max_workers=parallelism) as pool:
            report.windows = list(pool.map(lambda ctx, w: ctx.run(run, w), contexts, windows))
    else:
        # archive the listing here: one plan, one task runner, like `rtk-archiver archive`
        archive = ArchiveReport(since=start, until=end, dry_run=dry_run)
        archive.outcomes.extend(invalid_outcome(item) for item in listing.invalid)
        archive.outcomes.extend(archive_all(listing.recordings, destination, dry_run, settings))
        watch_for_loss(archive, listing.recordings, destination, settings)
        finish_report(archive)  # events, the rtk-archive-report artifact, the summary line
        failure = archive.run_failure_message()
        whole = PlannedWindow(since=start, until=end, recordings=len(times))
        report.windows = [WindowResult(
            window=_label(whole), since=start, until=end, recordings=len(times), run="this run",
            state="Completed" if failure is None else "Failed", ok=failure is None, reason=failure,
        )]
    return _finish(report)


#: how long a backfill keeps trying to reach the Prefect API about one window (each call is
#: also retried by Prefect's client: 5xx, timeouts, connection errors) before it counts the
#: window as failed; a server restart or an overloaded database lasts less than this
API_PATIENCE_SECONDS = 600.0
CHILD_POLL_SECONDS = 2.0


def transient_api_error(exc: BaseException) -> bool:
    """An error talking to the Prefect API that a later call may not meet: the connection (the
    server restarting), a timeout, or a 408/429/5xx answer (an overloaded server or database)."""
    if isinstance(exc, httpx.TransportError):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        code = exc.response.status_code
        return code in (408, 429) or code >= 500
    return False


def with_patience(call: Callable[[], T], what: str, logger, *, patience: float | None = None,
                  pause: float | None = None, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> T:
    """``call()``, tried again after transient Prefect API errors for up to ``patience`` seconds
    (``API_PATIENCE_SECONDS``) since the first failure, ``pause`` (``CHILD_POLL_SECONDS``) apart;
    any other error, or one that outlasts ``patience``, is raised."""
    patience = API_PATIENCE_SECONDS if patience is None else patience
    pause = CHILD_POLL_SECONDS if pause is None else pause
    first_failure = None
    while True:
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - sorted below
            if not transient_api_error(exc):
                raise
            now = clock()
            first_failure = now if first_failure is None else first_failure
            if now - first_failure >= patience:
                raise
            logger.warning("%s: the Prefect API failed (%s); trying again", what, _api_error_text(exc))
            sleep(pause)


def _api_error_text(exc: BaseException) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} from {exc.request.method} {exc.request.url.path}"
    return f"{type(exc).__name__}: {redact_urls(str(exc))[:200]}"


def run_window(window: PlannedWindow, params: dict, parent_id: str | None, logger, *,
               read_flow_run: Callable[[Any], Any] | None = None, start: Callable[..., Any] | None = None) -> WindowResult:
    """One window as a child run of ``WINDOW_DEPLOYMENT``, waited for until its final state.

    Never raises: a window whose run cannot be created or followed (the API failing for longer
    than ``API_PATIENCE_SECONDS``, the run deleted) is a failed window, so that the other windows
    still run and the backfill's report and final state count it. The child is created with an
    idempotency key (this backfill run and the window), so a creation retried after an answer
    was lost finds the same run instead of starting a second one."""
    label = _label(window)
    result = dict(window=label, since=window.since, until=window.until, recordings=window.recordings)
    key = f"rtk-backfill-{parent_id}-{window.since.isoformat()}-{window.until.isoformat()}" if parent_id else None
    start = start or (lambda: run_deployment(WINDOW_DEPLOYMENT, parameters=params, flow_run_name=label, timeout=0,
                                             idempotency_key=key))
    read_flow_run = read_flow_run or _read_flow_run
    child = None
    try:
        child = with_patience(start, f"{label}: creating its run", logger)
        while child.state is None or not child.state.is_final():
            time.sleep(CHILD_POLL_SECONDS)
            child = with_patience(lambda: read_flow_run(child.id), f"{label}: reading {child.name}", logger)
    except Exception as exc:  # noqa: BLE001 - the window failed; the others go on
        what = f"run {child.name} could not be followed" if child is not None else "its run could not be created"
        reason = f"{what}: {_api_error_text(exc)}" + ("; it may still be running" if child is not None else "")
        logger.error("%s: %s", label, reason)
        return WindowResult(**result, run=child.name if child is not None else "none", state="unknown", ok=False, reason=reason)
    state = child.state
    return WindowResult(
        **result, run=child.name, state=state.name, ok=state.is_completed(),
        reason=(state.message or None) if not state.is_completed() else None,
    )


def _read_flow_run(flow_run_id: Any) -> Any:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def _finish(report: BackfillReport) -> BackfillReport | State:
    rows = [{"window": w.window, "recordings": w.recordings, "run": w.run, "state": w.state, "ok": w.ok,
             "reason": w.reason or ""} for w in report.windows]
    create_table_artifact(table=[printable_row(r) for r in rows], key="rtk-backfill", description="Backfill windows")
    lines = [
        f"Backfill of **{report.recordings}** recording(s) from {report.start.isoformat()} to {report.end.isoformat()} "
        f"in {len(report.windows)} window(s); {len(report.failed)} failed.",
        *(f"- {markdown_text(note)}" for note in report.notes),
    ]
    create_markdown_artifact(markdown="\n".join(lines), key="rtk-backfill-summary", description="Backfill summary")
    if not report.failed:
        return report
    first = report.failed[0]
    if first.run == "this run":
        message = f"{first.reason or first.state}; run the backfill again to resume"
    else:
        names = ", ".join(w.window for w in report.failed[:10]) + (", ..." if len(report.failed) > 10 else "")
        message = (f"{len(report.failed)} of {len(report.windows)} window(s) did not complete: {names}"
                   + (f"; first: {first.state}: {first.reason}" if first.reason else "")
                   + "; run the backfill again to resume")
    get_run_logger().error("Backfill failed: %s", message)
    failed_on_purpose()
    return Failed(message=message[:1000], data=BackfillFailed(message, report))
