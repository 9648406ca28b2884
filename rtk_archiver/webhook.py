"""``rtk-archiver webhook``: receive RealtimeKit's signed webhooks and turn a recording that
reached ``UPLOADED`` into the Prefect event ``rtk.recording.uploaded`` (resource
``rtk.recording.<id>``). A deployment trigger (deployments/__init__.py, prefect.yaml) on that
event starts ``archive-manual/manual`` for the recording, so it is archived within seconds
instead of at the next poll.

What is public, and what this follows:

* RealtimeKit (developers.cloudflare.com/realtime/realtimekit/webhooks) sends a JSON ``POST``
  per subscribed event, with the event name in the body's ``event`` field. ``rtk-signature`` is
  the base64 RSA-SHA256 (RSASSA-PKCS1-v1_5) signature of the **raw request body** ("do not
  reserialize parsed JSON"), verified with the platform's public key (published at
  ``/.well-known/webhooks.json``); ``rtk-uuid`` names the delivery (the same for every retry of
  it) and ``rtk-webhook-id`` the subscription. Only the raw bytes are verified: a body whose
  bytes were changed in any way (re-serialized, re-indented) is refused. The older Dyte names
  ``dyte-signature`` / ``dyte-uuid`` are accepted too.
* ``recording.statusUpdate`` carries ``recording.id`` (also ``recording.recordingId``),
  ``recording.status`` (``INVOKED`` ... ``UPLOADED``, ``ERRORED``), ``recording.meetingId``,
  ``recording.outputFileName``, ``recording.fileSize`` (a decimal string, ``"2044680"``; an
  integer is accepted too) and presigned ``downloadUrl`` / ``audioDownloadUrl``. Only the ids,
  the status and the size are used; URLs never leave this process (the archive run fetches
  fresh ones from the API).

Answers: 200 once the event is in Prefect (or the delivery needs nothing: another event, a
status other than ``UPLOADED``, a duplicate); 401 unsigned or badly signed; 413 too large; 400
signed but malformed; 503 when Prefect did not take the event (RealtimeKit then retries). The
bodies are fixed strings: nothing about why a request was refused is sent back.

Duplicates (a retried delivery, or the same status twice) are acknowledged and ignored: the
delivery id and the (recording id, status) pair are remembered for
``RTK_WEBHOOK_DEDUP_SECONDS``, in memory and, for an upload, on the Prefect server: the event
id is derived from the recording id, and before emitting the receiver asks the server whether
it already has that event (``PrefectEmitter.recall``), so a delivery replayed after a restart,
to another replica, or past the server's own 30-minute de-duplication starts nothing. A
delivery that arrives while the same one is still being handed over waits for that outcome.
A duplicate archive run would find the recording already archived anyway, and a lost webhook
is caught by the scheduled poll, which stays the reconciling safety net.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from pydantic import ValidationError, create_model
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from rtk_archiver.settings import Settings, SettingsError

logger = logging.getLogger("rtk_archiver.webhook")

SIGNATURE_HEADERS = ("rtk-signature", "dyte-signature")
DELIVERY_ID_HEADERS = ("rtk-uuid", "dyte-uuid")
STATUS_EVENT = "recording.statusUpdate"
UPLOADED_EVENT = "rtk.recording.uploaded"
REFUSED_EVENT = "rtk.webhook.refused"
REFUSED_RESOURCE = "rtk.webhook.receiver"
ALERT_TIMEOUT_SECONDS = 5.0
RESOURCE_PREFIX = "rtk.recording."
# What flows/manual.py accepts as a recording id (ManualRequest's Identifier): checked here so
# that the event, and the run its trigger starts, only ever carry a valid one. Always
# ``fullmatch``: ``$`` would let "rec\n" through.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
#: ``recording.fileSize``: decimal digits (a string), at most MAX_FILE_SIZE (1 PiB)
SIZE_PATTERN = re.compile(r"[0-9]{1,16}")
MAX_FILE_SIZE = 2**50
EMIT_TIMEOUT_SECONDS = 5.0
MAX_REMEMBERED = 100_000
_EVENT_NAMESPACE = uuid.UUID("6f1d7f64-3c55-4d0e-9a7c-7f1f3c1b2a90")

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey

# ----------------------------------------------------------------------------- settings

_WEBHOOK_FIELDS = (
    "rtk_webhook_public_key",
    "rtk_webhook_public_key_file",
    "rtk_webhook_max_body_bytes",
    "rtk_webhook_dedup_seconds",
    "rtk_webhook_refused_alert_seconds",
    "rtk_webhook_header_timeout_seconds",
    "rtk_webhook_body_timeout_seconds",
    "rtk_webhook_max_pending_connections",
)


class _Base(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", case_sensitive=False)


# Only the receiver's fields of Settings (one definition, in settings.py): the receiver faces
# the internet and needs no RealtimeKit API token, so it must not require one.
WebhookSettings = create_model(  # type: ignore[call-overload]
    "WebhookSettings",
    __base__=_Base,
    **{name: (Settings.model_fields[name].annotation, Settings.model_fields[name]) for name in _WEBHOOK_FIELDS},
)


def load_webhook_settings(**overrides: Any):
    try:
        return WebhookSettings(**overrides)
    except ValidationError as exc:
        problems = [
            f"{str(err['loc'][0]).upper() if err.get('loc') else '?'} {err.get('msg', 'is invalid')}"
            for err in exc.errors(include_input=False, include_url=False)
        ]
        raise SettingsError("Invalid configuration: " + "; ".join(problems)) from None


def load_public_key(settings) -> PublicKey:
    """The verification key from RTK_WEBHOOK_PUBLIC_KEY (PEM text) or RTK_WEBHOOK_PUBLIC_KEY_FILE."""
    pem, source = settings.rtk_webhook_public_key, "RTK_WEBHOOK_PUBLIC_KEY"
    if pem and settings.rtk_webhook_public_key_file:
        raise SettingsError("Set RTK_WEBHOOK_PUBLIC_KEY or RTK_WEBHOOK_PUBLIC_KEY_FILE, not both")
    if not pem:
        path = settings.rtk_webhook_public_key_file
        if path is None:
            raise SettingsError(
                "RTK_WEBHOOK_PUBLIC_KEY (PEM text) or RTK_WEBHOOK_PUBLIC_KEY_FILE is not set: the receiver "
                "verifies every webhook with RealtimeKit's public key"
            )
        source = f"RTK_WEBHOOK_PUBLIC_KEY_FILE ({path})"
        try:
            pem = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{source} cannot be read: {exc.strerror or exc}") from None
    return parse_public_key(pem, source)


def parse_public_key(pem: str, source: str = "the public key") -> PublicKey:
    # the .well-known document and environment variables often carry the PEM with literal \n
    text = pem.strip().replace("\\n", "\n")
    try:
        key = serialization.load_pem_public_key(text.encode())
    except (ValueError, TypeError):
        raise SettingsError(f"{source} is not a PEM public key (-----BEGIN PUBLIC KEY-----)") from None
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        raise SettingsError(f"{source}: unsupported key type {type(key).__name__} (RSA expected)")
    return key


# ----------------------------------------------------------------------------- signatures


def verify_signature(key: PublicKey, data: bytes, signature: bytes) -> bool:
    """RSA-SHA256 (PKCS#1 v1.5), as RealtimeKit/Dyte sign; ECDSA-SHA256 and Ed25519 keys too."""
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        else:
            key.verify(signature, data)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def _decode_signature(value: str) -> bytes | None:
    value = value.strip()
    if not value or len(value) > 2048:
        return None
    padded = value + "=" * (-len(value) % 4)
    try:
        if "-" in value or "_" in value:  # the URL-safe alphabet
            return base64.b64decode(padded, altchars=b"-_", validate=True)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


# ----------------------------------------------------------------------------- the app


@dataclass(frozen=True)
class UploadedRecording:
    """What the receiver passes on: ids and status only (never the presigned URLs)."""

    recording_id: str
    meeting_id: str | None
    file_size: int | None
    delivery_id: str | None


Emit = Callable[[UploadedRecording], Awaitable[None]]
#: whether the recording's upload was already handed over (kept where a restart does not lose
#: it: the Prefect server's stored events)
Recall = Callable[[UploadedRecording], Awaitable[bool]]
#: what is told about refused deliveries (RefusalAlarm's report): the Prefect event
Alert = Callable[[dict[str, Any]], Awaitable[None]]


class RefusalAlarm:
    """Counts deliveries refused as unsigned or badly signed (401). RealtimeKit never retries a
    401, so a wrong or rotated public key makes every delivery a silent, final refusal: the
    first refusal after a quiet ``interval`` is reported at once, later ones at most once per
    ``interval``, with the counts since the last report."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._counts: dict[str, int] = {}
        self._since: float | None = None  # first refusal not reported yet
        self._reported: float | None = None
        self.total = 0

    def record(self, reason: str) -> dict[str, Any] | None:
        """Count one refusal; the report to make now, or None (one was made < interval ago)."""
        now = self._clock()
        self.total += 1
        self._counts[reason] = self._counts.get(reason, 0) + 1
        if self._since is None:
            self._since = now
        if self._reported is not None and now - self._reported < self.interval:
            return None
        report = {
            "refused": sum(self._counts.values()),
            "reasons": dict(sorted(self._counts.items())),
            "seconds": round(now - (self._reported if self._reported is not None else self._since), 3),
            "total": self.total,
        }
        self._counts.clear()
        self._since = None
        self._reported = now
        return report


class Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


_ANSWERS = {
    200: {"ok": True},
    400: {"error": "bad request"},
    401: {"error": "unauthorized"},
    413: {"error": "payload too large"},
    503: {"error": "unavailable, retry later"},
}


def _answer(status: int) -> Response:
    return JSONResponse(_ANSWERS[status], status_code=status)


class SeenCache:
    """Keys seen within ``ttl`` seconds (bounded: the oldest are forgotten first)."""

    def __init__(self, ttl: float, max_size: int = MAX_REMEMBERED, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_size = max_size
        self._clock = clock
        self._seen: OrderedDict[tuple, float] = OrderedDict()

    def _expire(self) -> None:
        now = self._clock()
        while self._seen:
            key, at = next(iter(self._seen.items()))
            if now - at < self.ttl:
                break
            self._seen.popitem(last=False)

    def claim(self, *keys: tuple) -> bool:
        """True (and remember every key) unless one of them was seen within the TTL."""
        self._expire()
        if any(k in self._seen for k in keys):
            return False
        now = self._clock()
        for k in keys:
            self._seen[k] = now
        while len(self._seen) > self.max_size:
            self._seen.popitem(last=False)
        return True

    def contains(self, *keys: tuple) -> bool:
        """Whether one of ``keys`` was seen within the TTL."""
        self._expire()
        return any(k in self._seen for k in keys)

    def add(self, *keys: tuple) -> None:
        now = self._clock()
        for k in keys:
            self._seen.pop(k, None)
            self._seen[k] = now
        while len(self._seen) > self.max_size:
            self._seen.popitem(last=False)

    def release(self, *keys: tuple) -> None:
        for k in keys:
            self._seen.pop(k, None)

    def __len__(self) -> int:
        return len(self._seen)


class WebhookReceiver:
    """The ASGI app (``receiver.app``) and its state: key, limits, what it has seen."""

    def __init__(self, public_key: PublicKey, emit: Emit, *, max_body_bytes: int = 256 * 1024,
                 dedup_seconds: float = 24 * 3600.0, path: str = "/webhook",
                 emit_timeout: float = EMIT_TIMEOUT_SECONDS, alert: Alert | None = None,
                 refused_alert_seconds: float = 300.0, recall: Recall | None = None) -> None:
        self.public_key = public_key
        self.emit = emit
        self.recall = recall
        self.alert = alert
        self.alarm = RefusalAlarm(refused_alert_seconds)
        self.max_body_bytes = max_body_bytes
        self.emit_timeout = emit_timeout
        self.seen = SeenCache(dedup_seconds)
        self._in_flight: dict[tuple, asyncio.Future[int]] = {}  # key -> the outcome of its delivery
        self.counts: dict[str, int] = {}
        self.app = Starlette(
            routes=[
                Route(path, self.handle, methods=["POST"]),
                Route("/healthz", lambda request: PlainTextResponse("ok"), methods=["GET"]),
            ]
        )

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    async def handle(self, request: Request) -> Response:
        try:
            status = await self._handle(request)
        except ClientDisconnect:
            # the sender hung up before its whole body arrived (or was cut off for being too
            # slow): nothing to answer, nothing done; a real sender retries a network error
            logger.info("webhook sender disconnected before its whole body arrived: nothing done")
            self._count("disconnected")
            return Response(status_code=400)  # never sent: the connection is gone
        except Refused as exc:
            # the reason goes to the log only; the sender learns nothing but the status
            logger.warning("webhook refused (%d): %s", exc.status, exc.reason)
            self._count(f"refused-{exc.status}")
            if exc.status == 401:
                report = self.alarm.record(exc.reason)
                if report is not None:
                    await self._alert(report)
            return _answer(exc.status)
        return _answer(status)

    async def _alert(self, report: dict[str, Any]) -> None:
        reasons = ", ".join(f"{n} {why}" for why, n in report["reasons"].items())
        logger.error(
            "%d webhook deliveries refused as unsigned or badly signed (401) in the last %.0f s (%s; %d since "
            "start). RealtimeKit never retries a 401: if these are RealtimeKit's deliveries, they are lost until "
            "the scheduled poll; check RTK_WEBHOOK_PUBLIC_KEY against .well-known/webhooks.json (a rotated key?) "
            "and that no proxy changes the body. At most one such line per %.0f s (RTK_WEBHOOK_REFUSED_ALERT_SECONDS).",
            report["refused"], report["seconds"], reasons, report["total"], self.alarm.interval,
        )
        if self.alert is None:
            return
        try:
            await asyncio.wait_for(self.alert(report), timeout=ALERT_TIMEOUT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - the alert is best effort; the answer is 401 either way
            logger.warning("could not send the %s event to Prefect (%s)", REFUSED_EVENT, type(exc).__name__)

    async def _read_body(self, request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise Refused(400, "bad Content-Length")
            if int(declared) > self.max_body_bytes:
                raise Refused(413, f"body of {int(declared)} bytes over the {self.max_body_bytes}-byte limit")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.max_body_bytes:
                raise Refused(413, f"body over the {self.max_body_bytes}-byte limit")
        return bytes(body)

    def _verify(self, request: Request, body: bytes) -> Any:
        """The parsed body, once its signature verifies (else Refused 401)."""
        header = next((request.headers[h] for h in SIGNATURE_HEADERS if h in request.headers), None)
        if header is None:
            raise Refused(401, "no rtk-signature header")
        signature = _decode_signature(header)
        if signature is None:
            raise Refused(401, "signature header is not base64")
        if not verify_signature(self.public_key, body, signature):  # the raw bytes, nothing else
            raise Refused(401, "signature does not verify")
        try:
            return json.loads(body, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise Refused(400, "signed body is not JSON") from None

    async def _handle(self, request: Request) -> int:
        body = await self._read_body(request)
        doc = self._verify(request, body)
        if not isinstance(doc, dict) or not isinstance(doc.get("event"), str):
            raise Refused(400, "body is not an object with an 'event' string")
        delivery = next((request.headers[h] for h in DELIVERY_ID_HEADERS if h in request.headers), None)
        delivery = delivery.strip()[:128] if delivery else None
        keys: list[tuple] = [("delivery", delivery)] if delivery else []

        if doc["event"] != STATUS_EVENT:
            if keys and not self.seen.claim(*keys):
                self._count("duplicate")
            else:
                self._count(f"ignored-{doc['event'][:64]}")
            return 200
        recording_id, status, meeting_id, file_size = _recording_fields(doc)
        keys.append(("status", recording_id, status))
        pending = next((self._in_flight[k] for k in keys if k in self._in_flight), None)
        if pending is not None:
            return await self._outcome_of(pending, recording_id, status)
        if self.seen.contains(*keys):
            self._count("duplicate")
            logger.info("duplicate delivery for recording %s (%s): acknowledged, nothing done", recording_id, status)
            return 200
        if status != "UPLOADED":
            self.seen.add(*keys)
            self._count(f"status-{status}")
            return 200
        # in flight until Prefect has the event (or did not take it): a retry arriving meanwhile
        # waits for this outcome and answers the same (never 200 for what is not done yet)
        outcome: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        for k in keys:
            self._in_flight[k] = outcome
        answer = 503
        try:
            answer = await self._hand_over(UploadedRecording(recording_id, meeting_id, file_size, delivery), keys)
        finally:
            for k in keys:
                if self._in_flight.get(k) is outcome:
                    del self._in_flight[k]
            outcome.set_result(answer)
        return answer

    async def _outcome_of(self, pending: "asyncio.Future[int]", recording_id: str, status: str) -> int:
        """The answer of the delivery already in flight for the same delivery id or recording
        status (503 if it is not over in time: RealtimeKit retries a 5xx)."""
        try:
            answer = await asyncio.wait_for(asyncio.shield(pending), timeout=self.emit_timeout + 1)
        except asyncio.TimeoutError:
            answer = 503
        self._count("duplicate-in-flight")
        logger.info("delivery for recording %s (%s) arrived while the same one was in flight: answered %d, "
                    "as that one", recording_id, status, answer)
        return answer

    async def _recall_or_emit(self, event: UploadedRecording) -> bool:
        """False if the upload was handed over already (by this receiver before a restart, or
        by another one): a replayed or late delivery starts nothing; else emit, True."""
        if self.recall is not None and await self.recall(event):
            return False
        await self.emit(event)
        return True

    async def _hand_over(self, event: UploadedRecording, keys: list[tuple]) -> int:
        try:
            emitted = await asyncio.wait_for(self._recall_or_emit(event), timeout=self.emit_timeout)
        except Exception as exc:  # noqa: BLE001 - Prefect unreachable, timeout, refused: let RealtimeKit retry
            self._count("emit-failed")
            logger.error("could not hand recording %s to Prefect (%s): answered 503 for a retry",
                         event.recording_id, type(exc).__name__)
            return 503
        self.seen.add(*keys)
        if not emitted:
            self._count("duplicate")
            logger.info("duplicate delivery for recording %s (UPLOADED): the Prefect server has its event "
                        "already; acknowledged, nothing done", event.recording_id)
            return 200
        self._count("emitted")
        logger.info("recording %s uploaded: event %s emitted", event.recording_id, UPLOADED_EVENT)
        return 200


def _recording_fields(doc: dict) -> tuple[str, str, str | None, int | None]:
    rec = doc.get("recording")
    if not isinstance(rec, dict):
        raise Refused(400, "recording.statusUpdate without a 'recording' object")
    rid = rec.get("id") if rec.get("id") is not None else rec.get("recordingId")
    if not isinstance(rid, str) or not ID_PATTERN.fullmatch(rid):
        raise Refused(400, "recording id missing or not an id")
    status = rec.get("status")
    if not isinstance(status, str) or not re.fullmatch(r"[A-Z_]{1,32}", status):
        raise Refused(400, "recording status missing or malformed")
    meeting = rec.get("meetingId")
    if meeting is None and isinstance(doc.get("meeting"), dict):
        meeting = doc["meeting"].get("id")
    meeting = meeting if isinstance(meeting, str) and ID_PATTERN.fullmatch(meeting) else None
    return rid, status, meeting, _file_size(rec.get("fileSize"))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # json.loads would take NaN / Infinity


def _file_size(value: Any) -> int | None:
    """``recording.fileSize``: a decimal string as RealtimeKit sends it (``"2044680"``), or an
    integer; absent / null is None. Anything else (negative, fractional, non-finite, over
    MAX_FILE_SIZE, not a number) is refused (400)."""
    if value is None:
        return None
    if isinstance(value, str) and SIZE_PATTERN.fullmatch(value):
        size = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        size = int(value)
    else:
        raise Refused(400, "recording fileSize is not a size in bytes")
    if not 0 <= size <= MAX_FILE_SIZE:
        raise Refused(400, "recording fileSize is not a size in bytes")
    return size


# ----------------------------------------------------------------------------- Prefect


def display_url(url: str) -> str:
    """``url`` safe to print: no ``user:password@`` and no query values (an API key or token
    in ``?token=...``), e.g. for PREFECT_API_URL on the receiver's first line."""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparsable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{port}" if port is not None else host
    query = urlencode([(k, "<redacted>") for k, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="<>")
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))



def event_id(recording_id: str) -> uuid.UUID:
    """The same id for every event about one recording's upload: the Prefect server drops an
    event id it has seen in the last 30 minutes, whichever receiver sent it."""
    return uuid.uuid5(_EVENT_NAMESPACE, f"{UPLOADED_EVENT}:{recording_id}")


def build_event(rec: UploadedRecording):
    from prefect.events import Event

    related = []
    if rec.meeting_id:
        related.append({"prefect.resource.id": f"rtk.meeting.{rec.meeting_id}", "prefect.resource.role": "meeting"})
    payload = {"recording_id": rec.recording_id, "status": "UPLOADED", "source": "webhook"}
    if rec.meeting_id:
        payload["meeting_id"] = rec.meeting_id
    if rec.file_size is not None:
        payload["file_size"] = rec.file_size
    return Event(
        id=event_id(rec.recording_id),
        event=UPLOADED_EVENT,
        resource={"prefect.resource.id": f"{RESOURCE_PREFIX}{rec.recording_id}", "prefect.resource.name": rec.recording_id},
        related=related,
        payload=payload,
    )


def build_refused_event(report: dict[str, Any]):
    """``rtk.webhook.refused``: deliveries refused as unsigned or badly signed since the last one
    (counts by reason; never a body, a header or a signature)."""
    from prefect.events import Event

    return Event(
        event=REFUSED_EVENT,
        resource={"prefect.resource.id": REFUSED_RESOURCE, "prefect.resource.name": "rtk-archiver webhook receiver"},
        payload=report,
    )


class PrefectEmitter:
    """Sends the event to the Prefect API (``POST /events``, what ``emit_event``'s worker does
    over a websocket) and waits for the server to take it, so the webhook is acknowledged only
    once the event is in Prefect; a failure becomes a 503 and RealtimeKit's retry."""

    def __init__(self, lookback_seconds: float = 24 * 3600.0) -> None:
        self._client = None
        self.lookback_seconds = lookback_seconds

    async def start(self) -> None:
        from prefect.client.orchestration import get_client

        self._client = get_client()
        await self._client.__aenter__()

    async def stop(self) -> None:
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None

    async def __call__(self, rec: UploadedRecording) -> None:
        await self._send(build_event(rec))

    async def recall(self, rec: UploadedRecording) -> bool:
        """Whether the server has the recording's upload event (its id is derived from the
        recording id) from the last ``lookback_seconds``: the receiver's memory that survives a
        restart and is shared by replicas (bounded by the server's event retention,
        PREFECT_EVENTS_RETENTION_PERIOD, 7 days by default)."""
        from datetime import datetime, timedelta, timezone

        from prefect.events.filters import EventFilter, EventIDFilter, EventNameFilter, EventOccurredFilter

        if self._client is None:
            await self.start()
        now = datetime.now(timezone.utc)
        page = await self._client.read_events(filter=EventFilter(
            occurred=EventOccurredFilter(since=now - timedelta(seconds=self.lookback_seconds), until=now + timedelta(minutes=5)),
            event=EventNameFilter(name=[UPLOADED_EVENT]),
            id=EventIDFilter(id=[event_id(rec.recording_id)]),
        ), limit=1)
        return bool(page.events)

    async def alert(self, report: dict[str, Any]) -> None:
        """The ``rtk.webhook.refused`` event, through the same ``POST /events``."""
        await self._send(build_refused_event(report))

    async def _send(self, event) -> None:
        if self._client is None:
            await self.start()
        response = await self._client.request("POST", "/events", json=[event.model_dump(mode="json")])
        response.raise_for_status()


def create_app(settings=None, *, emit: Emit | None = None, alert: Alert | None = None,
               path: str = "/webhook") -> Starlette:
    """The receiver for ``uvicorn`` (reads the RTK_WEBHOOK_* settings; raises SettingsError)."""
    settings = settings or load_webhook_settings()
    key = load_public_key(settings)
    emitter = emit or PrefectEmitter(lookback_seconds=settings.rtk_webhook_dedup_seconds)
    receiver = WebhookReceiver(key, emitter, max_body_bytes=settings.rtk_webhook_max_body_bytes,
                               dedup_seconds=settings.rtk_webhook_dedup_seconds, path=path,
                               alert=alert or getattr(emitter, "alert", None),
                               refused_alert_seconds=settings.rtk_webhook_refused_alert_seconds,
                               recall=getattr(emitter, "recall", None))
    if isinstance(emitter, PrefectEmitter):
        @asynccontextmanager
        async def lifespan(app):
            await emitter.start()
            try:
                yield
            finally:
                await emitter.stop()

        receiver.app.router.lifespan_context = lifespan
    receiver.app.state.receiver = receiver
    receiver.app.state.guard = ConnectionGuard(settings.rtk_webhook_header_timeout_seconds,
                                               settings.rtk_webhook_body_timeout_seconds,
                                               settings.rtk_webhook_max_pending_connections)
    return receiver.app


# ----------------------------------------------------------------------------- the server


class ConnectionGuard:
    """What a client that has not finished sending its request may hold, so that slow or idle
    clients (a few hundred connections dripping header lines) cannot starve real deliveries:

    * ``header_timeout``: the request's headers must all arrive within this long of the
      connection being opened (or of the previous response, on a kept-alive connection);
    * ``body_timeout``: its body must all arrive within this long of the headers;
    * ``max_pending``: at most this many connections still sending a request at once; one more
      closes the oldest of them (a real delivery sends its request in milliseconds).

    A connection past its time is closed without an answer (a real sender retries a network
    error). ``uvicorn`` has neither bound (only its limit on all connections, past which every
    new request, a real delivery too, gets 503): :meth:`protocol` is uvicorn's h11 protocol
    that reports to this guard; it reads h11's own ``their_state`` of the connection (IDLE:
    waiting for headers, SEND_BODY: reading the body, anything else: the request is in)."""

    def __init__(self, header_timeout: float = 10.0, body_timeout: float = 30.0, max_pending: int = 64) -> None:
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_pending = max_pending
        self._pending: OrderedDict[Any, tuple[str, asyncio.TimerHandle]] = OrderedDict()
        self.counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def update(self, conn: Any, phase: str | None) -> None:
        """``conn`` is waiting for its ``"headers"``, its ``"body"``, or (None) has sent its request."""
        current = self._pending.get(conn)
        if current is not None and current[0] == phase:
            return
        if phase is None:
            self.forget(conn)
            return
        if current is not None:
            current[1].cancel()
        timeout = self.header_timeout if phase == "headers" else self.body_timeout
        timer = conn.loop.call_later(timeout, self._close, conn, f"{phase}-timeout")
        new = current is None
        self._pending[conn] = (phase, timer)  # keeps its place: unfinished since it came
        if new:
            while len(self._pending) > self.max_pending:
                oldest = next(iter(self._pending))
                self._close(oldest, "evicted")

    def forget(self, conn: Any) -> None:
        entry = self._pending.pop(conn, None)
        if entry is not None:
            entry[1].cancel()

    def _close(self, conn: Any, why: str) -> None:
        self.forget(conn)
        self.counts[why] = self.counts.get(why, 0) + 1
        logger.debug("closed a webhook connection that had not sent its request (%s)", why)
        conn.transport.close()

    def protocol(self) -> type:
        """uvicorn's h11 protocol, reporting each connection's progress to this guard."""
        import h11
        from uvicorn.protocols.http.h11_impl import H11Protocol

        guard = self

        class GuardedH11Protocol(H11Protocol):
            def connection_made(self, transport) -> None:  # type: ignore[override]
                super().connection_made(transport)
                self._guard()

            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                self._guard()

            def on_response_complete(self) -> None:
                super().on_response_complete()
                self._guard()

            def connection_lost(self, exc: Exception | None) -> None:
                guard.forget(self)
                super().connection_lost(exc)

            def _guard(self) -> None:
                if self.transport.is_closing():
                    guard.forget(self)
                    return
                state = self.conn.their_state
                guard.update(self, "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None)

        return GuardedH11Protocol


def uvicorn_config(app: Starlette, host: str, port: int, **overrides: Any):
    """The ``uvicorn.Config`` the receiver runs with: the ConnectionGuard of ``app`` (create_app's
    settings; defaults otherwise) as its HTTP protocol."""
    import uvicorn

    guard = getattr(app.state, "guard", None)
    if guard is None:
        guard = ConnectionGuard()
    options: dict[str, Any] = dict(
        host=host, port=port, log_level="info", server_header=False, proxy_headers=False,
        timeout_keep_alive=5, limit_concurrency=guard.max_pending + 256, http=guard.protocol(),
        h11_max_incomplete_event_size=16 * 1024,
    )
    options.update(overrides)
    return uvicorn.Config(app, **options)


def serve(host: str, port: int, path: str = "/webhook", app: Starlette | None = None) -> None:
    """``rtk-archiver webhook``: run the receiver on uvicorn until interrupted."""
    import uvicorn

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    app = app or create_app(path=path)
    uvicorn.Server(uvicorn_config(app, host, port)).run()
