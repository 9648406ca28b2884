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
    # a text box in the UI; the rules in if/then (flows/parameters.py, tests/test_parameter_refusals.py)
    assert props["destination"]["type"] == "string" and "anyOf" not in props["destination"] and "if" in props["destination"]
    with pytest.raises(ValueError, match="recording_ids, a meeting_id"):
        ManualRequest()
    backfill_props = parameter_schema(backfill.fn).model_dump_for_openapi()["properties"]
    assert backfill_props["recordings_per_window"]["minimum"] == 1 and backfill_props["parallelism"]["minimum"] == 1


# The parameters of each deployment's form that may be left empty: a plain text box (a list for
# verify's destinations), not a str/None toggle. archive-window's destination is not here: its
# default in flows/archive.py is None, and a plain text box would then send null (see
# flows/parameters.py, OptionalDestination).
OPTIONAL_INPUTS = {
    "archive-manual/manual": [("ManualRequest", "meeting_id", "string"), ("ManualRequest", "destination", "string")],
    "poll-recordings/scheduled-poll": [(None, "destination", "string")],
    "backfill-recordings/backfill": [(None, "destination", "string")],
    "check-destinations/check-destinations": [(None, "destination", "string")],
    "verify-archive/weekly-verify": [(None, "destinations", "array")],
}


def _schemas() -> dict[str, dict]:
    """Each deployment's parameter schema, as ``rtk-archiver serve`` / ``prefect deploy`` register it."""
    from deployments import load_flow

    return {spec.full_name: parameter_schema(load_flow(spec.entrypoint)).model_dump_for_openapi() for spec in specs(settings())}


def _server_errors(schema: dict, parameters: dict) -> list[str]:
    """What Prefect's server says of a run request with these parameters (the very check it
    runs before creating a run, preprocessing included): [] when it would create the run."""
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    try:
        validate(parameters, schema, raise_on_error=True)
    except ValidationError as exc:
        return [str(exc)]
    return []


def test_optional_text_parameters_are_plain_inputs_in_every_form():
    """No ``anyOf`` with null (the UI's str/None toggle, preset to None, "Property is type
    None"): the form shows the text box (the list) at once, and a destination's help shows its
    URL examples as code (Markdown: a bare "sftp://..." came out as "s" and a link)."""
    schemas = _schemas()
    for deployment, fields in OPTIONAL_INPUTS.items():
        for model, name, kind in fields:
            owner = schemas[deployment]["definitions"][model] if model else schemas[deployment]
            prop, where = owner["properties"][name], f"{deployment}: {name}"
            assert "anyOf" not in prop and "oneOf" not in prop, f"{where} is a toggle: {prop.get('anyOf') or prop['oneOf']}"
            assert prop["type"] == kind, where
            assert prop.get("default", "") in ("", []), where  # no null preset: the form would send it
            assert name not in owner.get("required", []), where
            if name == "destination":
                assert "`sftp://user@host:port/path`" in prop["description"], where


BAD_URL = "a destination URL such as"
BAD_ID = "an id of 1 to 64 letters"


@pytest.mark.parametrize("blank", ["", "   ", " \t"])
def test_an_empty_text_means_not_given_and_a_bad_one_is_still_refused(blank):
    """For the server (each deployment's schema) and in Python (the flow's own validation):
    "" or whitespace is not given (None), a bad value is refused as before."""
    from prefect.utilities.callables import get_call_parameters

    from flows.archive import archive_recordings
    from flows.check import check_destinations

    schemas = _schemas()
    manual = schemas["archive-manual/manual"]
    for request in ({"recording_ids": ["rec-1"], "meeting_id": blank, "destination": blank},
                    {"meeting_id": "meeting-1", "destination": blank},
                    # null, as the toggle sent: still accepted (the model's fields have no default)
                    {"recording_ids": ["rec-1"], "meeting_id": None, "destination": None}):
        assert _server_errors(manual, {"request": request}) == [], request
    assert "recording_ids, a meeting_id, or both" in _server_errors(manual, {"request": {"meeting_id": blank}})[0]
    assert BAD_ID in _server_errors(manual, {"request": {"meeting_id": "meeting/../x"}})[0]
    assert BAD_ID in _server_errors(manual, {"request": {"meeting_id": " meeting-1"}})[0]  # not trimmed: refused
    assert BAD_URL in _server_errors(manual, {"request": {"recording_ids": ["r"], "destination": "ftp://host/x"}})[0]
    assert "without a password" in _server_errors(manual, {"request": {"recording_ids": ["r"], "destination": "sftp://u:pw@h/x"}})[0]

    base = {"poll-recordings/scheduled-poll": {}, "backfill-recordings/backfill": {"start": "2026-01-01", "end": "2026-01-02"},
            "check-destinations/check-destinations": {}, "archive-recordings/archive-window": {}}
    for deployment, parameters in base.items():
        schema = schemas[deployment]
        assert _server_errors(schema, {**parameters, "destination": blank}) == [], deployment
        assert _server_errors(schema, parameters) == [], deployment
        assert BAD_URL in _server_errors(schema, {**parameters, "destination": "https://example.com/x"})[0], deployment
        assert "without a password" in _server_errors(schema, {**parameters, "destination": "s3://k:secret@b/p"})[0], deployment
    verify = schemas["verify-archive/weekly-verify"]
    assert _server_errors(verify, {"destinations": []}) == [] and _server_errors(verify, {}) == []
    assert _server_errors(verify, {"destinations": [blank]})  # an item of the list is not optional

    # in Python: the model, and each flow's parameters as its run validates them
    request = ManualRequest(recording_ids=["rec-1"], meeting_id=blank, destination=blank)
    assert request.meeting_id is None and request.destination is None
    assert ManualRequest(meeting_id="meeting-1", destination=None).destination is None
    with pytest.raises(ValueError, match="recording_ids, a meeting_id, or both"):
        ManualRequest(meeting_id=blank)
    with pytest.raises(ValueError, match=BAD_URL):
        ManualRequest(recording_ids=["rec-1"], destination="ftp://host/x")
    for flow, parameters in ((poll_recordings, {}), (backfill, {"start": NOW - timedelta(days=2), "end": NOW}),
                             (check_destinations, {}), (archive_recordings, {})):
        for value in (blank, None):
            checked = flow.validate_parameters(get_call_parameters(flow.fn, (), {**parameters, "destination": value}))
            assert checked["destination"] is None, (flow.name, value)
        assert flow.validate_parameters(get_call_parameters(flow.fn, (), parameters))["destination"] is None, flow.name
        with pytest.raises(Exception, match=BAD_URL):
            flow.validate_parameters(get_call_parameters(flow.fn, (), {**parameters, "destination": "ftp://host/x"}))


def test_backfill_form_labels_are_readable():
    """Every backfill parameter has a title of its own (not its snake_case name) and help that
    reads as a sentence."""
    props = _schemas()["backfill-recordings/backfill"]["properties"]
    titles = {name: p["title"] for name, p in props.items()}
    assert titles["recordings_per_window"] == "Recordings per window" and titles["dry_run"] == "Dry run", titles
    for name, prop in props.items():
        assert prop["title"] != name and "_" not in prop["title"], (name, prop["title"])
        assert prop.get("description", "").endswith("."), (name, prop.get("description"))
    assert "a backfill of no more runs in this run" not in str(props)


def test_every_form_has_readable_labels_and_help():
    """The same for every deployment's form: no snake_case label, help on every field (the
    manual form's request fields are titled by their model)."""
    for deployment, schema in _schemas().items():
        for name, prop in schema["properties"].items():
            assert prop.get("title") and "_" not in prop["title"], (deployment, name, prop.get("title"))
            if deployment != "archive-manual/manual":
                assert prop.get("description", "").rstrip().endswith("."), (deployment, name, prop.get("description"))


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
