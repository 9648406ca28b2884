"""``rtk-archiver simulator --archivable`` and the commands that change a running simulator
(``add``, ``stop``, ``enlarge``, ``list``): what the API serves afterwards, and the one-line
errors (exit 1: no simulator, unknown recording, refused; exit 2: bad arguments)."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from rtk_archiver import cli, plan
from rtk_archiver.models import OutcomeKind, Recording
from rtk_archiver.simulator import SimulatorServer, media_bytes
from rtk_archiver.simulator.state import SimulatorState, generate_recordings
from storage_backends import parse_destination_url
from tests.fixtures import free_port, wait_until

GiB = 1 << 30


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorState(upload_delay_seconds=0.3), count=6, archivable=True) as server:
        yield server


def api(sim: SimulatorServer, path: str = "", method: str = "GET", **kwargs) -> httpx.Response:
    url = f"{sim.base_url}/accounts/{sim.account_id}/realtime/kit/{sim.app_id}/recordings{path}"
    return httpx.request(method, url, headers={"Authorization": f"Bearer {sim.token}"}, timeout=10, **kwargs)


def listed(base_url: str, token: str = "sim-token", account: str = "sim-account", app: str = "sim-app") -> list[dict]:
    out, page = [], 1
    while True:
        resp = httpx.get(f"{base_url}/accounts/{account}/realtime/kit/{app}/recordings",
                         params={"page_no": page, "per_page": 100}, headers={"Authorization": f"Bearer {token}"})
        resp.raise_for_status()
        if not resp.json()["data"]:
            return out
        out.extend(resp.json()["data"])
        page += 1


def sim_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``rtk-archiver simulator ARGS`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = cli.main(["simulator", *args])
    out, err = capsys.readouterr()
    return code, out, err


def recording_id(line: str) -> str:
    """The id in ``added <id>: ...`` / ``stopped <id>: ...``."""
    return line.split()[1].rstrip(":")


@contextmanager
def simulator_process(*args: str) -> Iterator[tuple[str, str]]:
    """``rtk-archiver simulator ARGS --port P`` as its own process: (its URL, its first line);
    stopped by its PID."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rtk_archiver.cli", "simulator", *args, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("RealtimeKit simulator on"), first + proc.stdout.read()
        wait_until(lambda: _answers(port), 30, "the simulator to listen")
        yield f"http://127.0.0.1:{port}", first
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _answers(port: int) -> bool:
    try:
        httpx.get(f"http://127.0.0.1:{port}/_sim/recordings", timeout=1)
        return True
    except httpx.TransportError:
        return False


def unarchivable(recordings: list[Recording], now: datetime) -> list[str]:
    """Why each recording that a run could not archive into the default destination could
    not: the project's own planning (status, files, expiry), its storage_config (storage that
    does not exist here), and the watchdog's 48 h warning before RealtimeKit's 7 days end."""
    default = "file:///srv/archive"
    problems = []
    for r in recordings:
        if (why := plan.why_not_archivable(r)) is not None:
            problems.append(f"{r.id}: {why[0].value}: {why[1]}")
        elif (dest := plan.resolve_destination(r, None, default)) != parse_destination_url(default):
            problems.append(f"{r.id}: goes to its storage_config ({dest.source_type})")
        elif plan.retention_end(r) < now + timedelta(hours=48):
            problems.append(f"{r.id}: at risk, its files expire {plan.retention_end(r)}")
    return problems


# -- the archivable mode ---------------------------------------------------------------------


def test_cli_archivable_mode_serves_only_archivable_recordings():
    now = datetime.now(timezone.utc)
    with simulator_process("--archivable", "--count", "40") as (url, first):
        items = listed(f"{url}/client/v4")
    assert "with 40 recordings (all archivable" in first
    recordings = [Recording.model_validate(item) for item in items]
    assert len(recordings) == 40 == len({r.id for r in recordings})
    assert unarchivable(recordings, now) == []
    assert {r.status for r in recordings} == {"UPLOADED"} and all(r.download_url and r.file_size for r in recordings)
    assert any(r.audio_download_url for r in recordings) and not all(r.audio_download_url for r in recordings)
    assert all(r.stopped_time > now - timedelta(days=3) for r in recordings)


def test_cli_without_a_command_still_serves_the_stock_mix():
    """No command and no --archivable: the stock dataset as before, which a run fails on."""
    now = datetime.now(timezone.utc)
    with simulator_process("--count", "40", "--seed", "1") as (url, first):
        items = listed(f"{url}/client/v4")
    assert first.strip() == f"RealtimeKit simulator on {url} with 40 recordings"
    recordings = [Recording.model_validate(item) for item in items]
    assert len(recordings) == 40
    problems = unarchivable(recordings, now)
    # 21 of 40 point at storage that does not exist here, and more never archive
    assert sum("goes to its storage_config" in p for p in problems) == 21
    assert any("skipped" in p for p in problems) and any("pending" in p for p in problems)


def test_archivable_generation_is_deterministic_and_apart_from_the_stock_one():
    a, b = SimulatorState(), SimulatorState()
    ids_a = [r["id"] for r in generate_recordings(a, 10, seed=4, archivable=True)]
    ids_b = [r["id"] for r in generate_recordings(b, 10, seed=4, archivable=True)]
    assert ids_a == ids_b
    stock = SimulatorState()
    generate_recordings(stock, 10, seed=4)
    assert {r.status for r in stock.recordings.values()} != {"UPLOADED"}  # the default is unchanged
    with pytest.raises(ValueError):
        generate_recordings(SimulatorState(), 3, archivable=True, platform=True)


@pytest.mark.usefixtures("prefect_harness")
def test_first_poll_over_the_archivable_mode_completes_with_everything_archived(archiver_env, capsys):
    """The README's serve walkthrough: the poll (here its flow, in the test harness) over the
    archivable mode, with a large recording added and a live one stopped, Completes."""
    from prefect.variables import Variable

    from flows.archive import report_of
    from flows.poll import POLL_MARK, poll_recordings

    sim = archiver_env
    generate_recordings(sim.state, 12, seed=5, archivable=True)
    code, out, _ = sim_cli(capsys, "add", "--url", sim.url, "--size", "3MiB", "--audio")
    assert code == 0
    big = recording_id(out)
    code, out, _ = sim_cli(capsys, "add", "--url", sim.url, "--status", "RECORDING", "--size", "100kB")
    live = recording_id(out)
    code, out, _ = sim_cli(capsys, "stop", "--url", sim.url, live, "--wait")
    assert code == 0 and f"stopped {live}: UPLOADED, 100000 bytes" in out

    Variable.unset(POLL_MARK)  # the first poll: the whole lookback
    state = poll_recordings(overlap_minutes=30, return_state=True)
    report = report_of(state)
    assert state.is_completed(), state.message
    assert len(report.outcomes) == 14 and {o.kind for o in report.outcomes} == {OutcomeKind.ARCHIVED}
    assert not report.at_risk and not report.lost
    assert (sim.archive / sim.state.recordings[big].output_file_name).stat().st_size == 3 * 1024 * 1024
    assert (sim.archive / sim.state.recordings[live].output_file_name).stat().st_size == 100_000


# -- add -------------------------------------------------------------------------------------


def test_add_serves_a_recording_of_the_size_given(sim, capsys):
    sim.state.faults.api_errors = [503]  # the controls are not the API: no fault is used up
    code, out, err = sim_cli(capsys, "add", "--url", sim.url, "--size", "1.5MB", "--audio-size", "64KiB",
                             "--title", "Board meeting")
    assert (code, err) == (0, "")
    assert out.count("\n") == 1 and out.startswith("added ") and "UPLOADED, 1500000 bytes" in out
    rid = recording_id(out)
    assert api(sim).status_code == 503  # the injected fault is still there for the API
    rec = api(sim, f"/{rid}").json()["data"]
    assert (rec["status"], rec["file_size"], rec["storage_config"]) == ("UPLOADED", 1_500_000, None)
    assert plan.why_not_archivable(Recording.model_validate(rec)) is None
    video = httpx.head(rec["download_url"])
    audio = httpx.head(rec["audio_download_url"])
    assert (video.headers["content-length"], audio.headers["content-length"]) == ("1500000", "65536")
    stopped = datetime.fromisoformat(rec["stopped_time"].replace("Z", "+00:00"))
    assert datetime.now(timezone.utc) - stopped < timedelta(minutes=1)  # in the next poll's window

    code, out, _ = sim_cli(capsys, "list", "--url", sim.url)
    assert code == 0 and len(out.splitlines()) == 7 and out.splitlines()[0].startswith(f"{rid}: UPLOADED, 1500000 bytes")


def test_a_large_add_allocates_nothing_of_its_size(sim, capsys):
    tracemalloc.start()
    try:
        code, out, _ = sim_cli(capsys, "add", "--url", sim.url, "--size", "2GiB")
        rid = recording_id(out)
        rec = api(sim, f"/{rid}").json()["data"]
        head = httpx.head(rec["download_url"])
        tail = httpx.get(rec["download_url"], headers={"Range": f"bytes={2 * GiB - 4096}-"})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 0 and "2147483648 bytes (2.0 GiB)" in out
    assert rec["file_size"] == 2 * GiB and head.headers["content-length"] == str(2 * GiB)
    assert tail.status_code == 206 and tail.content == media_bytes(rid, "video", 2 * GiB - 4096, 4096)
    assert peak < 32 * 1024 * 1024, f"{peak} bytes allocated at the peak"


# -- stop ------------------------------------------------------------------------------------


def test_stop_is_the_platforms_stop_call_and_the_recording_uploads(sim, capsys):
    code, out, _ = sim_cli(capsys, "add", "--url", sim.url, "--status", "RECORDING", "--size", "300000")
    rid = recording_id(out)
    assert code == 0 and f"added {rid}: RECORDING" in out
    rec = api(sim, f"/{rid}").json()["data"]
    assert (rec["status"], rec["stopped_time"], rec["download_url"]) == ("RECORDING", None, None)
    active = api(sim, f"/active-recording/{sim.state.recordings[rid].meeting_id}").json()["data"]
    assert active["id"] == rid

    code, out, err = sim_cli(capsys, "stop", "--url", sim.url, rid)
    assert (code, err) == (0, "") and out.count("\n") == 1
    assert out.startswith(f"stopped {rid}: UPLOADING, 300000 bytes")
    assert api(sim, f"/{rid}").json()["data"]["stopped_time"] is not None
    rec = wait_until(lambda: (r := api(sim, f"/{rid}").json()["data"])["status"] == "UPLOADED" and r, 10, "UPLOADED")
    assert rec["file_size"] == 300_000 and httpx.head(rec["download_url"]).headers["content-length"] == "300000"

    code, out, err = sim_cli(capsys, "stop", "--url", sim.url, rid)  # stopped already
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert err == f"rtk-archiver: stop {rid} refused by the simulator: cannot stop a recording whose status is UPLOADED\n"


def test_stop_wait_returns_once_uploaded_for_a_recording_started_through_the_api(sim, capsys):
    started = api(sim, method="POST", json={"meeting_id": "m-live"})
    assert started.status_code == 201
    rid = started.json()["data"]["id"]
    code, out, _ = sim_cli(capsys, "stop", "--url", f"{sim.base_url}", rid, "--wait")  # a CLOUDFLARE_BASE_URL works too
    assert code == 0 and out.startswith(f"stopped {rid}: UPLOADED, ")
    assert api(sim, f"/{rid}").json()["data"]["status"] == "UPLOADED"


# -- enlarge ---------------------------------------------------------------------------------


def test_enlarge_serves_the_same_file_longer(sim, capsys):
    rid = next(iter(sim.state.recordings))
    before = api(sim, f"/{rid}").json()["data"]
    old_head = httpx.head(before["download_url"])
    code, out, err = sim_cli(capsys, "enlarge", "--url", sim.url, rid, "--size", "3MiB")
    assert (code, err) == (0, "") and out.count("\n") == 1
    assert out.startswith(f"enlarged {rid}: UPLOADED, 3145728 bytes (3.0 MiB)") and f"(was {before['file_size']} bytes)" in out
    after = api(sim, f"/{rid}").json()["data"]
    head = httpx.head(after["download_url"])
    assert after["file_size"] == 3 * 1024 * 1024 and head.headers["content-length"] == "3145728"
    assert head.headers["etag"] != old_head.headers["etag"]  # another file for a resumed download
    start = httpx.get(after["download_url"], headers={"Range": "bytes=0-4095"}).content
    assert start == media_bytes(rid, "video", 0, 4096)  # its first bytes unchanged

    code, out, err = sim_cli(capsys, "enlarge", "--url", sim.url, rid, "--size", "1000")
    assert (code, out) == (1, "") and err.count("\n") == 1 and "has 3145728 bytes already" in err
    assert api(sim, f"/{rid}").json()["data"]["file_size"] == 3 * 1024 * 1024


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [["stop"], ["enlarge", "--size", "1GiB"]])
def test_an_unknown_recording_is_one_line_and_exit_1(sim, capsys, command):
    code, out, err = sim_cli(capsys, command[0], "--url", sim.url, "no-such-id", *command[1:])
    assert (code, out) == (1, "")
    assert err == f"rtk-archiver: the simulator at {sim.url} has no recording no-such-id\n"


@pytest.mark.parametrize("command", [["add", "--size", "2GiB"], ["stop", "some-id"], ["enlarge", "some-id", "--size", "1GB"], ["list"]])
def test_no_simulator_is_one_line_and_exit_1(capsys, command):
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = sim_cli(capsys, command[0], "--url", url, *command[1:])
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert err.startswith(f"rtk-archiver: no simulator answers at {url} (") and "Traceback" not in err


def test_something_else_than_a_simulator_is_one_line_and_exit_1(sim, capsys):
    code, out, err = sim_cli(capsys, "list", "--url", f"{sim.url}/elsewhere")
    assert (code, out) == (1, "") and err.count("\n") == 1
    assert "answered HTTP 404 to GET /_sim/recordings: not an rtk-archiver simulator" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "--size", "2XB"], "argument --size: '2XB' is not a size"),
        (["add", "--size", "0"], "a recording has 1 byte to 1 PiB"),
        (["add", "--size", "2PiB"], "a recording has 1 byte to 1 PiB"),
        (["add", "--status", "UPLOADING"], "argument --status: invalid choice"),
        (["add", "--url", "ftp://127.0.0.1:8787"], "is not the simulator's URL"),
        (["enlarge", "some-id"], "the following arguments are required: --size"),
        (["stop"], "the following arguments are required: recording_id"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_2_before_any_request(capsys, args, message):
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.main(["simulator", *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and "Traceback" not in err


@pytest.mark.parametrize(("text", "size"), [("65536", 65536), ("500MB", 500_000_000), ("2GiB", 2 * GiB),
                                            ("1.5 GiB", 3 * GiB // 2), ("10kB", 10_000), ("3 MiB", 3 << 20)])
def test_sizes(text, size):
    from rtk_archiver.simulator.control import parse_size

    assert parse_size(text) == size


def test_what_the_simulator_answers_is_printed_escaped():
    """A recording's fields from the server (a fake one, or names a user gave) never reach the
    terminal raw (ESC sequences, newlines forging a line), and odd values do not crash."""
    from rtk_archiver.simulator.control import describe

    line = describe({"id": "evil\x1b]0;PWNED\x07", "status": "UPLOADED\r\nadded x: UPLOADED", "file_size": "big",
                     "audio_size": [1], "output_file_name": "a|b\nc\x1b[2J.mp4"})
    assert "\x1b" not in line and "\n" not in line and "\r" not in line and "\x07" not in line, line
    assert "\\x1b" in line and "\\n" in line and "(?)" in line
