"""What an operator sees on the Prefect server: a failure alerts once (not on every poll), the
run's log ends with its message, the poll run carries its report."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from flows.alerts import ALERT_REPEAT_HOURS, FAILURE_MEMORY_CHARS, FailureAlerts
from rtk_archiver.models import OutcomeKind, RecordingOutcome

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


def _failed(rid: str, reason: str) -> RecordingOutcome:
    return RecordingOutcome(recording_id=rid, kind=OutcomeKind.FAILED, reason=reason)


def test_a_failure_alerts_once_again_when_its_reason_changes_and_once_a_day():
    rid = str(uuid.uuid4())
    memory: dict = {}

    def run(at: datetime, outcome: RecordingOutcome):
        alerts = FailureAlerts(memory, now=at)
        decision = alerts.decide(outcome)
        memory.clear()
        memory.update(alerts.dump())
        return decision

    first = run(T0, _failed(rid, "upload failed after 12 attempts (3.5 s)"))
    assert first["alert"] == "first failure" and first["failing_since"].startswith("2026-12-07T12:00")
    # the same problem on the next polls (only numbers differ): quiet
    assert run(T0 + timedelta(minutes=1), _failed(rid, "upload failed after 14 attempts (4.1 s)"))["alert"] is None
    assert run(T0 + timedelta(hours=5), _failed(rid, "upload failed after 2 attempts (0.5 s)"))["alert"] is None
    changed = run(T0 + timedelta(hours=6), _failed(rid, "access denied"))
    assert changed["alert"] == "reason changed" and changed["failing_for"] == "6.0 h"
    assert run(T0 + timedelta(hours=7), _failed(rid, "access denied"))["alert"] is None
    day = run(T0 + timedelta(hours=6 + ALERT_REPEAT_HOURS + 1), _failed(rid, "access denied"))
    assert day["alert"] == "still failing" and day["failing_for"] == "31.0 h"
    # archived: forgotten; a later failure is a new alert
    assert run(T0 + timedelta(days=2), RecordingOutcome(recording_id=rid, kind=OutcomeKind.ARCHIVED)) is None
    assert memory == {}
    assert run(T0 + timedelta(days=3), _failed(rid, "access denied"))["alert"] == "first failure"
    # pending does not settle it
    assert run(T0 + timedelta(days=3, hours=1), RecordingOutcome(recording_id=rid, kind=OutcomeKind.PENDING)) is None
    assert memory


def test_the_failure_memory_is_bounded_and_forgets_the_oldest_alert_first():
    import json

    alerts = FailureAlerts({}, now=T0)
    ids = [str(uuid.uuid4()) for _ in range(400)]
    for n, rid in enumerate(ids):
        alerts.now = (T0 + timedelta(seconds=n)).timestamp()
        alerts.decide(_failed(rid, "x"))
    kept = alerts.dump()
    assert len(json.dumps(kept, separators=(",", ":"))) <= FAILURE_MEMORY_CHARS and len(kept) > 50
    from flows.alerts import token

    assert token(ids[-1]) in kept and token(ids[0]) not in kept


@pytest.mark.usefixtures("prefect_harness")
def test_a_recording_failing_on_three_polls_alerts_once(archiver_env, monkeypatch):
    """Three polls, the same failure: one rtk.recording.failed (with its reason as a related
    resource, for the Event Feed's details); the other recording's archived events as usual."""
    import flows.reporting
    from flows.poll import POLL_MARK, poll_recordings
    from prefect.variables import Variable

    events: list[dict] = []
    real = flows.reporting._prefect

    def spy(name):
        if name == "emit_event":
            return lambda **kw: events.append(kw)
        return real(name)

    monkeypatch.setattr(flows.reporting, "_prefect", spy)
    bad = archiver_env.state.add_recording(file_size=1000, storage_config={"type": "sftp", "host": "127.0.0.1", "port": 1,
                                                                           "username": "u", "auth_method": "KEY"})
    for n in range(3):
        Variable.set(POLL_MARK, (datetime.now(timezone.utc) - timedelta(days=1)).isoformat(), overwrite=True)
        if n == 1:
            archiver_env.state.add_recording(file_size=1000)
        state = poll_recordings(overlap_minutes=0, return_state=True)
        assert state.is_failed() and bad["id"] in state.message
    failed = [e for e in events if e["event"] == "rtk.recording.failed"]
    assert len(failed) == 1, [(e["event"], e["payload"].get("alert")) for e in events]
    assert failed[0]["resource"]["prefect.resource.id"] == f"rtk.recording.{bad['id']}"
    assert failed[0]["payload"]["alert"] == "first failure" and failed[0]["payload"]["failing_since"]
    related = {r["prefect.resource.role"]: r["prefect.resource.id"] for r in failed[0]["related"]}
    assert related["reason"] == "reason: " + failed[0]["payload"]["reason"]  # shown by the Event Feed (ids, not names)
    assert related["file"] == "file: " + bad["output_file_name"]
    assert len([e for e in events if e["event"] == "rtk.recording.archived"]) == 1


@pytest.mark.usefixtures("prefect_harness")
def test_a_poll_cancelled_by_a_server_restart_is_explained_and_taken_over(archiver_env):
    """The server's "Deployment concurrency slot lost during provisioning" cancel: the next
    poll writes on that run's page what happened (and that it takes over), tags it so it is
    said once, and says so in its own log."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.states import Cancelled
    from prefect.variables import Variable

    from flows.poll import EXPLAINED_TAG, POLL_MARK, poll_recordings

    Variable.set(POLL_MARK, (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat(), overwrite=True)
    with get_client(sync_client=True) as client:
        lost = client.create_flow_run(poll_recordings, state=Cancelled(
            message="Deployment concurrency slot lost during provisioning - no slots available to continue execution"))
        other = client.create_flow_run(poll_recordings, state=Cancelled(message="Deployment concurrency limit reached."))
    for _ in range(2):
        state = poll_recordings(overlap_minutes=0, return_state=True)
        assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[lost.id])))
        said = [entry.message for entry in logs if "cancelled by the Prefect server" in entry.message]
        assert len(said) == 1 and "takes over its window" in said[0], [e.message for e in logs]
        assert EXPLAINED_TAG in client.read_flow_run(lost.id).tags
        assert EXPLAINED_TAG not in client.read_flow_run(other.id).tags  # another cancel: not this story
