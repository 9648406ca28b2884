"""``rtk-archiver simulator add / stop / enlarge / list``: change a running simulator over HTTP.

``add``, ``enlarge`` and ``list`` use the simulator's own controls (``/_sim/...``, app.py: not
part of RealtimeKit's API); ``stop`` makes RealtimeKit's own stop call, ``PUT
.../recordings/{id}`` with ``{"action": "stop"}`` and the simulator's token, as a client of the
real platform would. Each command prints one line per recording (id, status, size) and returns
0, or prints one line to stderr and returns 1 (the simulator does not answer, the recording is
unknown, the change is refused). Sizes cost the simulator nothing: media is generated as it is
read (content.py), so a 2 GiB recording allocates no 2 GiB anywhere.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from rtk_archiver.display import printable

from .state import DEFAULT_ACCOUNT_ID, DEFAULT_APP_ID, DEFAULT_TOKEN, MAX_FILE_SIZE

DEFAULT_URL = "http://127.0.0.1:8787"
EXIT_OK, EXIT_FAILED = 0, 1

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4, "p": 1000**5, "pb": 1000**5, "pi": 1024**5, "pib": 1024**5,
}


class ControlError(Exception):
    """One line for stderr: what went wrong talking to the simulator."""


class Refused(ControlError):
    """The simulator answered, and refused (its message: ``reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the simulator refused: {reason}")
        self.reason = reason


def parse_size(value: str) -> int:
    """``2GiB``, ``500MB``, ``1.5 GiB``, ``65536`` (bytes) -> bytes; ValueError with the reason.
    kB/MB/GB/TB/PB are powers of 1000, KiB/MiB/GiB/TiB/PiB powers of 1024."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", value)
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise ValueError(f"{value!r} is not a size (bytes, or a number with B, kB, MB, GB, TB, KiB, MiB, GiB or TiB)")
    size = round(float(m.group(1)) * _UNITS[unit])
    if not 1 <= size <= MAX_FILE_SIZE:
        raise ValueError(f"{value!r}: a recording has 1 byte to 1 PiB")
    return size


def parse_url(value: str) -> str:
    """The simulator's address: ``http://host:port`` (a CLOUDFLARE_BASE_URL's ``/client/v4`` is
    dropped); ValueError if it is not an http(s) URL."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"{value!r} is not the simulator's URL (e.g. {DEFAULT_URL})")
    path = parts.path.rstrip("/")
    if path.endswith("/client/v4"):
        path = path[: -len("/client/v4")]
    return f"{parts.scheme}://{parts.netloc}{path}"


def human(n: object) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def describe(rec: dict[str, Any]) -> str:
    """``<id>: UPLOADED, 2147483648 bytes (2.0 GiB)[, audio N bytes (...)], <file name>``; what
    the simulator answered is shown escaped (``rtk_archiver.display.printable``)."""
    size, audio = rec.get("file_size"), rec.get("audio_size")
    line = f"{_printable(rec.get('id'))}: {_printable(rec.get('status'))}, {_printable(size)} bytes ({human(size)})"
    if audio:
        line += f", audio {_printable(audio)} bytes ({human(audio)})"
    if rec.get("type") == "TRACK":
        line += ", a track recording"
    if rec.get("storage_config"):
        line += ", with a storage_config"
    if rec.get("expired"):
        line += ", expired"
    return f"{line}, {_printable(rec.get('output_file_name'))}"


def _printable(text: object) -> str:
    """Text from the simulator, one line, control and bidi characters escaped."""
    return printable(text, 300)


class Client:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=timeout, trust_env=False)

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, *, recording_id: str | None = None, **kwargs: Any) -> dict[str, Any]:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            why = _printable(exc) or type(exc).__name__
            raise ControlError(
                f"no simulator answers at {self.url} ({why}); start one with `rtk-archiver simulator --archivable`"
            ) from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or "success" not in body:
            raise ControlError(f"{self.url} answered HTTP {resp.status_code} to {method} {path.split('?')[0]}: "
                               "not an rtk-archiver simulator (or one older than these commands)")
        if body.get("success") and resp.status_code < 400:
            return body["data"]
        errors = body.get("errors") or [{}]
        error = errors[0] if isinstance(errors, list) and isinstance(errors[0], dict) else {}
        if resp.status_code == 404 and error.get("code") == 7404 and recording_id is not None:
            raise ControlError(f"the simulator at {self.url} has no recording {_printable(recording_id)}")
        raise Refused(_printable(error.get("message") or f"HTTP {resp.status_code}"))

    def summary(self, recording_id: str) -> dict[str, Any]:
        return self.call("GET", f"/_sim/recordings/{quote(recording_id, safe='')}", recording_id=recording_id)


def run(args: Any) -> int:
    """Run ``args.sim_command`` (add, stop, enlarge, list) against ``args.url``."""
    client = Client(args.url)
    try:
        lines = _COMMANDS[args.sim_command](client, args)
    except Refused as exc:  # e.g. "stop <id> refused by the simulator: cannot stop a recording whose status is UPLOADED"
        rid = getattr(args, "recording_id", None)
        what = f"{args.sim_command} {_printable(rid)}" if rid else args.sim_command
        print(f"rtk-archiver: {what} refused by the simulator: {exc.reason}", file=sys.stderr)
        return EXIT_FAILED
    except ControlError as exc:
        print(f"rtk-archiver: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        client.close()
    try:
        for line in lines:
            print(line, flush=True)
    except BrokenPipeError:  # `rtk-archiver simulator list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


def _add(client: Client, args: Any) -> list[str]:
    body: dict[str, Any] = {"file_size": args.size, "status": args.status, "audio": args.audio}
    if args.audio_size is not None:
        body["audio_size"] = args.audio_size
    if args.title:
        body["meeting_title"] = args.title
    rec = client.call("POST", "/_sim/recordings", json=body)
    return [f"added {describe(rec)}"]


def _enlarge(client: Client, args: Any) -> list[str]:
    before = client.summary(args.recording_id)
    rec = client.call("PATCH", f"/_sim/recordings/{quote(args.recording_id, safe='')}",
                      recording_id=args.recording_id, json={"file_size": args.size})
    return [f"enlarged {describe(rec)} (was {before['file_size']} bytes)"]


def _stop(client: Client, args: Any) -> list[str]:
    """RealtimeKit's stop call; the simulator then uploads for a moment (UPLOADING) and the
    recording is UPLOADED. ``--wait``: until it is."""
    rid = args.recording_id
    path = f"/client/v4/accounts/{DEFAULT_ACCOUNT_ID}/realtime/kit/{DEFAULT_APP_ID}/recordings/{quote(rid, safe='')}"
    client.call("PUT", path, recording_id=rid, json={"action": "stop"}, headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"})
    rec = client.summary(rid)
    deadline = time.monotonic() + args.wait_seconds
    while args.wait and rec["status"] == "UPLOADING":
        if time.monotonic() > deadline:
            raise ControlError(f"{_printable(rid)} is still UPLOADING after {args.wait_seconds:g} s")
        time.sleep(0.2)
        rec = client.summary(rid)
    line = f"stopped {describe(rec)}"
    if rec["status"] == "UPLOADING":
        line += f" (UPLOADED in about {rec.get('upload_delay_seconds', 1):g} s)"
    return [line]


def _list(client: Client, args: Any) -> list[str]:
    recs = client.call("GET", "/_sim/recordings")
    return [describe(r) for r in recs] or ["(no recordings)"]


_COMMANDS = {"add": _add, "enlarge": _enlarge, "stop": _stop, "list": _list}
