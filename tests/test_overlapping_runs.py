"""Two runs over the same recordings at the same time, in two processes sharing one real
``prefect server``: the destination's claim sidecars alone (no Prefect lock: tasks/limits.py)
make sure each recording is transferred exactly once, intact, and neither run fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from rtk_archiver.simulator import media_bytes
from tests.fixtures import wait_until

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime.now(timezone.utc)

RUN = """
import sys, time
from datetime import datetime
from flows.archive import archive_recordings, report_of
started = time.time()
state = archive_recordings(since=datetime.fromisoformat(sys.argv[1]), until=datetime.fromisoformat(sys.argv[2]),
                           return_state=True)
report = report_of(state)
if report is None:
    print("NO REPORT", state.type.value, state.message, repr(state.result(raise_on_failure=False))[:3000], flush=True)
    sys.exit(3)
kinds = {}
for o in report.outcomes:
    kinds[o.kind.value] = kinds.get(o.kind.value, 0) + 1
print("RESULT", state.type.value, kinds, started, time.time(), flush=True)
"""


@pytest.mark.slow
@pytest.mark.timeout(600)  # a loaded machine
def test_two_overlapping_runs_on_a_shared_server_transfer_each_recording_once(archiver_env, prefect_server, tmp_path):
    env, root = archiver_env, archiver_env.archive
    recs = [env.state.add_recording(file_size=1_000_000 + 1000 * i, audio=(i % 4 == 0),
                                    stopped_time=NOW - timedelta(hours=3, minutes=i)) for i in range(24)]
    # every download trickles (~3 s for a video): the first run needs ~25 s of transfers, and the
    # second one starts as soon as the first has claimed a recording
    faults = env.state.faults
    faults.download_trickles, faults.reset_after, faults.trickle_bytes, faults.trickle_interval = 1000, 0, 16 * 1024, 0.05
    since, until = (NOW - timedelta(hours=4)).isoformat(), (NOW - timedelta(hours=2)).isoformat()
    procs = []
    for n in range(2):
        run_env = prefect_server.env(PREFECT_HOME=str(tmp_path / f"home{n}"), ARCHIVE_MAX_CONCURRENT="3",
                                     PREFECT_LOGGING_LEVEL="WARNING")
        procs.append(subprocess.Popen([sys.executable, "-c", RUN, since, until], cwd=ROOT, env=run_env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        if n == 0:  # the second run starts once the first is archiving (else they may not meet at all)
            wait_until(lambda: list(root.glob("*.metadata.json")) or procs[0].poll() is not None, timeout=120,
                       what="the first run's first claim")
    outs = [p.communicate(timeout=240)[0] for p in procs]
    results = [line for out in outs for line in out.splitlines() if line.startswith("RESULT")]
    assert [p.returncode for p in procs] == [0, 0] and len(results) == 2, "\n----\n".join(o[-4000:] for o in outs)
    assert all("COMPLETED" in r for r in results), results
    (start1, end1), (start2, _) = [map(float, r.rsplit(" ", 2)[1:]) for r in results]
    assert start2 < end1 - 3, f"the runs did not overlap: {results}"
    for r in recs:
        assert env.state.downloads[(r["id"], "video")] == 1, (r["id"], results)
        assert (root / r["output_file_name"]).read_bytes() == media_bytes(r["id"], "video", 0, r["file_size"])
        sidecar = json.loads((root / (r["output_file_name"] + ".metadata.json")).read_text())
        assert sidecar["state"] == "complete" and sidecar["recording_id"] == r["id"]
        if r["audio_download_url"]:
            assert env.state.downloads[(r["id"], "audio")] == 1
    assert not [p for p in root.rglob("*") if ".rtkpart-" in p.name]
    print(results)  # the first run archived each recording; the second waited for its claims: already archived
