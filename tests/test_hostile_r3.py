"""Hostile review, round 3: links inside a file:// or SFTP archive, a resumed download from a
changed source, the preflight ``check``, and the scrub's false alarms and blind spots. Each
test failed before its fix."""

from __future__ import annotations

import io
import os
import uuid

import pytest

from rtk_archiver.models import OutcomeKind
from storage_backends import open_backend, parse_destination_url
from storage_backends.nofollow import NotOurs
from tests.fixtures import run_report


def _kinds(report) -> dict:
    return {o.recording_id: (o.kind, o.reason) for o in report.outcomes}


# -- 1. links inside the destination are never followed --------------------------------------


def _assert_links_refused(backend, base, make_link) -> None:
    """``base``: the destination root on this machine's file system. Two archived files; one
    replaced by a link to the other; a directory replaced by a link to another directory."""
    backend.put_bytes("a/rec.mp4", b"recording A")
    backend.put_bytes("b/other.mp4", b"recording B, another recording's video")
    (base / "a/rec.mp4").unlink()
    make_link(base / "a/rec.mp4", base / "b/other.mp4")
    make_link(base / "c", base / "b")  # an intermediate directory that is a link
    other = (base / "b/other.mp4").read_bytes()

    for key in ("a/rec.mp4", "c/other.mp4"):
        with pytest.raises(NotOurs, match="symbolic link"):
            backend.stat(key)
        with pytest.raises(NotOurs):
            backend.read_bytes(key)
        with pytest.raises(NotOurs):
            b"".join(backend.read_chunks(key))
        with pytest.raises(NotOurs):
            backend.put(key, io.BytesIO(b"new bytes"), 9, replace=True)
        with pytest.raises(NotOurs):
            backend.put(key, io.BytesIO(b"new bytes"), 9)
        with pytest.raises(NotOurs):
            backend.delete(key)
    with pytest.raises(NotOurs):
        backend.put_bytes("c/new.mp4", b"through the link")
    assert not (base / "b/new.mp4").exists()
    assert (base / "a/rec.mp4").is_symlink() and (base / "c").is_symlink()  # never replaced nor removed
    assert (base / "b/other.mp4").read_bytes() == other  # never written through
    assert [k for k, _ in backend.list()] == ["b/other.mp4"]  # links not listed, a linked directory not entered
    assert list(backend.list("c/")) == []
    assert [k for k, _ in backend.list("b/")] == ["b/other.mp4"]


def test_local_links_inside_the_destination_are_never_followed(tmp_path):
    root = tmp_path / "root"
    backend = open_backend(parse_destination_url(f"file://{root}"), settings=None)
    _assert_links_refused(backend, root, lambda link, target: link.symlink_to(target))
    # a link to outside the root, and one that appears between the look and the write
    (tmp_path / "outside.mp4").write_bytes(b"outside")
    (root / "out.mp4").symlink_to(tmp_path / "outside.mp4")
    with pytest.raises(NotOurs):
        backend.put_bytes("out.mp4", b"x", replace=True)
    assert (tmp_path / "outside.mp4").read_bytes() == b"outside"


def test_sftp_links_inside_the_destination_are_never_followed(sftp_backend_factory):
    backend = sftp_backend_factory()

    def link(at, target):  # as the server's user would: a relative link, owned by that user
        at.symlink_to(os.path.relpath(target, at.parent))
        os.lchown(at, target.stat().st_uid, target.stat().st_gid)

    _assert_links_refused(backend, backend.base_path, link)


@pytest.mark.usefixtures("prefect_harness")
def test_an_archived_video_replaced_by_a_link_to_another_recording_is_never_followed(archiver_env):
    """Rerun and ``verify --deep`` over an archive where A's video became a link to B's video:
    A is reported (not ours / not intact), B's video is neither overwritten nor read as A's."""
    from flows.archive import archive_recordings
    from flows.verify import verify_archive

    sim, root = archiver_env.state, archiver_env.archive
    a = sim.add_recording(file_size=30_000, output_file_name="a.mp4")
    b = sim.add_recording(file_size=20_000, output_file_name="b.mp4")
    assert {o.kind for o in run_report(archive_recordings).outcomes} == {OutcomeKind.ARCHIVED}
    b_bytes = (root / "b.mp4").read_bytes()
    (root / "a.mp4").unlink()
    (root / "a.mp4").symlink_to("b.mp4")

    report = run_report(archive_recordings)
    kind, reason = _kinds(report)[a["id"]]
    assert kind == OutcomeKind.FAILED and "symbolic link" in reason, (kind, reason)
    assert (root / "a.mp4").is_symlink() and (root / "b.mp4").read_bytes() == b_bytes

    state = verify_archive(deep=True, repair=False, return_state=True)
    found = state.result(raise_on_failure=False)
    problems = {p.recording_id: p for p in found.problems}
    assert set(problems) == {a["id"]} and problems[a["id"]].problem == "not ours", found.problems
    assert found.destinations[0].bytes_hashed == b["file_size"]  # B's video read once, as B's only
    assert (root / "a.mp4").is_symlink() and (root / "b.mp4").read_bytes() == b_bytes


# -- 2. a failed re-archive never destroys what the sidecar knew --------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_a_failed_repair_keeps_the_previous_sidecars_sizes_and_hashes(archiver_env):
    """A truncated video whose source now answers an error page: the scrub's repair fails, and
    the sidecar is still complete with every file's size and hash (the audio's untouched), so
    the next scrub still reports the video (not "the sidecar lists no files")."""
    import json

    from flows.archive import archive_recordings
    from flows.verify import verify_archive

    sim, root = archiver_env.state, archiver_env.archive
    rec = sim.add_recording(file_size=40_000, audio=True, output_file_name="kept.mp4")
    assert {o.kind for o in run_report(archive_recordings).outcomes} == {OutcomeKind.ARCHIVED}
    before = json.loads((root / "kept.mp4.metadata.json").read_bytes())
    assert before["state"] == "complete" and len(before["files"]) == 2
    with open(root / "kept.mp4", "r+b") as fh:
        fh.truncate(10_000)
    sim.faults.error_pages = 1000  # every download now answers an HTML error page

    for _ in range(2):  # the failed repair, then a scrub over what it left
        state = verify_archive(deep=True, repair=True, return_state=True)
        assert state.is_failed()
        found = state.result(raise_on_failure=False)
        assert [(p.recording_id, p.problem) for p in found.problems] == [(rec["id"], "size")], found.problems
        assert not found.repairs[0].repaired
        after = json.loads((root / "kept.mp4.metadata.json").read_bytes())
        assert after["state"] == "complete"
        assert sorted((f["name"], f["size"], f["sha256"]) for f in after["files"]) == sorted(
            (f["name"], f["size"], f["sha256"]) for f in before["files"]
        )


@pytest.mark.usefixtures("prefect_harness")
def test_a_recording_being_archived_right_now_is_not_reported_corrupt(archiver_env):
    """A live claim (held by a running process, renewed just now) is skipped by the scrub,
    counted as in progress; a dead one is reported."""
    import json
    from datetime import datetime, timezone

    from flows.verify import verify_archive
    from tasks.limits import claim_holder

    root = archiver_env.archive
    rid = str(uuid.uuid4())
    claim = {
        "schema_version": 2, "state": "claimed", "claimed": ["live.mp4"], "claim_token": "t",
        "claim_holder": {"host": claim_holder()["host"], "pid": os.getppid()},  # another process, running
        "recording_id": rid, "status": "UPLOADED", "invoked_time": "2026-12-01T00:00:00Z", "output_file_name": "live.mp4",
        "files": [], "archived_at": datetime.now(timezone.utc).isoformat(), "archiver_version": "test",
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "live.mp4.metadata.json").write_text(json.dumps(claim))
    found = verify_archive(deep=True, repair=False, return_state=True).result(raise_on_failure=False)
    assert not found.problems and sum(d.in_progress for d in found.destinations) == 1, found
    claim["claim_holder"] = {"host": claim_holder()["host"], "pid": 2**22 + 12345}  # no such process
    (root / "live.mp4.metadata.json").write_text(json.dumps(claim))
    found = verify_archive(deep=True, repair=False, return_state=True).result(raise_on_failure=False)
    assert [p.recording_id for p in found.problems] == [rid]


# -- 3. a resumed download is the rest of the same file, or the attempt starts over ------------


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    "server",
    ["honours If-Range", "ignores If-Range"],  # the second serves the new version's range: caught by its ETag
)
def test_a_file_replaced_mid_download_is_never_archived_as_a_mix(archiver_env, server, monkeypatch):
    """The connection drops after 700 KB of version A and the file is replaced by version B
    (same name, same size, other bytes): the resume never appends B's rest to A's start. The
    attempt stores nothing, its retry (ARCHIVE_TASK_RETRIES=1) starts over and archives B
    whole, with B's sha256."""
    import hashlib
    import json

    from flows.archive import archive_recordings
    from rtk_archiver.simulator import media_bytes, media_source

    sim, root = archiver_env.state, archiver_env.archive
    rec = sim.add_recording(file_size=2 * 1024 * 1024 + 7, output_file_name="swap.mp4")
    sim.faults.fault_kinds = ("video",)
    sim.faults.download_resets, sim.faults.reset_after = 1, 700_000
    sim.faults.replace_on_reset = True
    sim.faults.honour_if_range = server == "honours If-Range"

    report = run_report(archive_recordings)
    assert _kinds(report)[rec["id"]][0] == OutcomeKind.ARCHIVED, report.outcomes
    version_b = media_bytes(media_source(rec["id"], 1), "video", 0, rec["file_size"])
    data = (root / "swap.mp4").read_bytes()
    assert data == version_b, "the archived video is not version B whole"
    sidecar = json.loads((root / "swap.mp4.metadata.json").read_bytes())
    assert {f["sha256"] for f in sidecar["files"] if f["name"] == "swap.mp4"} == {hashlib.sha256(version_b).hexdigest()}
    assert not [p for p in root.rglob("*") if ".rtkpart-" in p.name]


def _resumed(first: dict, second: tuple[int, dict, bytes]):
    """A Download over a transport whose first answer (``first``: its headers, 1000 bytes
    announced) breaks after 600 bytes (past the 512 sniffed), and whose second answer is ``second``."""
    import logging

    import httpx as hx

    from tasks.transfer import Download

    class Broken(hx.SyncByteStream):
        def __iter__(self):
            yield b"a" * 600
            raise hx.RemoteProtocolError("peer closed connection")

    class Whole(hx.SyncByteStream):
        def __init__(self, body: bytes) -> None:
            self.body = body

        def __iter__(self):
            yield self.body

    seen: list = []

    def handler(request):
        seen.append(request)
        if len(seen) == 1:
            return hx.Response(200, headers={"Content-Length": "1000", **first}, stream=Broken())
        status, headers, body = second
        return hx.Response(status, headers={"Content-Length": str(len(body)), **headers}, stream=Whole(body))

    client = hx.Client(transport=hx.MockTransport(handler))
    download = Download(
        client, "https://bucket.example/v.mp4", kind="video", expected_size=1000, url_expiry=None, refresh=None,
        chunk_size=256, max_resumes=3, logger=logging.getLogger("test"), stall_seconds=None,
    )
    return download, seen


@pytest.mark.parametrize(
    "first, second, changed",
    [
        # the resume asks If-Range with the ETag; a 206 with another ETag is another version
        ({"ETag": '"a"'}, (206, {"ETag": '"b"', "Content-Range": "bytes 600-999/1000"}, b"b" * 400), True),
        # If-Range with Last-Modified when there is no ETag; a later Last-Modified is another version
        ({"Last-Modified": "Mon, 07 Dec 2026 10:00:00 GMT"},
         (206, {"Last-Modified": "Mon, 07 Dec 2026 11:00:00 GMT", "Content-Range": "bytes 600-999/1000"}, b"b" * 400), True),
        # no validators at all: the Content-Range total says the file is another one
        ({}, (206, {"Content-Range": "bytes 600-1999/2000"}, b"b" * 1400), True),
        # the server answered the changed file whole (If-Range honoured): another ETag
        ({"ETag": '"a"'}, (200, {"ETag": '"b"'}, b"b" * 1000), True),
        # the same version: resumed
        ({"ETag": '"a"'}, (206, {"ETag": '"a"', "Content-Range": "bytes 600-999/1000"}, b"a" * 400), False),
        # a weak ETag is not sent as If-Range (it names equivalent content, not the same bytes)
        ({"ETag": 'W/"a"', "Last-Modified": "Mon, 07 Dec 2026 10:00:00 GMT"},
         (206, {"Content-Range": "bytes 600-999/1000"}, b"a" * 400), False),
    ],
)
def test_a_resumed_range_is_checked_to_be_the_same_file(first, second, changed):
    from tasks.transfer import SourceChanged

    download, seen = _resumed(first, second)
    if changed:
        with pytest.raises(SourceChanged, match="changed on RealtimeKit's side during the download"):
            b"".join(download.chunks())
    else:
        assert b"".join(download.chunks()) == b"a" * 1000
    if_range = seen[1].headers.get("if-range")
    assert seen[1].headers["range"] == "bytes=600-"
    assert if_range == (first.get("ETag") if not first.get("ETag", "").startswith("W/") else None) or first.get("Last-Modified"), if_range


# -- 4. the preflight probes where archiving writes, names the step that failed, leaves nothing --


def _check_settings(**kw):
    from rtk_archiver.settings import Settings

    kw.setdefault("archive_credential_blocks", False)
    return Settings(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b", **kw)


def _abs_dir():
    from pathlib import Path

    absolute = Path(f"/tmp/rtk-abs-{uuid.uuid4().hex[:8]}")
    absolute.mkdir(mode=0o1777)
    absolute.chmod(0o1777)  # the sftp user may make directories below it
    return absolute


def test_check_probes_an_absolute_sftp_path_where_archiving_writes_and_leaves_no_directory(sshd_server):
    """storage_config.path "/abs/team/deep" is probed at /abs/team/deep (not ~/abs/...), as
    archiving writes there; the directories the probe made are removed, one that was there stays."""
    import shutil

    from rtk_archiver.models import Recording
    from tasks.check import check_destinations
    from tests.fixtures.sshd import sftp_settings

    user = sshd_server.users["rtkpass"]
    absolute = _abs_dir()
    (absolute / "kept").mkdir()
    (absolute / "kept").chmod(0o1777)
    sc = {"type": "sftp", "host": "127.0.0.1", "port": sshd_server.port, "username": "rtkpass", "auth_method": "PASSWORD"}
    recs = [
        Recording.model_validate({"id": str(uuid.uuid4()), "status": "UPLOADED", "invoked_time": "2026-12-07T10:00:00Z",
                                  "output_file_name": "r.mp4", "storage_config": {**sc, "path": path}})
        for path in (f"{absolute}/team/deep", f"{absolute}/kept")
    ]
    try:
        st = sftp_settings(sshd_server, sftp_password=user.password, archive_credential_blocks=False)
        report = check_destinations(st, None, recs)
        rows = {r.destination: r for r in report.checks}
        port = f":{sshd_server.port}"
        assert set(rows) == {f"sftp://rtkpass@127.0.0.1{port}{absolute}/team/deep", f"sftp://rtkpass@127.0.0.1{port}{absolute}/kept"}, rows
        assert all(r.status == "ok" for r in rows.values()), [(r.destination, r.reason) for r in rows.values()]
        assert sorted(p.name for p in absolute.iterdir()) == ["kept"]  # team/deep made for the probe, removed
        assert list((absolute / "kept").iterdir()) == []
        assert not (sshd_server.home("rtkpass") / absolute.relative_to("/")).exists()  # never under ~
    finally:
        shutil.rmtree(absolute, ignore_errors=True)


def test_check_names_the_step_that_failed_and_claims_only_what_worked(sshd_server, tmp_path):
    """An unknown host key: the step is "connect", "host key" is not among what worked; a port
    with no server: "connect" with a fix about the network, not about keys."""
    import socket

    from tests.fixtures.sshd import sftp_settings

    user = sshd_server.users["rtkpass"]
    url = f"sftp://rtkpass@127.0.0.1:{sshd_server.port}/~/chk-{uuid.uuid4().hex[:8]}"
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    row = probe_destination_url(url, sftp_settings(sshd_server, sftp_password=user.password, sftp_known_hosts=empty,
                                                   archive_credential_blocks=False))
    assert row.status == "failed" and row.reason.startswith("connect: ") and "host key" in row.reason, row
    assert row.works == ["credentials"], row.works
    assert "SFTP_KNOWN_HOSTS" in row.fix
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    row = probe_destination_url(f"sftp://rtkpass@127.0.0.1:{port}/~/x",
                                sftp_settings(sshd_server, sftp_password=user.password, archive_credential_blocks=False))
    assert row.reason.startswith("connect: "), row
    assert "network" in row.fix and "write" not in row.works


def probe_destination_url(url: str, st):
    from tasks.check import probe_destination

    return probe_destination(parse_destination_url(url), st, "--destination")


@pytest.mark.parametrize("at", ["stat", "read", "delete"])
def test_an_interrupt_during_the_probe_leaves_neither_probe_nor_directories(tmp_path, monkeypatch, at):
    from storage_backends.local import LocalBackend
    from tasks.check import probe_destination

    root = tmp_path / "archive"
    (root / "there").mkdir(parents=True)
    method = {"stat": "stat", "read": "read_bytes", "delete": "delete"}[at]
    real = getattr(LocalBackend, method)
    calls = []

    def interrupted(self, key, *a, **kw):
        if not calls:
            calls.append(key)
            raise KeyboardInterrupt
        return real(self, key, *a, **kw)

    monkeypatch.setattr(LocalBackend, method, interrupted)
    with pytest.raises(KeyboardInterrupt):
        probe_destination(parse_destination_url(f"file://{root}"), _check_settings(), "--destination", "there/new/deeper")
    assert calls, "the probe never reached that step"
    assert [p.relative_to(root).as_posix() for p in root.rglob("*")] == ["there"]


def test_check_interrupted_from_the_command_line_is_one_line_and_exit_130(tmp_path, monkeypatch, capsys):
    import signal

    from rtk_archiver.cli import main
    from storage_backends.local import LocalBackend

    for key, value in {"CLOUDFLARE_API_TOKEN": "t", "CLOUDFLARE_ACCOUNT_ID": "a", "REALTIMEKIT_APP_ID": "b",
                       "ARCHIVE_CREDENTIAL_BLOCKS": "false", "PREFECT_API_URL": "http://127.0.0.1:9/api"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("ARCHIVE_DEFAULT_DESTINATION", raising=False)
    real = LocalBackend.stat

    pressed = []

    def ctrl_c(self, key):  # the user presses Ctrl-C (once) right after the probe was written
        if not pressed:
            pressed.append(key)
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, key)

    monkeypatch.setattr(LocalBackend, "stat", ctrl_c)
    code = main(["check", "--skip-recordings", "--destination", f"file://{tmp_path}"])
    err = capsys.readouterr().err
    assert code == 130, err
    assert "check INTERRUPTED by SIGINT" in err and "Traceback" not in err and err.count("\n") == 1, err
    assert pressed and list(tmp_path.rglob("*")) == []  # the probe was written, and removed
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back


def test_a_wrong_azure_key_is_named_as_such(azure_env, monkeypatch):
    import base64
    import os as _os

    from tasks.check import probe_destination

    conn = _os.environ["AZURE_STORAGE_CONNECTION_STRING"]
    parts = dict(p.split("=", 1) for p in conn.split(";") if p)
    parts["AccountKey"] = base64.b64encode(b"w" * 64).decode()
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", ";".join(f"{k}={v}" for k, v in parts.items()))
    row = probe_destination(parse_destination_url(f"az://{azure_env}/x"), _check_settings(), "--destination")
    assert row.status == "failed" and "key or SAS is wrong or expired" in row.reason, row
    assert "correct the account key or SAS" in row.fix and "grant" not in row.fix, row.fix
    assert parts["AccountKey"] not in row.reason


# -- 5. the scrub: targets from the placement archiving uses; no false alarms -------------------


@pytest.mark.usefixtures("prefect_harness")
def test_the_scrub_checks_an_absolute_sftp_path_and_repairs_there(archiver_env, sshd_server, monkeypatch):
    import shutil

    from flows.archive import archive_recordings
    from flows.verify import verify_archive
    from rtk_archiver.simulator import media_bytes

    env = archiver_env
    monkeypatch.delenv("ARCHIVE_DEFAULT_DESTINATION")
    monkeypatch.setenv("SFTP_PASSWORD", sshd_server.users["rtkpass"].password)
    monkeypatch.setenv("SFTP_KNOWN_HOSTS", str(sshd_server.known_hosts))
    absolute = _abs_dir()
    sc = {"type": "sftp", "host": "127.0.0.1", "port": sshd_server.port, "username": "rtkpass", "auth_method": "PASSWORD"}
    try:
        rec = env.state.add_recording(file_size=7_000, storage_config={**sc, "path": f"{absolute}/team"})
        assert {o.kind for o in run_report(archive_recordings).outcomes} == {OutcomeKind.ARCHIVED}
        video = absolute / "team" / rec["output_file_name"]
        with open(video, "r+b") as f:
            f.truncate(3_000)
        found = verify_archive(repair=False, return_state=True).result(raise_on_failure=False)
        label = f"sftp://rtkpass@127.0.0.1:{sshd_server.port}{absolute}/team"
        assert label in [d.destination for d in found.destinations], found.destinations
        assert [p.recording_id for p in found.problems] == [rec["id"]], found
        fixed = verify_archive(return_state=True).result(raise_on_failure=False)
        assert [(r.recording_id, r.repaired) for r in fixed.repairs] == [(rec["id"], True)], fixed.repairs
        assert video.read_bytes() == media_bytes(rec["id"], "video", 0, 7_000)
    finally:
        shutil.rmtree(absolute, ignore_errors=True)


@pytest.mark.usefixtures("prefect_harness")
def test_a_users_own_metadata_json_is_not_a_damaged_sidecar(archiver_env):
    """Files of the user's that end in .metadata.json are left alone (counted, logged); a
    sidecar of ours that was cut short is still reported."""
    from flows.archive import archive_recordings
    from flows.verify import verify_archive

    rec = archiver_env.state.add_recording(file_size=5_000)
    assert {o.kind for o in run_report(archive_recordings).outcomes} == {OutcomeKind.ARCHIVED}
    root = archiver_env.archive
    (root / "notes.metadata.json").write_text('{"title": "my notes", "tags": ["q4"]}')
    (root / "photos").mkdir()
    (root / "photos" / "IMG_1.jpg.metadata.json").write_bytes(b"\x00\x01 exif dump, not JSON")
    (root / "list.metadata.json").write_text("[1, 2, 3]")
    (root / "empty.metadata.json").write_bytes(b"")  # empty, nothing beside it
    (root / "mine.metadata.json").write_text('{"schema_version": 2, "files": []}')  # a schema of its own
    found = verify_archive(deep=True, repair=False, return_state=True).result(raise_on_failure=False)
    assert not found.problems and found.failure_message() is None, found
    assert sum(d.foreign for d in found.destinations) == 5 and sum(d.sidecars for d in found.destinations) == 1
    sidecar = next(root.glob(f"{rec['output_file_name']}.metadata.json"))
    whole = sidecar.read_bytes()
    # ours, cut short anywhere (even to nothing: its video is beside it), is damaged, not a user's file
    for cut in (300, 40, 12, 1, 0):
        sidecar.write_bytes(whole[:cut])
        found = verify_archive(repair=False, return_state=True).result(raise_on_failure=False)
        assert [p.problem for p in found.problems] == ["sidecar"], (cut, found)


@pytest.mark.usefixtures("prefect_harness")
def test_a_dead_claim_of_this_very_process_is_checked_not_skipped(archiver_env):
    """The in-process scrub (the same process as the attempt that died) does not take its own
    pid for proof of life: only a claim whose attempt is running (its token) is skipped."""
    import json
    from datetime import datetime, timezone

    from flows.verify import verify_archive
    from tasks.limits import claim_holder, live_tokens

    root = archiver_env.archive
    rid = str(uuid.uuid4())
    claim = {
        "schema_version": 2, "state": "claimed", "claimed": ["mine.mp4"], "claim_token": "dead-token", "claim_holder": claim_holder(),
        "recording_id": rid, "status": "UPLOADED", "invoked_time": "2026-12-01T00:00:00Z", "output_file_name": "mine.mp4",
        "files": [], "archived_at": datetime.now(timezone.utc).isoformat(), "archiver_version": "test",
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / "mine.mp4.metadata.json").write_text(json.dumps(claim))
    found = verify_archive(repair=False, return_state=True).result(raise_on_failure=False)
    assert [p.recording_id for p in found.problems] == [rid], found
    live_tokens.add("dead-token")  # now its attempt is running in this process
    try:
        found = verify_archive(repair=False, return_state=True).result(raise_on_failure=False)
        assert not found.problems and sum(d.in_progress for d in found.destinations) == 1, found
    finally:
        live_tokens.discard("dead-token")


def test_verify_report_to_a_bad_path_is_refused_before_the_scrub(tmp_path, capsys):
    from rtk_archiver.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["verify", "--report", str(tmp_path / "no-such-dir" / "r.json")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_the_scrub_skips_storage_of_errored_recordings_with_no_files():
    from flows.verify import scrub_targets
    from rtk_archiver.models import Recording

    def rec(status, bucket, url=None):
        return Recording.model_validate({
            "id": str(uuid.uuid4()), "status": status, "invoked_time": "2026-12-07T10:00:00Z", "output_file_name": "r.mp4",
            "download_url": url, "storage_config": {"type": "aws", "bucket": bucket, "path": "p"},
        })

    targets, notes = scrub_targets([], _check_settings(), [rec("ERRORED", "never-written"), rec("UPLOADED", "ours", "https://x/y")])
    assert [t.label for t in targets] == ["s3://ours/"], targets


# -- 6. the watchdog escapes API text like every other artifact and log line -------------------

HOSTILE_NAME = "a|b\n# Injected heading\n[click](http://evil.example) <img src=x onerror=alert(1)> `code`\r\x1b[2J.mp4"


def test_the_watchdog_artifact_escapes_file_names_and_reasons():
    from flows.watchdog import markdown
    from rtk_archiver.models import ArchiveReport, RecordingRisk

    report = ArchiveReport(at_risk=[RecordingRisk(recording_id="r|1", output_file_name=HOSTILE_NAME, deadline=None,
                                                  reason="storage [x](http://e) | <b>")])
    text = markdown(report, 24)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "recording" not in line]
    assert len(rows) == 1, text  # one row: no raw newline, no extra cell
    row = rows[0]
    assert row.count("|") - row.count("\\|") == 5, row  # 4 cells: every | of the data escaped
    assert "\n#" not in text.replace("\n## ", "").replace("\n# Expiry", "") and "\\n\\# Injected" in row
    import re

    for raw in (r"\[click", r"\]\(http", "<img", "`code", "\x1b", "\r"):
        assert not re.search(r"(?<!\\)" + raw, text), raw  # only ever backslash-escaped


@pytest.mark.usefixtures("prefect_harness")
def test_the_watchdog_log_lines_escape_file_names(archiver_env, caplog):
    from datetime import datetime, timedelta, timezone

    from tests.test_watchdog import archive_with_watchdog

    sim = archiver_env
    sim.state.url_ttl_seconds = 30 * 86400
    sim.state.add_recording(file_size=1000, output_file_name=HOSTILE_NAME, storage_config={"type": "dropbox", "bucket": "b"},
                            stopped_time=datetime.now(timezone.utc) - timedelta(days=6, hours=20))
    with caplog.at_level("INFO"):
        report = archive_with_watchdog(dry_run=True)
    assert len(report.at_risk) == 1
    lines = [r.getMessage() for r in caplog.records if "AT RISK" in r.getMessage()]
    assert lines and all("\n" not in m and "\x1b" not in m and "\r" not in m for m in lines), lines
    assert "a|b\\n# Injected heading" in lines[0]
