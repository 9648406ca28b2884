"""``rtk-archiver``: run the archive flows, the simulator, and the demo.

Flows run against Prefect's embedded API unless ``PREFECT_API_URL`` is set.
Exit status: 0 when nothing failed, 1 when any recording failed, 2 for bad settings or
arguments, 130 / 143 when interrupted by SIGINT (Ctrl-C) / SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from rtk_archiver.settings import apply_project_defaults

apply_project_defaults()  # before prefect is imported anywhere

from pydantic import TypeAdapter, ValidationError  # noqa: E402

from rtk_archiver.models import ArchiveReport, OutcomeKind  # noqa: E402
from rtk_archiver.settings import SettingsError, load_settings  # noqa: E402

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _datetime(value: str) -> datetime:
    try:
        return TypeAdapter(datetime).validate_python(value)
    except ValidationError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO 8601 date or date-time (e.g. 2026-11-01 or 2026-11-01T12:00:00Z)"
        ) from None


def _destination(value: str) -> str:
    from storage_backends import parse_destination_url

    try:
        parse_destination_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--destination: {exc}") from None
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rtk-archiver", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("archive", help="archive every recording that stopped in a window")
    p.add_argument("--since", type=_datetime, help="start of the window (default: ARCHIVE_LOOKBACK_DAYS ago)")
    p.add_argument("--until", type=_datetime, help="end of the window (default: now)")
    _common(p)

    p = sub.add_parser("archive-one", help="archive one recording by id")
    p.add_argument("recording_id")
    _common(p)

    p = sub.add_parser("simulator", help="serve a local RealtimeKit Recordings API simulator")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8787)
    p.add_argument("--count", type=int, default=40, help="recordings to generate")
    p.add_argument("--seed", type=int, default=1)

    p = sub.add_parser("serve", help="serve every deployment (poll schedule, manual, backfill) from this process")
    p.add_argument("--limit", type=int, default=None, help="flow runs at once (default: no limit)")

    p = sub.add_parser("deploy", help="register the deployments on a work pool (workers run them)")
    p.add_argument("--pool", default="rtk-archiver", help="process work pool name (created if missing)")

    p = sub.add_parser("demo", help="start the simulator and archive its recordings into a local directory")
    p.add_argument("--dir", type=Path, default=Path("demo-archive"), help="where to archive (default ./demo-archive)")
    p.add_argument("--count", type=int, default=24)
    return parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--destination", type=_destination, help="archive every recording here instead (a URL)")
    p.add_argument("--dry-run", action="store_true", help="report what would be archived, transfer nothing")
    p.add_argument("--report", type=Path, metavar="FILE", help="also write the run's report (every outcome) as JSON to FILE")


def print_report(report: ArchiveReport, stream=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream or sys.stdout, width=160)
    table = Table(title="rtk-archiver summary", show_lines=False)
    for col in ("outcome", "recording", "file", "size", "destination / reason"):
        table.add_column(col, overflow="fold")
    order = list(OutcomeKind)
    for o in sorted(report.outcomes, key=lambda o: (order.index(o.kind), o.recording_id)):
        detail = o.destination if o.kind in (OutcomeKind.ARCHIVED, OutcomeKind.ALREADY_ARCHIVED, OutcomeKind.WOULD_ARCHIVE) else o.reason
        table.add_row(o.kind.value, o.recording_id, o.output_file_name or "", _size(o.bytes_total), detail or "")
    console.print(table)
    counts = ", ".join(f"{n} {k}" for k, n in report.counts().items() if n) or "no recordings"
    console.print(f"{counts}; {_size(report.bytes_transferred)} transferred")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _run_archive(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
        if args.command == "archive":
            from flows.windows import resolve_window  # no prefect import before its API is chosen

            resolve_window(args.since, args.until, settings)
    except (SettingsError, ValueError) as exc:
        print(f"rtk-archiver: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from rtk_archiver import interrupt
    from rtk_archiver.prefect_api import PrefectAPIError, private_prefect_api

    result: object = None
    message: str | None = None
    try:
        with private_prefect_api():
            try:
                result, message = _run_flow(args, settings)
            finally:
                _drain_prefect_workers(timeout=5 if interrupt.requested() else 15)
    except PrefectAPIError as exc:
        if not interrupt.requested():
            print(f"rtk-archiver: {exc}", file=sys.stderr)
            return EXIT_FAILED
    except interrupt.Interrupted:
        pass
    if interrupt.requested():
        return _report_interrupted(args, result)
    if not isinstance(result, ArchiveReport):
        print(f"rtk-archiver: the run failed: {message or result}", file=sys.stderr)
        return EXIT_FAILED
    print_report(result)
    if getattr(args, "report", None):
        args.report.write_text(result.model_dump_json(indent=2))
    return EXIT_FAILED if result.failed else EXIT_OK


def _report_interrupted(args: argparse.Namespace, result: object) -> int:
    """The summary of a run stopped by Ctrl-C / SIGTERM: recordings it did not finish are
    ``interrupted`` (nothing partial was kept; the next run archives them); exit 128 + signal."""
    from rtk_archiver import interrupt

    signum = interrupt.received_signal()
    name = interrupt.signal_name(signum)
    if isinstance(result, ArchiveReport):
        for i, outcome in enumerate(result.outcomes):
            if outcome.kind == OutcomeKind.FAILED and interrupt.is_interrupt_reason(outcome.reason):
                result.outcomes[i] = outcome.model_copy(update={"kind": OutcomeKind.INTERRUPTED})
        print_report(result)
        if getattr(args, "report", None):
            args.report.write_text(result.model_dump_json(indent=2))
        stopped = len(result.of(OutcomeKind.INTERRUPTED))
        print(
            f"INTERRUPTED by {name}: {stopped} recording(s) not archived (nothing partial was kept); "
            "run again to archive them",
            flush=True,
        )
    else:
        print(
            f"rtk-archiver: INTERRUPTED by {name} before the run had a report; nothing partial was kept; "
            "run again to archive the recordings",
            file=sys.stderr,
        )
    return interrupt.exit_code(signum)


def _run_flow(args: argparse.Namespace, settings) -> tuple[object, str | None]:
    """Run the flow the command names (Prefect is imported here, once its API is known)."""
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.archive import archive_one, archive_recordings

    runner = ThreadPoolTaskRunner(max_workers=settings.archive_max_concurrent)
    if args.command == "archive":
        flow = archive_recordings.with_options(task_runner=runner)
        state = flow(since=args.since, until=args.until, destination=args.destination, dry_run=args.dry_run, return_state=True)
    else:
        flow = archive_one.with_options(task_runner=runner)
        state = flow(recording_id=args.recording_id, destination=args.destination, dry_run=args.dry_run, return_state=True)
    return state.result(raise_on_failure=False), state.message


def _drain_prefect_workers(timeout: float = 15) -> None:
    """Send the run's last logs and events while its API server is still up (else Prefect
    retries them at exit against a stopped server, for a minute, and prints an error)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout)
        except Exception:  # noqa: BLE001 - best effort: the report is already complete
            pass


def _run_deployments(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"rtk-archiver: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from prefect import serve

    from deployments import load_flow, specs
    from tasks.limits import ensure_limits

    ensure_limits(settings)
    if args.command == "serve":
        deps = [
            load_flow(s.entrypoint).to_deployment(
                name=s.name, description=s.description, interval=s.interval,
                concurrency_limit=s.concurrency_limit, parameters=s.parameters,
            )
            for s in specs(settings)
        ]
        serve(*deps, limit=args.limit)
        return EXIT_OK
    _ensure_pool(args.pool)
    root = Path(__file__).resolve().parent.parent
    for s in specs(settings):
        load_flow(s.entrypoint).from_source(source=str(root), entrypoint=s.entrypoint).deploy(
            name=s.name, work_pool_name=args.pool, description=s.description, interval=s.interval,
            concurrency_limit=s.concurrency_limit, parameters=s.parameters, print_next_steps=False,
        )
        print(f"deployed {s.full_name} on work pool {args.pool!r}")
    print(f"start workers with: prefect worker start --pool {args.pool}")
    return EXIT_OK


def _ensure_pool(name: str) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            pass


def _run_demo(args: argparse.Namespace) -> int:
    from rtk_archiver.simulator import SimulatorServer

    target = args.dir.resolve()
    target.mkdir(parents=True, exist_ok=True)
    with SimulatorServer(count=args.count, seed=7) as sim:
        os.environ.update(
            {
                "CLOUDFLARE_API_TOKEN": sim.token,
                "CLOUDFLARE_ACCOUNT_ID": sim.account_id,
                "REALTIMEKIT_APP_ID": sim.app_id,
                "CLOUDFLARE_BASE_URL": sim.base_url,
                "ARCHIVE_RETRY_DELAY_SECONDS": "1",
            }
        )
        print(f"Simulator serving {args.count} recordings at {sim.base_url}")
        print(f"Archiving every stopped recording into {target}")
        ns = argparse.Namespace(
            command="archive", since=None, until=None, destination=f"file://{target}", dry_run=False
        )
        code = _run_archive(ns)
    files = sorted(p for p in target.rglob("*") if p.is_file())
    print(f"\n{len(files)} file(s) under {target}")
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("archive", "archive-one", "demo"):
        # Ctrl-C / SIGTERM: transfers stop cleanly, the summary says what was not done, and
        # the exit status is 130 / 143 (see rtk_archiver/interrupt.py); a second one exits at once
        from rtk_archiver.interrupt import watch_signals

        with watch_signals():
            return _run_archive(args) if args.command != "demo" else _run_demo(args)
    if args.command == "simulator":
        from rtk_archiver.simulator import serve

        serve(host=args.host, port=args.port, count=args.count, seed=args.seed)
        return EXIT_OK
    if args.command in ("serve", "deploy"):
        return _run_deployments(args)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
