"""``rtk-archiver``: run the archive flows, the simulator, and the demo.

Flows run against Prefect's embedded API unless ``PREFECT_API_URL`` is set.
Exit status: 0 when nothing failed, 1 when any recording failed, 2 for bad settings or
arguments, 130 / 143 when interrupted by SIGINT (Ctrl-C) / SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
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


def _write_report(path: Path, result) -> bool:
    """Write the --report JSON; one line (no traceback) if it cannot be written after all
    (the disk full, the file removed or made read-only since the start)."""
    try:
        path.write_text(result.model_dump_json(indent=2))
        return True
    except OSError as exc:
        print(f"rtk-archiver: could not write the report to {path}: {exc.strerror or exc}", file=sys.stderr)
        return False


def _report_file(value: str) -> Path:
    """--report FILE: checked before any work (the report is written after the whole run).
    FILE must be a file (new or existing) in an existing directory this process can write to."""
    import errno
    import tempfile

    path = Path(value).expanduser()
    if not value.strip():
        raise argparse.ArgumentTypeError("--report needs a file name")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"--report {value}: is a directory, not a file")
    parent = path.parent
    if not parent.exists():
        raise argparse.ArgumentTypeError(f"--report {value}: directory {parent} does not exist")
    if not parent.is_dir():
        raise argparse.ArgumentTypeError(f"--report {value}: {parent} is not a directory")
    try:
        if path.exists():
            with open(path, "ab"):  # writable? (changes nothing)
                pass
        else:
            with tempfile.TemporaryFile(dir=parent):  # can a file be created there? (leaves nothing)
                pass
    except OSError as exc:
        why = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted", errno.EROFS: "read-only file system"}
        raise argparse.ArgumentTypeError(
            f"--report {value}: cannot write there ({why.get(exc.errno) or exc.strerror or type(exc).__name__})"
        ) from None
    return path


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

    p = sub.add_parser(
        "verify", help="re-verify the archive: every file each sidecar lists is there and intact; re-archive what is not"
    )
    p.add_argument(
        "--destination", action="append", type=_destination, default=[], metavar="URL",
        help="verify this destination (repeatable; default: ARCHIVE_DEFAULT_DESTINATION and every storage_config "
        "destination of the recordings in the lookback window)",
    )
    p.add_argument("--deep", action="store_true", help="re-read and re-hash (sha256) files on storage that reports no hashes (file, sftp)")
    p.add_argument("--no-repair", action="store_true", help="only report; do not archive damaged recordings again")
    p.add_argument("--report", type=_report_file, metavar="FILE", help="also write the verification report as JSON to FILE")

    p = sub.add_parser("check", help="check every destination a run would use: write, stat, read back, delete a probe")
    p.add_argument("--since", type=_datetime, help="storage_configs of recordings from here (default: ARCHIVE_LOOKBACK_DAYS ago)")
    p.add_argument("--until", type=_datetime, help="... up to here (default: now)")
    p.add_argument("--destination", type=_destination, help="check this destination (a URL) instead of the recordings' own")
    p.add_argument("--skip-recordings", action="store_true", help="only the default destination and --destination")

    p = sub.add_parser(
        "simulator", help="serve a local RealtimeKit Recordings API simulator, or change a running one",
        description="With no command: serve a local RealtimeKit Recordings API simulator. With a command: "
        "change a running simulator (add, stop, enlarge, list).",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8787)
    p.add_argument("--count", type=int, default=40, help="recordings to generate")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--archivable", action="store_true",
                   help="generate only recordings that can be archived here: UPLOADED in the last 3 days, on "
                   "RealtimeKit's bucket, no storage_config (they go to ARCHIVE_DEFAULT_DESTINATION); default: "
                   "every status and storage kind, expired and stored-nowhere ones included (a run fails on them)")
    p.add_argument("--webhook-url", help="send signed recording.statusUpdate webhooks here (e.g. http://127.0.0.1:8788/webhook)")
    p.add_argument("--webhook-key-out", metavar="FILE", help="write the webhooks' PEM public key to FILE")

    def sim_value(parse):  # rtk_archiver.simulator.control's parsers, imported when used
        def convert(value: str):
            from rtk_archiver.simulator import control

            try:
                return getattr(control, parse)(value)
            except ValueError as exc:
                raise argparse.ArgumentTypeError(str(exc)) from None
        convert.__name__ = parse
        return convert

    at = argparse.ArgumentParser(add_help=False)
    at.add_argument("--url", type=sim_value("parse_url"), default="http://127.0.0.1:8787",
                    help="the running simulator (default http://127.0.0.1:8787)")
    ctl = p.add_subparsers(dest="sim_command", metavar="COMMAND", title="commands to a running simulator")
    c = ctl.add_parser("add", parents=[at], help="add a recording (finished now, on RealtimeKit's bucket, no storage_config)")
    c.add_argument("--size", type=sim_value("parse_size"), default=200_000,
                   help="video size: bytes, or with a unit: 500MB, 2GiB, 1.5GB (default 200000); served lazily")
    c.add_argument("--audio", action="store_true", help="with a separate audio file (an eighth of --size)")
    c.add_argument("--audio-size", type=sim_value("parse_size"), help="with an audio file of this size")
    c.add_argument("--status", default="UPLOADED", choices=("UPLOADED", "RECORDING", "PAUSED", "INVOKED", "ERRORED"),
                   help="UPLOADED (default), or still going (RECORDING, PAUSED, INVOKED: stop it with `stop`), or ERRORED")
    c.add_argument("--title", help="the meeting's title")
    c = ctl.add_parser("stop", parents=[at], help="stop an active recording (RealtimeKit's stop call); UPLOADED a second later")
    c.add_argument("recording_id")
    c.add_argument("--wait", action="store_true", help="return once it is UPLOADED")
    c.add_argument("--wait-seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    c = ctl.add_parser("enlarge", parents=[at], help="make a recording's video larger (served lazily)")
    c.add_argument("recording_id")
    c.add_argument("--size", type=sim_value("parse_size"), required=True, help="its new size: bytes, or 500MB, 2GiB, ...")
    ctl.add_parser("list", parents=[at], help="every recording: id, status, real size")

    p = sub.add_parser("webhook", help="receive RealtimeKit's signed webhooks and start archiving on UPLOADED")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8788)
    p.add_argument("--path", default="/webhook", help="URL path of the endpoint (default /webhook)")

    p = sub.add_parser("serve", help="serve every deployment (poll schedule, manual, backfill) from this process, "
                       "until SIGTERM or Ctrl-C (runs in progress are cancelled; exit status 0)")
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
    p.add_argument("--report", type=_report_file, metavar="FILE", help="also write the run's report (every outcome) as JSON to FILE")


def print_report(report: ArchiveReport, stream=None) -> None:
    """The run's summary table. Every cell is plain text (never rich markup: a '[/b]' in a
    file name neither styles nor crashes it), with control and bidi characters from the API
    escaped (an ESC sequence, '\\r' or U+202E cannot rewrite the terminal)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from rtk_archiver.display import printable

    console = Console(file=stream or sys.stdout, width=160)
    table = Table(title="rtk-archiver summary", show_lines=False)
    for col in ("outcome", "recording", "file", "size", "destination / reason"):
        table.add_column(col, overflow="fold")
    order = list(OutcomeKind)
    for o in sorted(report.outcomes, key=lambda o: (order.index(o.kind), o.recording_id)):
        detail = o.destination if o.kind in (OutcomeKind.ARCHIVED, OutcomeKind.ALREADY_ARCHIVED, OutcomeKind.WOULD_ARCHIVE, OutcomeKind.DELIVERED) else o.reason
        if o.upload in ("missing", "damaged") and o.kind != OutcomeKind.SKIPPED:
            detail = f"{detail or ''} (RealtimeKit's upload {o.upload}: {o.upload_note or ''})"
        elif o.kind == OutcomeKind.DELIVERED and o.upload_note:
            detail = f"{detail or ''} ({o.upload_note})"
        cells = (o.kind.value, o.recording_id, o.output_file_name or "", _size(o.bytes_total), detail or "")
        table.add_row(*(Text(printable(c)) for c in cells))
    console.print(table)
    counts = ", ".join(f"{n} {k}" for k, n in report.counts().items() if n) or "no recordings"
    console.print(Text(f"{counts}; {_size(report.bytes_transferred)} transferred"))
    for label, risks in (("AT RISK", report.at_risk), ("LOST", report.lost)):
        for r in risks:
            deadline = f" (files expire {r.deadline:%Y-%m-%d %H:%M} UTC)" if r.deadline else ""
            console.print(Text(printable(f"{label}: {r.recording_id} {r.output_file_name or ''}{deadline}: {r.reason}")))


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

    result: object = None
    message: str | None = None
    if args.command == "archive-one" and _runs_without_prefect_api(args, settings):
        try:
            result, message = _run_flow_directly(args, settings)
        except interrupt.Interrupted:
            pass
        return _finish_archive(args, result, message)

    from rtk_archiver.prefect_api import PrefectAPIError, private_prefect_api

    try:
        # Prefect and the flows are imported while the private API server starts
        with private_prefect_api(while_starting=_import_flows):
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
    return _finish_archive(args, result, message)


def _finish_archive(args: argparse.Namespace, result: object, message: str | None) -> int:
    """The summary table, the --report file and the exit status of an archive run."""
    from rtk_archiver import interrupt

    if interrupt.requested():
        return _report_interrupted(args, result)
    if not isinstance(result, ArchiveReport):
        print(f"rtk-archiver: the run failed: {message or result}", file=sys.stderr)
        return EXIT_FAILED
    print_report(result)
    if getattr(args, "report", None) and not _write_report(args.report, result):
        return EXIT_FAILED
    return EXIT_FAILED if result.run_failure_message() else EXIT_OK


def _import_flows() -> None:
    import flows.archive  # noqa: F401 - Prefect and the flows (~2 s of CPU)


def _runs_without_prefect_api(args: argparse.Namespace, settings) -> bool:
    """Whether ``archive-one`` runs its flow's body here, without Prefect's engine and API
    (``flows.direct``), instead of starting a private Prefect API server for one recording
    (~6 s of CPU, most of the run's time: see BENCHMARKS.md, "CLI start-up").

    Only when no Prefect server is configured (``PREFECT_API_URL``: the run belongs there,
    with its limits, history and events), and the run cannot need a credentials Block:
    ``ARCHIVE_CREDENTIAL_BLOCKS=false``, or the recording goes to a local directory. Blocks
    live in Prefect's database, which only its API reads; a recording going to S3, GCS,
    Azure or SFTP with blocks enabled still runs on the private API, as before."""
    if os.environ.get("PREFECT_API_URL"):
        return False
    if "prefect" in sys.modules:  # a caller (a test harness) may have chosen an API in-process
        from prefect.settings import get_current_settings

        if get_current_settings().api.url:
            return False
    if not settings.archive_credential_blocks:
        return True
    return _needs_no_credentials(args, settings)


def _needs_no_credentials(args: argparse.Namespace, settings) -> bool:
    """True when every destination the recording can go to is a local directory. Without
    ``--destination`` the recording's storage_config decides: it is fetched once (no retry;
    when that fails the run takes the usual path, which retries)."""
    from rtk_archiver.plan import targets_for
    from storage_backends import parse_destination_url
    from storage_backends.registry import REGISTRY

    def local(url: str | None) -> bool:
        return url is None or REGISTRY[parse_destination_url(url).kind].addressing == "path"

    if args.destination:
        return local(args.destination)
    from rtk_archiver.api import RealtimeKitAPI

    try:
        with RealtimeKitAPI(settings.model_copy(update={"api_max_retries": 0})) as api:
            recording = api.get_recording(args.recording_id)
    except Exception:  # noqa: BLE001 - the usual path reports it (with retries)
        return False
    targets = targets_for([recording], None, settings.archive_default_destination)
    return all(t.destination is None or REGISTRY[t.destination.kind].addressing == "path" for t in targets)


def _run_flow_directly(args: argparse.Namespace, settings) -> tuple[object, str | None]:
    """``archive-one``'s flow body without Prefect's engine (``flows.direct``): the same
    plan, tasks, outcomes and report; a failed run's report comes with its state's message."""
    from types import SimpleNamespace

    from flows import direct
    from flows.archiving import RecordingsFailed, archive_one_body  # not flows.archive: no Prefect (~80 MiB)

    result, message = direct.run(
        SimpleNamespace(name="archive-one", fn=archive_one_body), settings.archive_max_concurrent,
        recording_id=args.recording_id, destination=args.destination, dry_run=args.dry_run,
    )
    if isinstance(result, RecordingsFailed):
        return result.report, message
    return result, message


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
            _write_report(args.report, result)
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
    from flows.archive import archive_one, archive_recordings, report_of

    # recordings at once and retries come from the settings inside the flows (flows/runtime.py)
    if args.command == "archive":
        state = archive_recordings(
            since=args.since, until=args.until, destination=args.destination, dry_run=args.dry_run, return_state=True
        )
    else:
        state = archive_one(recording_id=args.recording_id, destination=args.destination, dry_run=args.dry_run, return_state=True)
    report = report_of(state)  # a run with failed recordings is Failed, and still has its report
    return (report if report is not None else state.result(raise_on_failure=False)), state.message


def _run_check(args: argparse.Namespace) -> int:
    """The preflight (tasks/check.py): a table, exit 1 when any destination fails. Ctrl-C or
    SIGTERM at any moment: one line, exit 130 / 143 (the probe is removed on the way out)."""
    try:
        with _signals_as_interrupt():
            return _check(args)
    except _StopRequested as stop:
        # tasks/check.py removed its probe (and the directories made for it) on the way out
        print(f"rtk-archiver: check INTERRUPTED by {stop.name}; the probe it wrote (if any) was removed", file=sys.stderr)
        return stop.code


def _check(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
        from flows.windows import resolve_window

        resolve_window(args.since, args.until, settings)
    except (SettingsError, ValueError) as exc:
        print(f"rtk-archiver: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from rtk_archiver.prefect_api import PrefectAPIError, private_prefect_api

    try:
        with private_prefect_api():  # credentials blocks are read from Prefect's API
            from tasks.check import run_check

            report = run_check(settings, args.since, args.until, args.destination, not args.skip_recordings)
    except PrefectAPIError as exc:
        print(f"rtk-archiver: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print_check(report)
    return EXIT_FAILED if report.failed else EXIT_OK


class _StopRequested(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a command that stops where it is (``check``): raised in the
    main thread so that ``finally`` blocks clean up on the way out."""

    def __init__(self, signum: int) -> None:
        from rtk_archiver.interrupt import exit_code, signal_name

        super().__init__(signum)
        self.name, self.code = signal_name(signum), exit_code(signum)


@contextlib.contextmanager
def _signals_as_interrupt():
    import signal

    def stop(signum, frame):
        raise _StopRequested(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def print_check(report, stream=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream or sys.stdout, width=200)
    table = Table(title="rtk-archiver check", show_lines=True)
    for col in ("status", "destination", "used by", "works", "checksums", "options", "reason / fix"):
        table.add_column(col, overflow="fold")
    for c in report.checks:
        detail = "" if c.status == "ok" else (c.reason or "") + (f"\nfix: {c.fix}" if c.fix else "")
        options = ", ".join(f"{k}={v}" for k, v in sorted(c.options.items()))
        table.add_row(c.status, c.destination, c.source, ", ".join(c.works), ", ".join(c.checksums), options, detail)
    console.print(table)
    failed = len(report.failed)
    console.print(f"{len(report.checks) - failed} of {len(report.checks)} destination(s) passed" if report.checks else "no destination to check")


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


def _run_verify(args: argparse.Namespace) -> int:
    """``rtk-archiver verify``: the verify-archive flow, on a private Prefect API unless
    ``PREFECT_API_URL`` is set. Exit 1 when anything is missing or corrupt (or a destination
    could not be verified)."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"rtk-archiver: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from rtk_archiver.prefect_api import PrefectAPIError, private_prefect_api

    try:
        with private_prefect_api():
            try:
                from prefect.task_runners import ThreadPoolTaskRunner

                from flows.verify import verify_archive

                flow = verify_archive.with_options(task_runner=ThreadPoolTaskRunner(max_workers=settings.archive_max_concurrent))
                state = flow(destinations=args.destination or None, deep=args.deep, repair=not args.no_repair, return_state=True)
                result, message = state.result(raise_on_failure=False), state.message
            finally:
                _drain_prefect_workers()
    except PrefectAPIError as exc:
        print(f"rtk-archiver: {exc}", file=sys.stderr)
        return EXIT_FAILED
    from flows.verify import VerifyReport

    if not isinstance(result, VerifyReport):
        print(f"rtk-archiver: the run failed: {message or result}", file=sys.stderr)
        return EXIT_FAILED
    print_verify_report(result)
    if args.report and not _write_report(args.report, result):
        return EXIT_FAILED
    return EXIT_FAILED if result.failure_message() else EXIT_OK


def print_verify_report(report, stream=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream or sys.stdout, width=160)
    table = Table(title="rtk-archiver verify", show_lines=False)
    for col in ("destination", "sidecars", "files", "problems", "error"):
        table.add_column(col, overflow="fold")
    for d in report.destinations:
        table.add_row(d.destination, str(d.sidecars), str(d.files), str(len(d.problems)), d.error or "")
    console.print(table)
    if report.problems:
        repairs = {(r.destination, r.recording_id): r.detail for r in report.repairs}
        damaged = Table(title="missing or corrupt", show_lines=False)
        for col in ("recording", "file", "problem", "repair"):
            damaged.add_column(col, overflow="fold")
        for d in report.destinations:
            for p in d.problems:
                damaged.add_row(p.recording_id or "?", p.file or p.sidecar, p.detail, repairs.get((d.destination, p.recording_id or "?"), "not attempted"))
        console.print(damaged)
    for note in report.notes:
        console.print(f"not verified: {note}")
    foreign = sum(d.foreign for d in report.destinations)
    if foreign:
        console.print(f"left alone: {foreign} file(s) named *.metadata.json that the archiver did not write")
    console.print(report.failure_message() or "nothing missing or corrupt")


def _run_deployments(args: argparse.Namespace) -> int:
    """``serve`` and ``deploy``: from any directory (the flows are found as installed modules,
    or in the project's directory for ``deploy``, never relative to the current directory)."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"rtk-archiver: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from prefect import Flow
    from prefect.types.entrypoint import EntrypointType

    from deployments import PROJECT_ROOT, apply_crashed_runs_automation, job_variables, load_flow, specs
    from tasks.limits import ensure_limits

    if args.command == "serve":
        from rtk_archiver.serving import ServeError, prefect_api, serve

        try:
            with prefect_api():  # PREFECT_API_URL, or a Prefect server with its scheduler started here
                ensure_limits(settings)
                _apply_automation(settings, apply_crashed_runs_automation)
                deps = [
                    load_flow(s.entrypoint).to_deployment(
                        name=s.name, description=s.description, interval=s.interval,
                        concurrency_limit=s.concurrency_limit, parameters=s.parameters, triggers=s.triggers or None,
                        entrypoint_type=EntrypointType.MODULE_PATH,  # flows.poll.poll_recordings: no path
                    )
                    for s in specs(settings)
                ]
                return serve(deps, limit=args.limit, heartbeat_seconds=settings.archive_heartbeat_seconds)
        except ServeError as exc:
            print(f"rtk-archiver: {exc}", file=sys.stderr)
            return EXIT_FAILED
    ensure_limits(settings)
    _ensure_pool(args.pool)
    _apply_automation(settings, apply_crashed_runs_automation)
    for s in specs(settings):
        Flow.from_source(source=str(PROJECT_ROOT), entrypoint=s.entrypoint).deploy(
            name=s.name, work_pool_name=args.pool, description=s.description, interval=s.interval,
            concurrency_limit=s.concurrency_limit, parameters=s.parameters, triggers=s.triggers or None,
            job_variables=job_variables(settings),  # the flow-run processes' heartbeats
            print_next_steps=False,
        )
        print(f"deployed {s.full_name} on work pool {args.pool!r}")
    print(f"start workers with: prefect worker start --pool {args.pool}")
    return EXIT_OK


def _apply_automation(settings, apply) -> None:
    """The automation that marks runs whose heartbeats stopped Crashed (deployments/)."""
    outcome = apply(settings)
    print(f"automation rtk-archiver-crash-dead-runs {outcome}: a run without a heartbeat for "
          f"{settings.archive_crashed_after_seconds} s is marked Crashed (heartbeats every "
          f"{settings.archive_heartbeat_seconds} s)", flush=True)


def _run_webhook(args: argparse.Namespace) -> int:
    """The webhook receiver: verified RealtimeKit webhooks -> Prefect events -> the manual
    deployment's trigger (needs PREFECT_API_URL: the server that runs the deployments)."""
    from prefect.settings import PREFECT_API_URL

    from rtk_archiver import webhook

    if not args.path.startswith("/"):
        print("rtk-archiver: --path must start with /", file=sys.stderr)
        return EXIT_USAGE
    try:
        app = webhook.create_app(path=args.path)  # settings and key checked before listening
    except SettingsError as exc:
        print(f"rtk-archiver: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not PREFECT_API_URL.value():
        print("rtk-archiver: PREFECT_API_URL is not set: the receiver sends its events to the Prefect server "
              "that runs the deployments (rtk-archiver serve / deploy)", file=sys.stderr)
        return EXIT_USAGE
    print(f"Receiving RealtimeKit webhooks on http://{args.host}:{args.port}{args.path}; "
          f"events go to {webhook.display_url(PREFECT_API_URL.value())}", flush=True)  # never its credentials
    webhook.serve(args.host, args.port, app=app)
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
    """The simulator with the whole platform (track recordings, RealtimeKit's own uploads to
    S3 and R2 storage configs, complete or not, bucket-disabled recordings), a moto S3 server
    standing in for both stores, and one archive run; recordings without a storage_config go
    to ``--dir``."""
    from rtk_archiver.simulator import SimulatorServer
    from rtk_archiver.simulator.delivery import Deliverer
    from rtk_archiver.simulator.state import PLATFORM_STORAGE_KINDS

    target = args.dir.resolve()
    target.mkdir(parents=True, exist_ok=True)
    s3 = _demo_s3(target)
    try:
        buckets = sorted({sc["bucket"] for sc in PLATFORM_STORAGE_KINDS if sc})
        s3.create_buckets(buckets)
        deliverer = Deliverer(s3_endpoint=s3.url, r2_endpoint=s3.url)
        with SimulatorServer(count=args.count, seed=7, platform=True, deliverer=deliverer) as sim:
            os.environ.update(
                {
                    "CLOUDFLARE_API_TOKEN": sim.token,
                    "CLOUDFLARE_ACCOUNT_ID": sim.account_id,
                    "REALTIMEKIT_APP_ID": sim.app_id,
                    "CLOUDFLARE_BASE_URL": sim.base_url,
                    "ARCHIVE_RETRY_DELAY_SECONDS": "1",
                    "ARCHIVE_DEFAULT_DESTINATION": f"file://{target}",
                    "ARCHIVE_S3_ENDPOINT_URL": s3.url,
                    "ARCHIVE_R2_ENDPOINT_URL": s3.url,
                    "AWS_ACCESS_KEY_ID": "demo", "AWS_SECRET_ACCESS_KEY": "demo", "AWS_DEFAULT_REGION": "us-east-1",
                }
            )
            print(f"Simulator serving {args.count} recordings at {sim.base_url}")
            print(f"RealtimeKit uploads recordings with a storage_config to S3 / R2 (moto at {s3.url}) itself; "
                  f"the others go to {target}")
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                report_path = Path(tmp) / "report.json"
                ns = argparse.Namespace(
                    command="archive", since=None, until=None, destination=None, dry_run=False, report=report_path,
                )
                code = _run_archive(ns)
                report = ArchiveReport.model_validate_json(report_path.read_text()) if report_path.exists() else None
        objects = s3.count(buckets)
    finally:
        s3.stop()
    if code == EXIT_FAILED and report is not None and not report.failed:
        # the simulator serves, on purpose, recordings whose files expired days ago or that were
        # stored nowhere: a real run fails on them (someone must be told); the demo shows the
        # watchdog and exits 0
        print("\nThe LOST / AT RISK lines come from the simulator's expired and stored-nowhere recordings, served on "
              "purpose: a real run ends Failed on them so that someone is notified.")
        code = EXIT_OK
    if report is not None:
        ups = {k: sum(1 for o in report.outcomes if o.upload == k) for k in ("delivered", "missing", "damaged")}
        print(f"RealtimeKit's own uploads: {ups['delivered']} proven and kept (no second copy), {ups['missing']} "
              f"missing (archived by the archiver), {ups['damaged']} damaged (kept; the recording archived beside them)")
    files = sorted(p for p in target.rglob("*") if p.is_file())
    print(f"\n{len(files)} file(s) under {target}; {objects} object(s) in the demo's S3 / R2 buckets")
    return code


class _demo_s3:
    """A moto S3 server for the demo (127.0.0.1, a free port), standing in for S3 and R2."""

    def __init__(self, target: Path) -> None:
        import socket

        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log on the demo's screen
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        self.url = f"http://127.0.0.1:{port}"
        import time

        deadline = time.monotonic() + 15
        while True:  # ready when it accepts a connection
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id="demo", aws_secret_access_key="demo")

    def create_buckets(self, names: list[str]) -> None:
        client = self._client()
        for name in names:
            client.create_bucket(Bucket=name)

    def count(self, names: list[str]) -> int:
        client = self._client()
        return sum(client.list_objects_v2(Bucket=n).get("KeyCount", 0) for n in names)

    def stop(self) -> None:
        self.server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    code = _dispatch(argv)
    if argv is None:  # the process's own command line: it exits next
        # the interpreter's teardown walked every object Prefect and pydantic created (0.6-0.8 s
        # of CPU, a quarter of an archive-one run); frozen objects are left to the exit
        import gc

        gc.freeze()
    return code


def _dispatch(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("archive", "archive-one", "demo"):
        # Ctrl-C / SIGTERM: transfers stop cleanly, the summary says what was not done, and
        # the exit status is 130 / 143 (see rtk_archiver/interrupt.py); a second one exits at once
        from rtk_archiver.interrupt import watch_signals

        with watch_signals():
            return _run_archive(args) if args.command != "demo" else _run_demo(args)
    if args.command == "verify":
        return _run_verify(args)
    if args.command == "check":
        return _run_check(args)
    if args.command == "simulator":
        if args.sim_command:  # add / stop / enlarge / list, to a running simulator
            from rtk_archiver.simulator import control

            return control.run(args)
        from rtk_archiver.simulator import serve

        serve(host=args.host, port=args.port, count=args.count, seed=args.seed,
              webhook_url=args.webhook_url, webhook_key_file=args.webhook_key_out, archivable=args.archivable)
        return EXIT_OK
    if args.command == "webhook":
        return _run_webhook(args)
    if args.command in ("serve", "deploy"):
        return _run_deployments(args)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
