"""The archive flows' bodies, without Prefect: which recordings, in what order, how many at once.

``flows.archive`` makes them Prefect flows (``archive_recordings``, ``archive_one``) and
re-exports what is here; ``rtk-archiver archive-one`` without a Prefect API runs
``archive_one_body`` itself (``flows.direct``). Nothing here imports Prefect at import time
(the tasks are defined with ``tasks.define.task``): importing it costs ~80 MiB of memory,
more than the transfer itself (BENCHMARKS.md, "Memory").
"""

from __future__ import annotations

import signal
from collections import Counter
from typing import TYPE_CHECKING

from flows import direct
from rtk_archiver import interrupt
from flows.alerts import SETTLED, FailureAlerts, load_memory, save_memory
from flows.reporting import EVENT_FOR, Progress, emit_outcome_event, publish_report
from flows.retries import retrying
from rtk_archiver.api import InvalidRecording
from rtk_archiver.log import run_logger
from rtk_archiver.models import ArchiveReport, OutcomeKind, Recording, RecordingOutcome
from rtk_archiver.naming import redact_urls
from rtk_archiver.plan import TASK_ACTIONS, Action, Observed, RecordingPlan, Target, plan_run, targets_for
from rtk_archiver.settings import Settings, load_settings
from storage_backends import preload_backends
from tasks.archive import archive_recording
from tasks.limits import ensure_limits, transfer_slots
from tasks.listing import get_recording
from tasks.survey import survey_destination

if TYPE_CHECKING:
    from prefect.futures import PrefectFuture
    from prefect.states import State


def _failure_reason(exc: BaseException) -> str:
    return redact_urls(f"{exc}" if str(exc) else type(exc).__name__)


def _outcome(plan: RecordingPlan, dry_run: bool) -> RecordingOutcome:
    """The outcome of a recording that needs no transfer task (or would, in a dry run)."""
    rec = plan.recording
    kind = plan.verdict
    where = _going_to(plan) if kind == OutcomeKind.FAILED else _at(plan)
    reason = plan.reason
    if plan.action == Action.ALREADY_ARCHIVED:
        kind = OutcomeKind.ALREADY_ARCHIVED
    elif plan.action in TASK_ACTIONS:
        kind = OutcomeKind.WOULD_ARCHIVE
        if plan.action != Action.ARCHIVE:
            reason = f"would {plan.action.value} at {where}" + (" (by its size: no download URL)" if plan.action == Action.RECORD_DELIVERY else "")
        elif plan.upload:
            reason = plan.upload_note
    assert kind is not None
    return RecordingOutcome(
        recording_id=rec.id, output_file_name=rec.output_file_name, kind=kind, reason=reason,
        destination=where, bytes_total=plan.bytes_total,  # failed: where it was going
        retry_later=plan.retry_later, upload=plan.upload if plan.action != Action.NONE or plan.upload else None,
        upload_note=plan.upload_note,
    )


def survey(targets: list[Target], settings: Settings) -> dict[str, Observed]:
    """Step 2 of the plan: one survey task per destination, all at once."""
    groups: dict[str, list[Target]] = {}
    for t in targets:
        if t.destination is not None and t.verdict is None:
            groups.setdefault(t.place_id, []).append(t)
    task = retrying(survey_destination, settings)
    futures = [(group, task.submit(group[0].destination, group)) for group in groups.values()]
    observed: dict[str, Observed] = {}
    for group, future in futures:
        result = future.result(raise_on_failure=False)
        if isinstance(result, dict):
            observed.update(result)
        else:
            reason = _failure_reason(result) if isinstance(result, BaseException) else "the destination could not be read"
            observed.update({t.recording.id: Observed(error=f"cannot look at the destination: {reason}") for t in group})
    return observed


def archive_all(
    recordings: list[Recording],
    destination: str | None,
    dry_run: bool,
    settings: Settings,
    force_ids: frozenset[str] = frozenset(),
) -> list[RecordingOutcome]:
    """Plan the run once (``rtk_archiver.plan``: verdicts, destinations, keys), then one
    archive task per recording that needs a transfer, bounded by the task runner; one
    recording's failure never stops the others. ``force_ids``: archive these again over their
    own files even if they look archived (the scrub found them damaged)."""
    logger = run_logger()
    targets = targets_for(recordings, destination, settings.archive_default_destination)
    preload_backends({t.destination.kind for t in targets if t.destination is not None})
    plans = plan_run(targets, survey(targets, settings), force_ids)
    task = retrying(archive_recording, settings)
    transfers = Counter(p.destination.kind for p in plans if p.action in TASK_ACTIONS and p.destination and not dry_run)
    with transfer_slots(transfers, settings):  # the run's transfer slots, per backend, taken once
        return _archive_planned(recordings, targets, plans, task, dry_run, logger)


def _archive_planned(recordings, targets, plans, task, dry_run, logger) -> list[RecordingOutcome]:
    submitted: list[tuple[RecordingPlan, "PrefectFuture"]] = []
    outcomes: list[RecordingOutcome] = []
    for target, plan in zip(targets, plans):
        if plan.layout is not None and target.candidates and plan.layout.main != target.candidates[0].main:
            logger.info(
                "%s: %s is taken at the destination: using %s", plan.recording.label(),
                target.candidates[0].main, plan.layout.main,
            )
        if plan.action in TASK_ACTIONS and not dry_run:
            submitted.append((plan, task.submit(plan)))
        else:
            outcomes.append(_outcome(plan, dry_run))
    counts = Counter(p.action.value if p.action != Action.NONE else (p.verdict.value if p.verdict else "?") for p in plans)
    logger.info("Plan: %s", ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "nothing to do")
    progress = Progress(len(submitted))
    try:
        for plan, future in submitted:
            outcomes.append(_task_outcome(plan, future.result(raise_on_failure=False), logger))
            progress.advance()
    except BaseException as exc:
        if not isinstance(exc, Exception):
            # the run is being stopped while its tasks transfer (serve's or a worker's cancel:
            # Prefect's SIGTERM bridge raises here, in the main thread; Ctrl-C): stop the
            # transfers at once too, so that each aborts its upload and removes its temp file
            # before the process exits, instead of carrying on until it is killed
            interrupt.request(getattr(exc, "signal", None) or signal.SIGTERM)
        raise
    when = {rec.id: rec.stopped_time or rec.invoked_time for rec in recordings}
    return [o.model_copy(update={"reference_time": when.get(o.recording_id)}) for o in outcomes]


def _task_outcome(plan: RecordingPlan, result: object, logger) -> RecordingOutcome:
    if isinstance(result, RecordingOutcome):
        return result
    rec = plan.recording
    reason = _failure_reason(result) if isinstance(result, BaseException) else "task did not complete"
    logger.error("Failed to archive %s: %s", rec.label(), reason)
    return RecordingOutcome(
        recording_id=rec.id, output_file_name=rec.output_file_name, kind=OutcomeKind.FAILED, reason=reason,
        destination=_going_to(plan),
    )


def _at(plan: RecordingPlan) -> str | None:
    """Where the plan puts the recording's video (None: nowhere decided)."""
    return plan.destination.display_url(plan.layout.main) if plan.destination and plan.layout else None


def _going_to(plan: RecordingPlan) -> str | None:
    """For a failed recording, where it was going: its video's name, else (its destination
    could not be looked at, no name was decided) the destination itself."""
    return _at(plan) or (plan.destination.display_url() if plan.destination is not None else None)


class RecordingsFailed(Exception):
    """The data of a Failed run in which recordings failed: the report rides along, so callers
    (the CLI, the poll, tests) still get every outcome (``report_of``)."""

    def __init__(self, message: str, report: ArchiveReport) -> None:
        super().__init__(message)
        self.report = report


def run_state(report: ArchiveReport) -> "ArchiveReport | State | direct.FailedRun":
    """What a flow returns: its report, or a Failed state carrying it when any recording failed
    (so the run is red in the UI and "flow run failed" automations fire); run without Prefect
    (``flows.direct``), the same as a ``direct.FailedRun``."""
    message = report.run_failure_message()  # failed, at risk of expiring, or lost recordings
    _remember_report(report)
    if message is None:
        return report
    if direct.active():
        return direct.FailedRun(message[:1000], RecordingsFailed(message, report))
    from prefect.states import Failed

    from flows.failure import failed_on_purpose

    run_logger().error("Run failed: %s", message)
    failed_on_purpose()
    return Failed(message=message[:1000], data=RecordingsFailed(message, report))


#: flow run id -> the report its flow returned, for ``report_of`` in the same process: the state
#: a flow call returns is the server's answer to the final state, which a busy server can give
#: without the data (seen under load: "ended Failed without a report")
_REPORTS: dict[str, ArchiveReport] = {}
_REPORTS_KEPT = 64


def _remember_report(report: ArchiveReport) -> None:
    if direct.active():
        return
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    if ctx is not None and ctx.flow_run is not None:
        _REPORTS[str(ctx.flow_run.id)] = report
        while len(_REPORTS) > _REPORTS_KEPT:
            _REPORTS.pop(next(iter(_REPORTS)))


def report_of(state: "State") -> ArchiveReport | None:
    """The report of a finished run of one of the archive flows, failed or not."""
    try:
        result = state.result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - the data did not come back with the state
        result = None
    if isinstance(result, ArchiveReport):
        return result
    if isinstance(result, RecordingsFailed):
        return result.report
    run_id = getattr(state.state_details, "flow_run_id", None)
    return _REPORTS.get(str(run_id)) if run_id is not None else None


def publish_outcomes(report: ArchiveReport) -> None:
    """Events (a failure alerts once: ``flows.alerts``), artifacts and the summary line of a
    run's report."""
    alerts = _failure_alerts(report)
    for outcome in report.outcomes:
        alert = alerts.decide(outcome) if alerts is not None else None
        if outcome.kind == OutcomeKind.FAILED and alert is not None and alert["alert"] is None:
            run_logger().info(
                "%s still fails for the same reason (since %s): alerted before, so no rtk.recording.failed this time "
                "(again when the reason changes, or once a day while it lasts)",
                outcome.recording_id, alert["failing_since"],
            )
            emit_outcome_event(outcome, skip=frozenset({EVENT_FOR[OutcomeKind.FAILED]}))
        else:
            emit_outcome_event(outcome, alert if outcome.kind == OutcomeKind.FAILED else None)
    if alerts is not None and not report.dry_run:
        try:
            save_memory(alerts)
        except Exception as exc:  # noqa: BLE001 - at worst the next run alerts again
            run_logger().warning("Could not remember which failures alerted (the next run may alert again): %s", exc)
    publish_report(report)
    counts = ", ".join(f"{n} {k}" for k, n in report.counts().items() if n)
    run_logger().info("Summary: %s; %d bytes transferred", counts or "nothing to do", report.bytes_transferred)


def _failure_alerts(report: ArchiveReport) -> "FailureAlerts | None":
    if direct.active() or not any(o.kind == OutcomeKind.FAILED or o.kind in SETTLED for o in report.outcomes):
        return None
    try:
        return FailureAlerts(load_memory())
    except Exception as exc:  # noqa: BLE001 - then every failure alerts, as without the memory
        run_logger().warning("Could not read which failures alerted before (each failure alerts): %s", exc)
        return None


def finish_report(report: ArchiveReport) -> "ArchiveReport | State | direct.FailedRun":
    """Events, artifacts and the summary line, then the run's final state."""
    publish_outcomes(report)
    return run_state(report)


def invalid_outcome(item: InvalidRecording) -> RecordingOutcome:
    return RecordingOutcome(
        recording_id=item.id, output_file_name=item.output_file_name, kind=OutcomeKind.FAILED, reason=item.reason,
        reference_time=item.reference_time,
    )


def archive_one_body(recording_id: str, destination: str | None = None, dry_run: bool = False) -> "ArchiveReport | State | direct.FailedRun":
    """The ``archive-one`` flow's body: archive a single recording by id."""
    settings = load_settings()
    ensure_limits(settings)
    recording = retrying(get_recording, settings)(recording_id)
    report = ArchiveReport(dry_run=dry_run)
    report.outcomes.extend(archive_all([recording], destination, dry_run, settings))
    return finish_report(report)
