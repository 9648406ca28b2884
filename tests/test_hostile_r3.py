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
        "schema_version": 2, "state": "claimed", "claimed": ["live.mp4"], "claim_token": "t", "claim_holder": claim_holder(),
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
