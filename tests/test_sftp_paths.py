"""storage_config.path on SFTP: starting with '/' it is absolute on the server, else relative
to the login directory (README, "What gets archived, and where"); tested against sshd."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from flows.archive import archive_recordings
from rtk_archiver.models import OutcomeKind
from rtk_archiver.simulator import media_bytes
from tests.fixtures import run_report

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_absolute_and_relative_sftp_paths(archiver_env, sshd_server, monkeypatch):
    env = archiver_env
    monkeypatch.delenv("ARCHIVE_DEFAULT_DESTINATION")
    monkeypatch.setenv("SFTP_PASSWORD", sshd_server.users["rtkpass"].password)
    monkeypatch.setenv("SFTP_KNOWN_HOSTS", str(sshd_server.known_hosts))
    tag = uuid.uuid4().hex[:8]
    absolute = Path(f"/tmp/rtk-abs-{tag}")
    absolute.mkdir(mode=0o1777)
    absolute.chmod(0o1777)
    sc = {"type": "sftp", "host": "127.0.0.1", "port": sshd_server.port, "username": "rtkpass", "auth_method": "PASSWORD"}
    try:
        abs_rec = env.state.add_recording(file_size=7_000, storage_config={**sc, "path": f"{absolute}/team"})
        rel_rec = env.state.add_recording(file_size=8_000, storage_config={**sc, "path": f"rel-{tag}/team"})
        hostile = env.state.add_recording(file_size=9_000, storage_config={**sc, "path": f"{absolute}/../../etc"})
        report = run_report(archive_recordings)
        out = {o.recording_id: o for o in report.outcomes}
        assert {o.kind for o in out.values()} == {OutcomeKind.ARCHIVED}, report.outcomes
        assert (absolute / "team" / abs_rec["output_file_name"]).read_bytes() == media_bytes(abs_rec["id"], "video", 0, 7_000)
        assert out[abs_rec["id"]].destination.startswith(f"sftp://rtkpass@127.0.0.1:{sshd_server.port}{absolute}/team/")
        home = sshd_server.home("rtkpass")
        assert (home / f"rel-{tag}" / "team" / rel_rec["output_file_name"]).stat().st_size == 8_000
        assert not (home / absolute.relative_to("/")).exists()  # the old bug: absolute paths under the login directory
        # '..' is never followed: the hostile path stays under the absolute directory
        assert (absolute / "__" / "__" / "etc" / hostile["output_file_name"]).stat().st_size == 9_000
        again = run_report(archive_recordings)
        assert {o.kind for o in again.outcomes} == {OutcomeKind.ALREADY_ARCHIVED}
    finally:
        shutil.rmtree(absolute, ignore_errors=True)
        shutil.rmtree(sshd_server.home("rtkpass") / f"rel-{tag}", ignore_errors=True)
