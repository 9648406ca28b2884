"""Faults injected by the simulator and at the destination, and hostile input: nothing lost,
nothing corrupted, nothing leaked. Each test is named in RELIABILITY.md."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from flows.archive import archive_recordings
from rtk_archiver.api import InvalidRecording, RealtimeKitAPI
from rtk_archiver.models import OutcomeKind
from rtk_archiver.settings import load_settings
from rtk_archiver.simulator import SimulatorServer, media_bytes, media_sha256
from tests.fixtures.processes import alive, api_child, listening
from tests.fixtures.sshd import sftp_settings
from tests.fixtures import run_report

pytestmark = pytest.mark.usefixtures("prefect_harness")
NOW = datetime.now(timezone.utc)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def env(archiver_env, monkeypatch):
    monkeypatch.setenv("ARCHIVE_DOWNLOAD_TIMEOUT_SECONDS", "3")  # stalls are resumed quickly (1 s timed out on a busy machine)
    monkeypatch.setenv("ARCHIVE_API_PAGE_SIZE", "3")  # several pages even for a handful
    return archiver_env


def kinds(report):
    return {o.recording_id: o.kind for o in report.outcomes}


def reasons(report):
    return {o.recording_id: o.reason or "" for o in report.outcomes}


def assert_archived(env, rec):
    assert (env.archive / rec["output_file_name"]).read_bytes() == media_bytes(rec["id"], "video", 0, rec["file_size"])


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if ".rtkpart-" in p.name]


# --- API faults ------------------------------------------------------------------------------

def test_api_429_and_5xx_bursts_are_retried_honouring_retry_after(env):
    rec = env.state.add_recording(file_size=5000)
    env.state.faults.api_errors = [429, 503, 502, 500]
    env.state.faults.retry_after = 1
    started = time.monotonic()
    report = run_report(archive_recordings)
    assert kinds(report)[rec["id"]] == OutcomeKind.ARCHIVED
    assert time.monotonic() - started >= 2  # two Retry-After: 1 answers were waited out
    assert env.state.faults.api_errors == []
    assert_archived(env, rec)


def test_api_connection_resets_slow_answers_and_malformed_json(env):
    recs = [env.state.add_recording(file_size=3000 + i) for i in range(4)]
    env.state.faults.api_resets = 2
    env.state.faults.api_malformed = 1
    env.state.faults.api_delay = 0.05
    report = run_report(archive_recordings)
    assert {kinds(report)[r["id"]] for r in recs} == {OutcomeKind.ARCHIVED}
    assert env.state.faults.api_resets == 0 and env.state.faults.api_malformed == 0


def test_pages_that_change_mid_listing_and_wrong_total_count(env, monkeypatch):
    monkeypatch.setenv("ARCHIVE_API_PAGE_SIZE", "4")
    stable = [env.state.add_recording(invoked_time=NOW - timedelta(hours=20 - i)) for i in range(10)]
    added = []

    def shift(page: int) -> None:
        if page == 2:  # a new recording appears at the front and an old one disappears
            added.append(env.state.add_recording(invoked_time=NOW - timedelta(hours=30)))
            env.state.recordings.pop(stable[0]["id"])

    env.state.faults.on_list_page = shift
    env.state.faults.total_count_offset = -5  # the server under-reports
    with RealtimeKitAPI(load_settings()) as api:
        seen = [r.id for r in api.iter_recordings()]
    assert len(seen) == len(set(seen))  # de-duplicated
    assert {r["id"] for r in stable[1:]} <= set(seen)  # nothing stable is lost
    env.state.faults.on_list_page = None
    env.state.faults.total_count_offset = 7  # over-reports: the reader still ends
    with RealtimeKitAPI(load_settings()) as api:
        assert {r["id"] for r in stable[1:]} | {added[0]["id"]} == {r.id for r in api.iter_recordings()}


# --- download faults -------------------------------------------------------------------------

def test_reset_mid_body_resumes_with_range(env):
    rec = env.state.add_recording(file_size=3 * 1024 * 1024 + 5)
    env.state.faults.download_resets = 2
    env.state.faults.reset_after = 1024 * 1024
    report = run_report(archive_recordings)
    assert kinds(report)[rec["id"]] == OutcomeKind.ARCHIVED
    assert_archived(env, rec)
    assert env.state.downloads[(rec["id"], "video")] == 1  # resumed, not restarted


def test_stall_is_resumed_after_the_read_timeout(env):
    rec = env.state.add_recording(file_size=2 * 1024 * 1024)
    env.state.faults.download_stalls = 1
    env.state.faults.stall_seconds = 7  # over twice the read timeout
    report = run_report(archive_recordings)
    assert kinds(report)[rec["id"]] == OutcomeKind.ARCHIVED
    assert_archived(env, rec)


def test_server_ignoring_range_restarts_the_download(env):
    rec = env.state.add_recording(file_size=2 * 1024 * 1024 + 1)
    env.state.faults.ignore_range = True
    env.state.faults.download_resets = 1
    env.state.faults.reset_after = 700_000
    report = run_report(archive_recordings)
    assert kinds(report)[rec["id"]] == OutcomeKind.ARCHIVED
    assert_archived(env, rec)
    assert env.state.downloads[(rec["id"], "video")] == 2  # whole file asked for again


@pytest.mark.parametrize("skew", [+10, -10])
def test_body_size_disagreeing_with_file_size_is_never_archived(env, skew):
    rec = env.state.add_recording(file_size=100_000)
    env.state.faults.size_skew = skew
    report = run_report(archive_recordings)
    assert kinds(report)[rec["id"]] == OutcomeKind.FAILED
    assert "file_size" in reasons(report)[rec["id"]]
    assert not any(env.archive.iterdir())
    env.state.faults.size_skew = 0
    assert kinds(run_report(archive_recordings))[rec["id"]] == OutcomeKind.ARCHIVED  # the next run completes it


def test_endless_resets_fail_cleanly_and_the_next_run_completes(env, monkeypatch):
    monkeypatch.setenv("ARCHIVE_DOWNLOAD_RESUMES", "2")
    rec = env.state.add_recording(file_size=1024 * 1024)
    env.state.faults.download_resets = 100
    env.state.faults.reset_after = 100_000
    report = run_report(archive_recordings)
    assert kinds(report)[rec["id"]] == OutcomeKind.FAILED and "broke" in reasons(report)[rec["id"]]
    # the final error names the bytes received against those expected (each body broke after 100,000)
    assert "received 300000 of 1048576 bytes" in reasons(report)[rec["id"]], reasons(report)[rec["id"]]
    assert not any(p.is_file() for p in env.archive.rglob("*"))
    env.state.faults.download_resets = 0
    assert kinds(run_report(archive_recordings))[rec["id"]] == OutcomeKind.ARCHIVED
    assert_archived(env, rec)


def test_expired_url_mid_run_is_refreshed(env):
    rec = env.state.add_recording(file_size=50_000, audio=True)
    env.state.url_ttl_seconds = -5  # every URL handed out is already expired ...
    env.state.faults.on_list_page = lambda page: None
    from tasks.archive import archive_recording
    from tests.fixtures import fresh_plan

    with RealtimeKitAPI(load_settings()) as api:
        stale = api.get_recording(rec["id"])
    env.state.url_ttl_seconds = 3600  # ... until the archiver asks again
    assert archive_recording.fn(fresh_plan(stale, f"file://{env.archive}")).kind == OutcomeKind.ARCHIVED
    assert_archived(env, rec)


# --- destination faults ----------------------------------------------------------------------

def test_destination_full_fails_cleanly(env, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        big = env.state.add_recording(file_size=3 * 1024 * 1024)
        report = run_report(archive_recordings, destination=f"file://{small}")
        assert kinds(report)[big["id"]] == OutcomeKind.FAILED
        assert "no space left" in reasons(report)[big["id"]]
        assert not any(small.rglob("*"))
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_sftp_connection_dropped_mid_upload_then_completed(env, sshd_server, monkeypatch):
    from storage_backends import open_backend, parse_destination_url
    from tasks.transfer import Download, stream_file

    rec = env.state.add_recording(file_size=4 * 1024 * 1024)
    d = f"drop-{uuid.uuid4().hex[:8]}"
    user = sshd_server.users["rtkpass"]
    backend = open_backend(
        parse_destination_url(f"sftp://rtkpass@127.0.0.1:{sshd_server.port}/~/{d}"),
        sftp_settings(sshd_server, sftp_password=user.password),
    )
    import httpx

    view = env.state.view(env.state.recordings[rec["id"]])
    with httpx.Client() as http:
        download = Download(http, view["download_url"], kind="video", expected_size=rec["file_size"], url_expiry=None,
                            refresh=None, chunk_size=256 * 1024, max_resumes=0, logger=logging.getLogger("t"))
        chunks = download.chunks()

        def dropping():
            for i, chunk in enumerate(chunks):
                if i == 6:
                    backend._transport.close()  # the network goes away mid-upload
                yield chunk

        download.chunks = dropping
        with pytest.raises(Exception):
            stream_file(download, backend=backend, key=rec["output_file_name"], logger=logging.getLogger("t"))
    home = sshd_server.home("rtkpass") / d
    assert not (home / rec["output_file_name"]).exists()  # nothing at the final name

    monkeypatch.setenv("SFTP_PASSWORD", user.password)
    monkeypatch.setenv("SFTP_KNOWN_HOSTS", str(sshd_server.known_hosts))
    report = run_report(archive_recordings, destination=f"sftp://rtkpass@127.0.0.1:{sshd_server.port}/~/{d}")
    assert kinds(report)[rec["id"]] == OutcomeKind.ARCHIVED
    assert (home / rec["output_file_name"]).read_bytes() == media_bytes(rec["id"], "video", 0, rec["file_size"])
    assert no_temp_files(home)  # the temp file the drop left behind is gone


@pytest.mark.slow
def test_sigkill_mid_transfer_then_rerun(tmp_path):
    """A real `rtk-archiver archive` process is SIGKILLed mid-transfer: its private Prefect API
    child dies with it (it stayed up, listening, with ~200 MiB); the next run archives
    everything, once, byte for byte, with no temp file left."""
    archive = tmp_path / "archive"
    with SimulatorServer() as sim:
        big = sim.state.add_recording(file_size=300 * 1024 * 1024)
        small = sim.state.add_recording(file_size=10_000)
        env = {
            **os.environ, "CLOUDFLARE_API_TOKEN": sim.token, "CLOUDFLARE_ACCOUNT_ID": sim.account_id,
            "REALTIMEKIT_APP_ID": sim.app_id, "CLOUDFLARE_BASE_URL": sim.base_url,
            "PREFECT_HOME": str(tmp_path / "prefect"), "ARCHIVE_MAX_CONCURRENT": "1",
        }
        env.pop("PREFECT_API_URL", None)
        cmd = [sys.executable, "-m", "rtk_archiver.cli", "archive", "--destination", f"file://{archive}"]
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            temps = [p for p in archive.rglob("*") if ".rtkpart-" in p.name] if archive.exists() else []
            if temps and temps[0].stat().st_size > 20 * 1024 * 1024:
                break
            time.sleep(0.05)
        else:
            proc.kill()
            pytest.fail("the transfer never started")
        child = api_child(proc.pid)
        assert child is not None and alive(child[0]) and listening(child[1])
        proc.kill()  # the CLI alone: its private Prefect API child must not outlive it
        proc.wait()
        deadline = time.monotonic() + 5
        while (alive(child[0]) or listening(child[1])) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive(child[0]) and not listening(child[1]), "the private Prefect API outlived the SIGKILLed CLI"
        assert not (archive / big["output_file_name"]).exists()
        rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
        for rec in (big, small):
            digest = hashlib.sha256((archive / rec["output_file_name"]).read_bytes()).hexdigest()
            assert digest == media_sha256(rec["id"], "video", rec["file_size"])
        assert no_temp_files(archive)
        files = sorted(p.name for p in archive.rglob("*"))
        assert len(files) == 4  # two videos, two sidecars: no duplicate


# --- bad input -------------------------------------------------------------------------------

def test_hostile_storage_configs_each_get_a_clear_answer(env, caplog):
    caplog.set_level(logging.DEBUG)
    cases = {
        "null": (None, OutcomeKind.ARCHIVED, ""),  # default destination
        "unknown": ({"type": "dropbox", "bucket": "b"}, OutcomeKind.SKIPPED, "'dropbox' is not supported"),
        "azure": ({"type": "azure", "bucket": "b"}, OutcomeKind.FAILED, "no Azure credentials for container 'b'"),
        "azure_no_container": ({"type": "azure"}, OutcomeKind.FAILED, "storage_config.bucket is missing for type 'azure'"),
        "no_type": ({"bucket": "b"}, OutcomeKind.ARCHIVED, ""),  # no type: treated as no storage_config
        "no_bucket": ({"type": "gcs"}, OutcomeKind.FAILED, "storage_config.bucket is missing"),
        "no_host": ({"type": "sftp", "username": "u", "auth_method": "KEY"}, OutcomeKind.FAILED, "storage_config.host"),
        "bad_port": ({"type": "sftp", "host": "h", "port": "twenty-two", "username": "u", "auth_method": "KEY"}, OutcomeKind.FAILED, "storage_config.port"),
        "no_auth": ({"type": "sftp", "host": "h", "username": "u"}, OutcomeKind.FAILED, "auth_method must be PASSWORD or KEY for type 'sftp' (it is missing)"),
        "bad_auth": ({"type": "sftp", "host": "h", "username": "u", "auth_method": "TOTP"}, OutcomeKind.FAILED, "auth_method must be PASSWORD or KEY"),
    }
    recs = {name: env.state.add_recording(file_size=1000, storage_config=sc) for name, (sc, _, _) in cases.items()}
    leaked = env.state.add_recording(
        file_size=1000, storage_config={"type": "aws", "bucket": "b", "access_key": "AKIALEAKED123", "secret": "LEAKED-SECRET-XYZ"}
    )
    env.state.faults.leak_secrets = True
    report = run_report(archive_recordings, destination=None)
    out, why = kinds(report), reasons(report)
    for name, (_, kind, fragment) in cases.items():
        rid = recs[name]["id"]
        assert out[rid] == kind, (name, why[rid])
        assert fragment in why[rid], (name, why[rid])
    assert out[leaked["id"]] == OutcomeKind.FAILED  # no such bucket reachable: fails, but leaks nothing
    everything = caplog.text + report.model_dump_json() + "".join(p.read_text() for p in env.archive.rglob("*.json"))
    assert "LEAKED-SECRET-XYZ" not in everything and "AKIALEAKED123" not in everything


def test_hostile_recording_fields(env):
    extra = env.state.add_recording(file_size=1000, brand_new_field={"nested": [1, 2]}, another=None)
    unknown_status = env.state.add_recording(status="ARCHIVED_BY_MARS")
    minimal = env.state.add_recording(file_size=1000, session_id=None, recording_duration=None)
    unicode_long = env.state.add_recording(file_size=1000, output_file_name="réunion-会议-" + "名" * 200 + ".mp4")
    nul = env.state.add_recording(file_size=1000, output_file_name="a\x00b\x1b[31m.mp4")
    report = run_report(archive_recordings)
    out, why = kinds(report), reasons(report)
    assert out[extra["id"]] == out[minimal["id"]] == out[unicode_long["id"]] == out[nul["id"]] == OutcomeKind.ARCHIVED
    assert out[unknown_status["id"]] == OutcomeKind.PENDING and "ARCHIVED_BY_MARS" in why[unknown_status["id"]]
    names = [p.name for p in env.archive.iterdir()]
    assert all(len(n.encode()) <= 255 and "\x00" not in n and "\x1b" not in n for n in names)
    sidecar = json.loads(next(env.archive.glob("réunion*.json")).read_text())
    assert sidecar["output_file_name"].startswith("réunion-会议-")  # the original name is kept in the sidecar


def test_malformed_recording_in_a_page_fails_alone(env):
    good = env.state.add_recording(file_size=1000)
    bad = env.state.add_recording(file_size=1000, recording_duration="forever")
    with RealtimeKitAPI(load_settings()) as api:
        items = {i.id: i for i in api.iter_recordings()}
    assert isinstance(items[bad["id"]], InvalidRecording) and "recording_duration" in items[bad["id"]].reason
    report = run_report(archive_recordings)
    assert kinds(report)[good["id"]] == OutcomeKind.ARCHIVED
    assert kinds(report)[bad["id"]] == OutcomeKind.FAILED


def test_a_dead_attempts_temp_file_is_removed_when_its_recording_is_archived_again(env):
    """An earlier attempt died mid-upload (its claim names a process that is gone) after this
    process had already looked through the directory (it does so once per SWEEP_SECONDS): the
    attempt that takes the recording over looks again, and leaves nothing behind."""
    from rtk_archiver.models import Recording
    from rtk_archiver.naming import keys_for
    from storage_backends import open_backend, parse_destination_url
    from storage_backends.tempnames import SWEEPS, temp_prefix
    from tasks.archive import _encode, _sidecar
    from tasks.limits import HOST

    rec = env.state.add_recording(file_size=200_000)
    recording = Recording.model_validate(rec)
    keys = keys_for(recording)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    claim = _sidecar(recording, [], claimed=[keys.name_of(keys.video)], token="t", holder={"host": HOST, "pid": dead.pid})
    (env.archive / keys.sidecar).write_bytes(_encode(claim))
    SWEEPS.forget()
    with open_backend(parse_destination_url(f"file://{env.archive}"), load_settings()) as backend:
        backend.remove_abandoned(keys.video)  # this process looked through the directory: not due again
        assert not SWEEPS.due(("file", str(env.archive.resolve())))
    left = env.archive / f"{temp_prefix(keys.name_of(keys.video))}{uuid.uuid4().hex[:12]}"
    left.write_bytes(b"the dead attempt's first bytes")  # the dead attempt's, after this process looked
    report = run_report(archive_recordings)
    assert kinds(report)[rec["id"]] == OutcomeKind.ARCHIVED, report.outcomes
    assert_archived(env, rec)
    assert no_temp_files(env.archive), sorted(p.name for p in env.archive.iterdir())
