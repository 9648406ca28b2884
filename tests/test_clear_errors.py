"""Issue 10, "clear errors instead of raw ones": API error messages, escaped API text in the
summary and the artifacts, ``--report`` checked before any work, permanent OS errors at the
destination (read-only file system, a file in the way, a name too long, permission denied)
failing once, at once, with a clear message. Settings bounds: tests/test_settings.py; ports:
tests/test_destination.py; permission denied per backend: tests/test_backend_contract.py."""

from __future__ import annotations

import json

import cloudflare
import httpx
import pytest

from rtk_archiver.api import ApiError, RealtimeKitAPI
from rtk_archiver.settings import Settings

TOKEN = "tok-VERY-SECRET-0123456789"


# --- 4. the API's own error messages ----------------------------------------------------------

def api_answering(monkeypatch, status: int, body) -> RealtimeKitAPI:
    """A RealtimeKitAPI whose every request gets ``status`` / ``body`` (no retries)."""
    real = cloudflare.Cloudflare

    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, (dict, list)):
            return httpx.Response(status, json=body)
        return httpx.Response(status, content=body, headers={"content-type": "application/json"})

    def client(**kw):
        return real(**kw, http_client=httpx.Client(transport=httpx.MockTransport(handler)))

    monkeypatch.setattr(cloudflare, "Cloudflare", client)
    settings = Settings(
        cloudflare_api_token=TOKEN, cloudflare_account_id="acc", realtimekit_app_id="app", ARCHIVE_API_MAX_RETRIES=0
    )
    return RealtimeKitAPI(settings)


def api_error(api: RealtimeKitAPI, call: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        if call == "get":
            api.get_recording("rec-1")
        else:
            list(api.iter_recordings())
    return info.value


@pytest.mark.parametrize("call", ["get", "list"])
@pytest.mark.parametrize("status", [200, 400, 422, 500, 401, 403])
def test_success_false_keeps_the_api_messages(monkeypatch, call, status):
    """Used to say only 'RealtimeKit API answered success=false' (200) or repeat the raw body."""
    body = {"success": False, "errors": [{"code": 7001, "message": "App is suspended"}, {"code": 7002, "message": "quota exceeded"}]}
    err = api_error(api_answering(monkeypatch, status, body), call)
    text = str(err)
    assert "App is suspended" in text and "quota exceeded" in text and "7001" in text
    assert "{'success'" not in text  # the messages, not the raw body
    assert TOKEN not in text


def test_api_messages_are_bounded_redacted_and_escaped(monkeypatch):
    body = {
        "success": False,
        "errors": [
            {"code": 1, "message": f"token {TOKEN} rejected, see https://files.example/x.mp4?X-Amz-Signature=SIGSECRET"},
            {"code": 2, "message": "\x1b[2J\x1b]0;owned\x07 line\rover \u202egnp.exe"},
            {"code": 3, "message": "A" * 50_000},
        ],
    }
    text = str(api_error(api_answering(monkeypatch, 200, body), "get"))
    assert TOKEN not in text and "SIGSECRET" not in text
    assert "https://files.example/x.mp4?<redacted>" in text
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text and "\x07" not in text
    assert "\\x1b[2J" in text and "\\u202e" in text
    assert len(text) < 600


def test_success_false_without_messages_says_so(monkeypatch):
    text = str(api_error(api_answering(monkeypatch, 200, {"success": False}), "get"))
    assert "success=false" in text and "without an error message" in text


@pytest.mark.parametrize("body", [b"[1, 2]", b'"just a string"'])
def test_a_body_that_is_not_an_object_is_named(monkeypatch, body):
    text = str(api_error(api_answering(monkeypatch, 200, body), "get"))
    assert "malformed" in text


# --- 5. control characters from the API are shown escaped -----------------------------------

HOSTILE = {
    "esc": "\x1b[2J\x1b]0;pwned\x07\x1b[31m",
    "cr": "fine\rEVIL",
    "nul": "a\x00b",
    "bidi": "report\u202egnp.exe",
    "line-sep": "a\u2028b\u0085c",
    "markup": "[/b] [bold red]x[/] [link=https://evil.example]y",
    "surrogate": "a\ud800b",  # JSON may carry a lone surrogate ("\\ud800"): not even encodable
}
RAW = ("\x1b", "\r", "\x00", "\x07", "\u202e", "\u2028", "\x85", "\ud800")


def hostile_report():
    from rtk_archiver.models import ArchiveReport, OutcomeKind, RecordingOutcome

    outcomes = []
    for name, text in HOSTILE.items():
        outcomes.append(RecordingOutcome(recording_id=f"id-{name}-{text}", output_file_name=f"{text}.mp4",
                                         kind=OutcomeKind.FAILED, reason=f"bad: {text}"))
        outcomes.append(RecordingOutcome(recording_id=f"ok-{name}", output_file_name=f"{text}.mp4",
                                         kind=OutcomeKind.ARCHIVED, destination=f"file:///a/{text}.mp4", bytes_total=1))
    return ArchiveReport(outcomes=outcomes)


def test_the_summary_table_escapes_api_text():
    """The summary used to print ESC sequences, CR, NUL and bidi overrides raw, and a '[/b]'
    in a name raised rich.errors.MarkupError after the whole run."""
    import io

    from rtk_archiver.cli import print_report

    out = io.StringIO()
    print_report(hostile_report(), stream=out)
    text = out.getvalue()
    for raw in RAW:
        assert raw not in text, repr(raw)
    for shown in ("\\x1b[2J", "\\x1b]0;pwned\\x07", "fine\\rEVIL", "a\\x00b", "report\\u202egnp.exe", "a\\u2028b\\x85c", "a\\ud800b"):
        assert shown in text.replace("\n", ""), shown
    assert "[/b] [bold red]x[/]" in text  # shown literally, not as markup


def test_the_artifacts_escape_api_text(monkeypatch):
    from flows import reporting

    made = {}
    monkeypatch.setattr(reporting, "create_table_artifact", lambda table, **kw: made.update(table=table))
    monkeypatch.setattr(reporting, "create_markdown_artifact", lambda markdown, **kw: made.update(markdown=markdown))
    reporting.publish_report(hostile_report())
    cells = json.dumps(made["table"], ensure_ascii=False)
    for raw in RAW:
        assert raw not in cells and raw not in made["markdown"], repr(raw)
    assert "report\\\\u202egnp.exe" in cells  # (json-escaped backslash)
    failures = made["markdown"].split("## Failures", 1)[1]
    assert "[link=https://evil.example]" not in failures  # escaped: \[link=...
    assert failures.count("\n- ") == len(HOSTILE)  # one list item each: no injected lines


# --- 6. --report FILE checked before any work ----------------------------------------------------

class RunStarted(Exception):
    pass


@pytest.fixture
def no_run(monkeypatch):
    """Valid settings, and a run that would start fails the test at once (no Prefect, no network)."""
    from rtk_archiver import prefect_api

    for k, v in {"CLOUDFLARE_API_TOKEN": TOKEN, "CLOUDFLARE_ACCOUNT_ID": "a", "REALTIMEKIT_APP_ID": "b",
                 "CLOUDFLARE_BASE_URL": "http://127.0.0.1:9/client/v4"}.items():
        monkeypatch.setenv(k, v)

    def refuse(*a, **kw):
        raise RunStarted("the run started although --report cannot be written")

    monkeypatch.setattr(prefect_api, "private_prefect_api", refuse)


def run_cli(argv, capsys) -> tuple[int, str]:
    from rtk_archiver import cli

    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return info.value.code, out.err


@pytest.mark.parametrize("command", [["archive"], ["archive-one", "rec-1"]])
def test_report_into_a_missing_directory_is_refused_before_any_work(no_run, tmp_path, capsys, command):
    """Used to fail after the whole run, with a traceback (FileNotFoundError)."""
    code, err = run_cli([*command, "--report", str(tmp_path / "nope" / "report.json")], capsys)
    assert code == 2 and "--report" in err and "does not exist" in err and str(tmp_path / "nope") in err


def test_report_under_a_file_or_onto_a_directory_is_refused(no_run, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, err = run_cli(["archive", "--report", str(tmp_path / "afile" / "r.json")], capsys)
    assert code == 2 and "not a directory" in err
    code, err = run_cli(["archive", "--report", str(tmp_path)], capsys)
    assert code == 2 and "is a directory" in err


def test_report_on_a_read_only_file_system_is_refused(no_run, tmp_path, capsys):
    from tests.fixtures.privileges import mount_unavailable, readonly_mount

    if reason := mount_unavailable():
        pytest.skip(reason)
    with readonly_mount(tmp_path / "ro") as ro:
        code, err = run_cli(["archive", "--report", str(ro / "r.json")], capsys)
    assert code == 2 and "read-only file system" in err


def test_report_in_a_directory_without_write_permission_is_refused(no_run, tmp_path, capsys):
    from tests.fixtures.privileges import dac_drop_unavailable, without_dac_override

    if reason := dac_drop_unavailable():
        pytest.skip(reason)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    (tmp_path / "ro-file.json").write_text("{}")
    (tmp_path / "ro-file.json").chmod(0o444)
    with without_dac_override():
        code, err = run_cli(["archive", "--report", str(locked / "r.json")], capsys)
        assert code == 2 and "permission denied" in err
        code, err = run_cli(["archive", "--report", str(tmp_path / "ro-file.json")], capsys)
        assert code == 2 and "permission denied" in err
    assert list(locked.iterdir()) == [] and (tmp_path / "ro-file.json").read_text() == "{}"


def test_a_writable_report_path_is_accepted_and_left_untouched(no_run, tmp_path):
    from rtk_archiver import cli

    args = cli.build_parser().parse_args(["archive", "--report", str(tmp_path / "r.json")])
    assert args.report == tmp_path / "r.json" and not (tmp_path / "r.json").exists()
    assert list(tmp_path.iterdir()) == []  # the probe left nothing


# --- 7. permanent OS errors at a local destination, end to end --------------------------------

DEEP_PATH = "/".join(f"{i:02d}" + "d" * 178 for i in range(30))  # 30 x 180 bytes: > PATH_MAX (4096)


@pytest.mark.usefixtures("prefect_harness")
def test_permanent_destination_errors_fail_once_at_once_and_others_are_archived(archiver_env, monkeypatch, tmp_path):
    """A read-only file system (a real read-only tmpfs), a file where a directory should be
    (ENOTDIR, and the directory itself a file), a name too long for the file system (a deep
    storage_config.path) and permission denied (a 0o555 directory, the run without
    CAP_DAC_OVERRIDE): each recording fails once (Prefect's run_count 1, although a retry
    is allowed), in less than the 30 s retry delay, the reason naming the problem; the other
    recordings of the run are archived. Before storage_backends/local.py mapped errno to
    PermanentStorageError these were retried (3 retries over ~130 s by default)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.archive import archive_recordings, report_of
    from rtk_archiver.cli import print_report
    from rtk_archiver.models import OutcomeKind
    from tests.fixtures.privileges import dac_drop_unavailable, mount_unavailable, readonly_mount, without_dac_override

    if reason := mount_unavailable() or dac_drop_unavailable():
        pytest.skip(reason)
    monkeypatch.setenv("ARCHIVE_TASK_RETRIES", "1")
    monkeypatch.setenv("ARCHIVE_RETRY_DELAY_SECONDS", "30")  # a retry would show: run_count 2, +30 s
    sim, archive = archiver_env, archiver_env.archive
    (archive / "blocked").write_text("a file where a directory should be")
    (archive / "locked").mkdir(mode=0o555)

    def add(name: str, path: str | None = None):
        sc = {"type": "aws", "path": path} if path is not None else None
        return sim.state.add_recording(output_file_name=name, file_size=20_000, storage_config=sc)

    expect = {
        add("ro.mp4", "ro")["id"]: "read-only file system",
        add("notdir.mp4", "blocked/sub")["id"]: "a path component is a file",
        add("in-the-way.mp4", "blocked")["id"]: "a file is in the way",
        add("locked.mp4", "locked")["id"]: "permission denied",
    }
    # refused by the plan before any I/O: a clear message instead of ENAMETOOLONG, no task at all
    deep = add("deep.mp4", DEEP_PATH)["id"]
    good = [add("good.mp4")["id"], add("fine\x1b[2J\u202e.mp4", "ok/dir")["id"]]

    with readonly_mount(archive / "ro"), without_dac_override():
        state = archive_recordings(destination=f"file://{archive}", return_state=True)
        report = report_of(state)
        leftovers = [p for p in tmp_path.rglob("*") if ".rtkpart-" in p.name]
        in_ro = list((archive / "ro").iterdir())

    out = {o.recording_id: o for o in report.outcomes}
    for rid, phrase in expect.items():
        assert out[rid].kind == OutcomeKind.FAILED, out[rid]
        assert phrase in out[rid].reason, out[rid].reason
        assert str(archive) in out[rid].reason  # names where
        assert "Traceback" not in out[rid].reason
    assert out[deep].kind == OutcomeKind.FAILED and "storage_config.path is too long" in out[deep].reason
    assert state.is_failed() and f"{len(expect) + 1} of {len(expect) + 3} recording(s) failed" in state.message
    for rid in good:
        assert out[rid].kind == OutcomeKind.ARCHIVED, out[rid]
    assert (archive / "good.mp4").stat().st_size == 20_000
    assert not leftovers and in_ro == [] and list((archive / "locked").iterdir()) == []
    assert (archive / "blocked").read_text() == "a file where a directory should be"

    # once each: no retry of a permanent failure (the task runs as Prefect recorded them)
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    by_name = {r.name: r for r in runs}
    for rid in expect:
        run = by_name[f"archive {rid}"]
        assert run.run_count == 1 and run.state.is_failed(), (rid, run.run_count, run.state)
        took = (run.end_time - run.start_time).total_seconds()
        assert took < 30, f"{rid} took {took:.1f} s (the retry delay is 30 s)"

    # and the summary says it plainly, the hostile name escaped
    import io

    shown = io.StringIO()
    print_report(report, stream=shown)
    text = shown.getvalue()
    assert "read-only file system" in text and "permission denied" in text and "\x1b" not in text
