"""CLI start-up: ``rtk-archiver archive-one`` of a 64 KiB recording into a local directory on a
warm ``PREFECT_HOME`` (its database already created). Median of 5 runs: wall time, CPU time
(the CLI and every child it waited for), peak RSS of the CLI process, and where the seconds
go (phases, from timestamps taken inside the CLI process).

Two ways a CLI run meets Prefect, both measured:

* ``archive-one`` (default): no Prefect server configured, a local destination, so the
  flow's body runs in the CLI process (``flows.direct``); no Prefect API server.
* ``private-api``: the same command forced onto a private Prefect API server, as ``archive``
  (windows) and ``archive-one`` to an object store / SFTP with credentials blocks enabled run.

    python -m bench.startup [--runs 5] [--size 64K] [--baseline DIR]

``--baseline DIR``: also measure the code in DIR (e.g. ``git archive <commit> | tar -x -C DIR``),
in alternating order with this checkout, for a before / after table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import BIN, REPO, archiver_env, median, parse_size, save, simulator

TARGET_SECONDS = 3.0
VARIANTS = ("archive-one", "private-api")


# --- inside the measured CLI process ----------------------------------------------------------

#: ``rtk-archiver ARGS`` as the console script runs it (``cli.main``), with a timestamp (wall
#: since the benchmark started the process, and the process's CPU time) at each phase. A
#: string run with ``python -c``: the code measured may be another checkout (``--baseline``).
CHILD = """
import os, resource, sys, time
from contextlib import contextmanager
t0 = float(os.environ["RTK_BENCH_T0"])

def mark(name):
    r = resource.getrusage(resource.RUSAGE_SELF)
    sys.stderr.write(f"PHASE {name} {time.time() - t0:.3f} {r.ru_utime + r.ru_stime:.3f}\\n")
    sys.stderr.flush()

mark("interpreter started")
from rtk_archiver import cli, prefect_api
mark("CLI imported")

def wrap(owner, name, before, after):
    inner = getattr(owner, name, None)
    if inner is None:
        return
    def wrapped(*a, **kw):
        if before:
            mark(before)
        result = inner(*a, **kw)
        if after:
            mark(after)
        return result
    setattr(owner, name, wrapped)

start_api = prefect_api.private_prefect_api

@contextmanager
def private_api(*a, **kw):
    mark("private API: starts")
    with start_api(*a, **kw) as url:
        mark("private API: healthy")
        yield url
        mark("flow done, logs and events sent")
    mark("private API: stopped")

prefect_api.private_prefect_api = private_api
wrap(cli, "_import_flows", None, "Prefect and flows imported")
wrap(cli, "_run_flow", None, "flow returned")
wrap(cli, "_run_flow_directly", "direct run: starts", "direct run: flow returned")
wrap(cli, "print_report", None, "report printed")
if os.environ.get("RTK_BENCH_FORCE_API") == "1" and hasattr(cli, "_runs_without_prefect_api"):
    cli._runs_without_prefect_api = lambda *a, **kw: False
code = cli.main()  # as the console script calls it (the arguments from sys.argv)
mark("main returned")
sys.exit(code)
"""


# --- the benchmark ----------------------------------------------------------------------------

def _peak_rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_once(env: dict[str, str], argv: list[str], code_dir: Path, force_api: bool) -> dict:
    env = {**env, "PYTHONPATH": str(code_dir), "RTK_BENCH_FORCE_API": "1" if force_api else "0"}
    cmd = [sys.executable, "-c", CHILD, *argv]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        env["RTK_BENCH_T0"] = repr(time.time())
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=code_dir, stdout=out, stderr=err)
        peak = 0
        while True:
            hwm = _peak_rss_kib(proc.pid)
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, hwm)
            time.sleep(0.01)
        wall = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        err.seek(0)
        errors = err.read().decode(errors="replace")
        out.seek(0)
        output = out.read().decode(errors="replace")
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {code}:\n{output[-2000:]}\n{errors[-3000:]}")
    phases = []
    for line in errors.splitlines():
        if line.startswith("PHASE "):
            name, at, cpu = line[6:].rsplit(" ", 2)
            phases.append((name, float(at), float(cpu)))
    phases.append(("process exited", wall, usage.ru_utime + usage.ru_stime))
    return {"seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime, "max_rss_mib": peak / 1024,
            "tree_max_rss_mib": usage.ru_maxrss / 1024, "phases": phases}


def summary(runs: list[dict]) -> dict:
    names: list[str] = []
    for r in runs:
        for name, _, _ in r["phases"]:
            if name not in names:
                names.append(name)
    phases = []
    for name in names:
        at = [t for r in runs for n, t, _ in r["phases"] if n == name]
        cpu = [c for r in runs for n, _, c in r["phases"] if n == name]
        phases.append({"phase": name, "at_seconds": median(at), "cli_cpu_seconds": median(cpu)})
    return {
        "runs": len(runs),
        "seconds": median([r["seconds"] for r in runs]),
        "all_seconds": [round(r["seconds"], 2) for r in runs],
        "cpu_seconds": median([r["cpu_seconds"] for r in runs]),
        "max_rss_mib": median([r["max_rss_mib"] for r in runs]),
        "tree_max_rss_mib": median([r["tree_max_rss_mib"] for r in runs]),
        "phases": phases,
    }


def print_summary(label: str, s: dict) -> None:
    print(f"\n{label}: median of {s['runs']}: {s['seconds']:.2f} s wall ({', '.join(map(str, s['all_seconds']))}), "
          f"{s['cpu_seconds']:.2f} s CPU (with children), peak RSS {s['max_rss_mib']:.0f} MiB "
          f"(largest child {s['tree_max_rss_mib']:.0f} MiB)")
    print(f"  {'phase':<40} {'at (s)':>7} {'CLI CPU (s)':>12}")
    for p in s["phases"]:
        print(f"  {p['phase']:<40} {p['at_seconds']:>7.2f} {p['cli_cpu_seconds']:>12.2f}")


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=parse_size, default=64 * 1024)
    parser.add_argument("--baseline", type=Path, help="also measure the code in this directory (before / after)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    args = parser.parse_args()

    codes = [("this checkout", REPO)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    jobs = [(c, v) for c in codes for v in args.variants if not (c[0] == "baseline" and v == "private-api")]
    count = args.runs * len(jobs)
    results: dict[str, list[dict]] = {f"{c[0]}: {v}": [] for c, v in jobs}
    load = []
    with tempfile.TemporaryDirectory(prefix="rtk-bench-startup-") as tmp, \
            simulator("--count", str(count), "--size", str(args.size)) as sim:
        tmpdir = Path(tmp)
        env = archiver_env(sim, tmpdir / "prefect")
        if any(code[0] == "baseline" or variant == "private-api" for code, variant in jobs):
            # a warm PREFECT_HOME: Prefect creates (migrates) its database on the first run
            warm = [str(BIN / "rtk-archiver"), "archive", "--dry-run", "--since", "2000-01-01", "--until", "2000-01-02"]
            subprocess.run(warm, env=env, check=True, capture_output=True, timeout=600)
        ids = iter(sim.ids)
        for i in range(args.runs):
            order = jobs if i % 2 == 0 else list(reversed(jobs))  # alternating order
            for (label, code_dir), variant in order:
                archive = tmpdir / "archive"
                argv = ["archive-one", next(ids), "--destination", f"file://{archive}"]
                load.append(load_average())
                r = run_once(env, argv, code_dir, force_api=variant == "private-api")
                results[f"{label}: {variant}"].append(r)
                print(f"run {i + 1} {label}: {variant}: {r['seconds']:.2f} s, {r['cpu_seconds']:.2f} s CPU, "
                      f"peak RSS {r['max_rss_mib']:.0f} MiB", flush=True)
    summaries = {k: summary(v) for k, v in results.items()}
    for k, s in summaries.items():
        print_summary(k, s)
    main_one = summaries["this checkout: archive-one"]["seconds"]
    print(f"\nload average during the runs: {median(load):.1f} on {os.cpu_count()} cores")
    print(f"target: archive-one <= {TARGET_SECONDS:.0f} s wall -> {'meets' if main_one <= TARGET_SECONDS else 'MISSES'} "
          f"({main_one:.2f} s; its CPU time {summaries['this checkout: archive-one']['cpu_seconds']:.2f} s)")
    save("startup", {"size": args.size, "load_average": median(load), "target_seconds": TARGET_SECONDS, "results": summaries})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
