"""The simulator's webhooks: a signed ``recording.statusUpdate`` for every status change, sent
to a configured URL the way RealtimeKit sends them (see rtk_archiver/webhook.py for what is
public about the format), so the receiver can be tested end to end.

The sender has its own RSA key pair (made on first use; ``public_key_pem`` is what the receiver
is configured with) and signs the raw body it sends (compact JSON) with RSA-SHA256, base64 in
``rtk-signature``; every delivery has its own ``rtk-uuid`` and the sender's ``rtk-webhook-id``;
``recording.fileSize`` is a decimal string, as in RealtimeKit's documented example.
Deliveries go out from a background thread in order. As RealtimeKit does, only a ``5xx``
answer or a network error (no answer, a timeout) is retried, ``retries`` times, with the same
body and the same ``rtk-uuid``; any other answer (``2xx``, ``4xx``, ``3xx``) is final.

Faults, set per test: ``drop_next`` (the next N status changes are never delivered: a lost
webhook), ``duplicate`` (every delivery is sent twice, the second with a new ``rtk-uuid``).
``deliveries`` lists what was sent and the answer, ``flush()`` waits until all is sent.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from .state import SimRecording, SimulatorState


@dataclass
class Delivery:
    """One webhook request the simulator made, and what came back."""

    event: dict[str, Any]
    delivery_id: str
    status_code: int | None = None  # None: no answer (connection refused, timeout)
    error: str | None = None
    sent_at: float = field(default_factory=time.time)
    seconds: float | None = None  # until the answer


def _iso(dt: datetime | None) -> str | None:
    return None if dt is None else dt.astimezone(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def status_update_payload(state: "SimulatorState", rec: "SimRecording") -> dict[str, Any]:
    """A ``recording.statusUpdate`` body for ``rec`` as it is now (field names as Dyte documents
    them for this event; RealtimeKit's are not separately published)."""
    view = state.view(rec)
    recording: dict[str, Any] = {
        "id": rec.id,
        "recordingId": rec.id,
        "meetingId": rec.meeting_id,
        "organizationId": state.account_id,
        "status": rec.status,
        "startedTime": _iso(rec.started_time),
        "stoppedTime": _iso(rec.stopped_time),
        "outputFileName": rec.output_file_name,
        "roomUUID": rec.session_id,
    }
    if rec.status == "UPLOADED":
        recording.update(
            fileSize=None if rec.file_size is None else str(rec.file_size),  # a string, as RealtimeKit sends it
            downloadUrl=view.get("download_url"),
            audioDownloadUrl=view.get("audio_download_url"),
            downloadUrlExpiry=view.get("download_url_expiry"),
        )
    return {
        "event": "recording.statusUpdate",
        "recording": recording,
        "meeting": {
            "id": rec.meeting_id,
            "sessionId": rec.session_id,
            "title": rec.meeting_title,
            "status": "LIVE",
            "createdAt": _iso(rec.invoked_time),
            "startedAt": _iso(rec.started_time),
            "endedAt": _iso(rec.stopped_time),
            "organizedBy": {"id": state.account_id, "name": "rtk-simulator"},
        },
    }


def should_retry(status_code: int | None) -> bool:
    """RealtimeKit's rule: retry a network error (no answer) or a ``5xx``; anything else is final."""
    return status_code is None or 500 <= status_code < 600


class WebhookSender:
    def __init__(self, url: str | None = None, *, retries: int = 2, retry_delay: float = 0.5, timeout: float = 10.0) -> None:
        self.url = url
        self.retries = retries
        self.retry_delay = retry_delay
        self.timeout = timeout
        self.webhook_id = str(uuid.uuid4())
        self.drop_next = 0
        self.duplicate = False
        self.deliveries: list[Delivery] = []
        self.dropped: list[dict[str, Any]] = []
        self._key = None
        self._key_lock = threading.Lock()
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._pending = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    # -- keys and signatures -------------------------------------------------------------------
    @property
    def private_key(self):
        with self._key_lock:
            if self._key is None:  # made on first use: most simulators never send a webhook
                from cryptography.hazmat.primitives.asymmetric import rsa

                self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self._key

    @property
    def public_key_pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()

    def sign(self, body: bytes) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        return base64.b64encode(self.private_key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()

    @staticmethod
    def encode(event: dict[str, Any]) -> bytes:
        return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()

    def signed_request(self, event: dict[str, Any], delivery_id: str | None = None) -> tuple[bytes, dict[str, str]]:
        """The body and headers of one delivery (tests use this to forge variations)."""
        body = self.encode(event)
        return body, {
            "content-type": "application/json",
            "rtk-signature": self.sign(body),
            "rtk-uuid": delivery_id or str(uuid.uuid4()),
            "rtk-webhook-id": self.webhook_id,
        }

    # -- sending -------------------------------------------------------------------------------
    def on_status_change(self, state: "SimulatorState", rec: "SimRecording") -> None:
        """Listener for SimulatorState.add_status_listener: queue a statusUpdate for ``rec``."""
        if not self.url:
            return
        event = status_update_payload(state, rec)
        if self.drop_next > 0:
            self.drop_next -= 1
            self.dropped.append(event)
            return
        self.send(event)
        if self.duplicate:
            self.send(event)

    def send(self, event: dict[str, Any]) -> None:
        """Queue one delivery (sent in order from the sender's thread)."""
        with self._cond:
            self._pending += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="rtk-sim-webhooks", daemon=True)
                self._thread.start()
        self._queue.put(event)

    def deliver(self, event: dict[str, Any], delivery_id: str | None = None) -> Delivery:
        """Send one delivery now (no retry) and record it."""
        body, headers = self.signed_request(event, delivery_id)
        record = Delivery(event=event, delivery_id=headers["rtk-uuid"])
        started = time.perf_counter()
        try:
            response = httpx.post(self.url, content=body, headers=headers, timeout=self.timeout)
            record.status_code = response.status_code
        except httpx.HTTPError as exc:
            record.error = type(exc).__name__
        record.seconds = time.perf_counter() - started
        self.deliveries.append(record)
        return record

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                delivery_id = str(uuid.uuid4())  # one delivery: the same rtk-uuid on every retry
                for attempt in range(self.retries + 1):
                    record = self.deliver(event, delivery_id)
                    if not should_retry(record.status_code):
                        break
                    if attempt < self.retries:
                        time.sleep(self.retry_delay * (2**attempt))
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued delivery has been sent (and retried); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=5)
