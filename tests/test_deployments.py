"""Deployments: schedule and concurrency definitions, the manual form's schema and its
server-side validation, the poll's high-water mark, backfills and the shared limits."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLimitStrategy
from prefect.utilities.callables import parameter_schema
from prefect.variables import Variable

from deployments import specs
from flows.backfill import backfill
from flows.manual import ManualRequest, archive_manual
from flows.poll import POLL_MARK, poll_recordings
from rtk_archiver.models import OutcomeKind
from rtk_archiver.settings import Settings
from tasks.limits import API_RATE_LIMIT, CANARY_LIMIT, CANARY_VARIABLE, ensure_limits
from tests.fixtures import run_report

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.now(timezone.utc)


def settings(**kw) -> Settings:
    return Settings(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b", **kw)


def test_schedule_and_concurrency_definitions_match_prefect_yaml():
    by_name = {s.name: s for s in specs(settings())}
    poll = by_name["scheduled-poll"]
    assert poll.interval == timedelta(minutes=15)
    assert poll.concurrency_limit.limit == 1
    assert poll.concurrency_limit.collision_strategy == ConcurrencyLimitStrategy.CANCEL_NEW
    assert by_name["scheduled-poll"].interval != specs(settings(archive_poll_interval_minutes=5))[0].interval

    doc = yaml.safe_load((ROOT / "deployments/prefect.yaml").read_text())
    yaml_deps = {d["name"]: d for d in doc["deployments"]}
    assert set(yaml_deps) == set(by_name)
    for name, spec in by_name.items():
        assert yaml_deps[name]["entrypoint"] == spec.entrypoint
        assert (ROOT / spec.entrypoint.split(":")[0]).exists()
    ydoc = yaml_deps["scheduled-poll"]
    assert ydoc["schedules"][0]["interval"] == poll.interval.total_seconds()
    assert ydoc["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
    assert ydoc["parameters"] == poll.parameters


def test_manual_form_schema():
    schema = parameter_schema(archive_manual.fn).model_dump_for_openapi()
    request = schema["definitions"]["ManualRequest"]
    props = request["properties"]
    assert set(props) == {"recording_ids", "meeting_id", "destination", "dry_run"}
    assert all(p.get("description") for p in props.values())
    # a text field for the UI; the rules in if/then (flows/parameters.py, tests/test_parameter_refusals.py)
    assert props["destination"]["anyOf"] == [{"type": "string"}, {"type": "null"}] and "if" in props["destination"]
    with pytest.raises(ValueError, match="recording_ids, a meeting_id"):
        ManualRequest()
    backfill_props = parameter_schema(backfill.fn).model_dump_for_openapi()["properties"]
    assert backfill_props["recordings_per_window"]["minimum"] == 1 and backfill_props["parallelism"]["minimum"] == 1


@pytest.mark.usefixtures("prefect_harness")
def test_server_rejects_bad_parameters():
    deployment_id = archive_manual.to_deployment(name="manual-validation").apply()
    with get_client(sync_client=True) as client:
        with pytest.raises(Exception) as info:
            client.create_flow_run_from_deployment(
                deployment_id, parameters={"request": {"recording_ids": ["../etc"], "destination": "ftp://nope"}}
            )
        assert "422" in str(info.value) or "409" in str(info.value) or "validation" in str(info.value).lower()
        ok = client.create_flow_run_from_deployment(deployment_id, parameters={"request": {"recording_ids": ["abc-123"]}})
        assert ok.id


@pytest.fixture
def env(archiver_env):
    return archiver_env


@pytest.mark.usefixtures("prefect_harness")
def test_poll_moves_its_mark_but_not_past_unfinished_recordings(env):
    Variable.set(POLL_MARK, (NOW - timedelta(hours=3)).isoformat(), overwrite=True)
    done = env.state.add_recording(file_size=1000, stopped_time=NOW - timedelta(hours=2))
    uploading = env.state.add_recording(status="UPLOADING", stopped_time=NOW - timedelta(hours=1))
    old = env.state.add_recording(file_size=1000, stopped_time=NOW - timedelta(hours=5))
    report = run_report(poll_recordings, overlap_minutes=30)
    kinds = {o.recording_id: o.kind for o in report.outcomes}
    assert kinds[done["id"]] == OutcomeKind.ARCHIVED and kinds[uploading["id"]] == OutcomeKind.PENDING
    assert old["id"] not in kinds  # before the last mark minus the overlap
    mark = datetime.fromisoformat(Variable.get(POLL_MARK))
    assert abs((mark - (NOW - timedelta(hours=1))).total_seconds()) < 2  # held back by the upload

    env.state.recordings[uploading["id"]].status = "UPLOADED"
    again = run_report(poll_recordings, overlap_minutes=30)
    kinds = {o.recording_id: o.kind for o in again.outcomes}
    assert kinds[uploading["id"]] == OutcomeKind.ARCHIVED and done["id"] not in kinds
    assert datetime.fromisoformat(Variable.get(POLL_MARK)) > NOW


@pytest.mark.usefixtures("prefect_harness")
def test_the_poll_run_itself_has_the_report_and_no_child_run(env):
    """The run an operator opens (the deployment's poll run) shows what happened: its report,
    summary and progress artifacts are its own, and a poll is one run in the list, not two."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterParentFlowRunId

    Variable.set(POLL_MARK, (datetime.now(timezone.utc) - timedelta(days=1)).isoformat(), overwrite=True)
    env.state.add_recording(file_size=1000)
    state = poll_recordings(overlap_minutes=0, return_state=True)
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]))
        )
    assert {a.key for a in arts} >= {"rtk-archive-report", "rtk-archive-report-summary"}, [a.key for a in arts]
    assert not children, [c.name for c in children]  # no archive-recordings subflow


@pytest.mark.usefixtures("prefect_harness")
def test_backfill_in_windows_is_resumable(env):
    recs = [env.state.add_recording(file_size=2000 + i, stopped_time=NOW - timedelta(days=3, hours=i * 7)) for i in range(6)]
    report = backfill(start=NOW - timedelta(days=5), end=NOW - timedelta(days=1), recordings_per_window=4, parallelism=2)
    assert report.recordings == 6 and report.windows and all(w.ok for w in report.windows)
    for r in recs:
        assert (env.archive / r["output_file_name"]).stat().st_size == r["file_size"]
    # an overlapping re-run transfers nothing and changes nothing
    before = {p: p.stat().st_mtime_ns for p in env.archive.iterdir()}
    backfill(start=NOW - timedelta(days=4, hours=12), end=NOW - timedelta(days=2), window_hours=12)
    assert {p: p.stat().st_mtime_ns for p in env.archive.iterdir()} == before
    # an end in the future: up to now, and said so; a start in the future: refused
    report = backfill(start=NOW - timedelta(days=1), end=NOW + timedelta(days=2))
    assert report.end < report.requested_end and "in the future" in report.notes[0]
    with pytest.raises(Exception, match="future"):
        backfill(start=NOW + timedelta(hours=1), end=NOW + timedelta(days=2))


@pytest.mark.usefixtures("prefect_harness")
def test_manual_run_by_ids_and_meeting(env):
    a = env.state.add_recording(file_size=1000, meeting_id="meet-1")
    b = env.state.add_recording(file_size=1100, meeting_id="meet-1")
    c = env.state.add_recording(file_size=1200, meeting_id="meet-2")
    report = run_report(archive_manual, ManualRequest(recording_ids=[c["id"], "0000-unknown"], meeting_id="meet-1"))
    kinds = {o.recording_id: o.kind for o in report.outcomes}
    assert kinds[a["id"]] == kinds[b["id"]] == kinds[c["id"]] == OutcomeKind.ARCHIVED
    assert kinds["0000-unknown"] == OutcomeKind.FAILED


@pytest.mark.usefixtures("prefect_harness")
def test_shared_limits_are_created():
    ensure_limits(settings(archive_api_requests_per_second=3, archive_max_transfers_per_backend=2))
    with get_client(sync_client=True) as client:
        api = client.read_global_concurrency_limit_by_name(API_RATE_LIMIT)
        assert api.limit == 3 and api.slot_decay_per_second == 3
        assert client.read_global_concurrency_limit_by_name("rtk-transfers-sftp").limit == 2
        # no per-recording locks any more (the destination's claims do that): nothing a restart can leak
        assert not [g.name for g in client.read_global_concurrency_limits(limit=200, offset=0)
                    if g.name.startswith("rtk-recording-lock-")]
        assert client.read_global_concurrency_limit_by_name(CANARY_LIMIT).active_slots >= 1  # the lease canary
    assert Variable.get(CANARY_VARIABLE)["lease_id"]


@pytest.mark.usefixtures("prefect_harness")
def test_run_publishes_table_summary_and_progress_artifacts(env):
    import json

    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from flows.archive import archive_recordings

    ok = env.state.add_recording(file_size=1000, output_file_name="shown.mp4")
    bad = env.state.add_recording(storage_config={"type": "sftp", "username": "u", "auth_method": "KEY"})
    state = archive_recordings(return_state=True)
    # a run in which a recording failed is Failed, says how many and why, and keeps its report
    assert state.is_failed() and "1 of 2 recording(s) failed" in state.message and bad["id"] in state.message
    from flows.archive import report_of

    assert {o.recording_id for o in report_of(state).outcomes} == {ok["id"], bad["id"]}
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    by_type = {a.type: a for a in arts if a.key != "rtk-archive-watchdog"}  # the run summary, not the watchdog's
    table = by_type["table"].data
    rows = json.loads(table) if isinstance(table, str) else table
    outcomes = {r["recording"]: r["outcome"] for r in rows}
    assert outcomes[ok["id"]] == "archived" and outcomes[bad["id"]] == "failed"
    assert "Failures" in by_type["markdown"].data and bad["id"] in by_type["markdown"].data.replace("\\", "")
    assert by_type["progress"].data == 100.0
