"""Webhooks: the receiver (`rtk-archiver webhook`) verifies RealtimeKit's signature, refuses what
it must with the right status and no detail, answers fast, and ignores duplicates; the
simulator sends signed webhooks; end to end on a real `prefect server` + `rtk-archiver serve`:
webhook -> event -> trigger -> manual run -> archived, a lost webhook caught by the poll, a
duplicate delivery archived once."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import uuid
import warnings
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
import uvicorn
import yaml

with warnings.catch_warnings():  # "install httpx2": the TestClient works with httpx as it is
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from rtk_archiver.settings import SettingsError
from rtk_archiver.simulator import SimulatorServer
from rtk_archiver.simulator.webhooks import WebhookSender
from rtk_archiver.webhook import (
    REFUSED_EVENT,
    ConnectionGuard,
    RefusalAlarm,
    SeenCache,
    UPLOADED_EVENT,
    UploadedRecording,
    WebhookReceiver,
    build_event,
    event_id,
    load_public_key,
    load_webhook_settings,
    parse_public_key,
    uvicorn_config,
)
from tests.fixtures import free_port
from tests.fixtures import wait_until

ROOT = Path(__file__).resolve().parent.parent
RID = "7f3c0a9e-1b2c-4d5e-8f90-123456789abc"


def status_update(rid: str = RID, status: str = "UPLOADED", **extra) -> dict:
    return {
        "event": "recording.statusUpdate",
        "recording": {
            "id": rid, "recordingId": rid, "status": status, "meetingId": "meet-1", "fileSize": "1234",
            "outputFileName": "x.mp4",
            "downloadUrl": "https://bucket.example/x.mp4?X-Signature=SECRETSIG",
            **extra,
        },
        "meeting": {"id": "meet-1", "title": "Weekly"},
    }


class FakeEmit:
    """Stands in for the Prefect API: records what would be emitted; can fail on demand."""

    def __init__(self) -> None:
        self.events: list[UploadedRecording] = []
        self.fail_next = 0

    async def __call__(self, rec: UploadedRecording) -> None:
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("prefect is down")
        self.events.append(rec)


@pytest.fixture(scope="module")
def sender():
    return WebhookSender()  # a key pair, as the simulator's


@pytest.fixture(scope="module")
def other_key():
    return WebhookSender()  # somebody else's key


@pytest.fixture
def hook(sender):
    emit = FakeEmit()
    receiver = WebhookReceiver(parse_public_key(sender.public_key_pem), emit, max_body_bytes=8 * 1024)
    with TestClient(receiver.app) as client:
        yield client, receiver, emit


def post(client, body: bytes, headers: dict) -> httpx.Response:
    return client.post("/webhook", content=body, headers=headers)


# ----------------------------------------------------------------------------- the receiver


def test_signed_uploaded_webhook_is_accepted_and_emitted_without_urls(hook, sender):
    client, receiver, emit = hook
    body, headers = sender.signed_request(status_update())
    started = time.perf_counter()
    r = post(client, body, headers)
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert time.perf_counter() - started < 1.0
    assert [e.recording_id for e in emit.events] == [RID]
    assert emit.events[0].meeting_id == "meet-1" and emit.events[0].file_size == 1234

    event = build_event(emit.events[0])
    assert event.event == UPLOADED_EVENT and event.resource.id == f"rtk.recording.{RID}"
    assert event.id == event_id(RID) == build_event(UploadedRecording(RID, None, None, "other")).id
    dumped = event.model_dump_json()
    assert "SECRETSIG" not in dumped and "http" not in dumped  # presigned URLs never leave the receiver


def test_dyte_signature_header_is_accepted_over_the_raw_body(hook, sender):
    client, _, emit = hook
    body, headers = sender.signed_request(status_update())
    headers = {"dyte-signature": headers["rtk-signature"], "dyte-uuid": str(uuid.uuid4())}
    assert post(client, body, headers).status_code == 200
    assert len(emit.events) == 1


def test_only_the_raw_body_is_verified_never_a_reserialization(hook, sender):
    """RealtimeKit signs the raw bytes ("do not reserialize parsed JSON"): a signature over the
    compact serialization does not make another serialization of the same object acceptable
    (the receiver used to re-serialize compactly and verify that too)."""
    client, receiver, emit = hook
    event = status_update()
    _, headers = sender.signed_request(event)  # signed over the compact form
    for other in (json.dumps(event, indent=2).encode(), json.dumps(event).encode(),
                  json.dumps(event, separators=(",", ":"), ensure_ascii=True).encode() + b" "):
        assert post(client, other, headers).status_code == 401
    assert emit.events == []
    import rtk_archiver.webhook as wh

    assert not hasattr(wh, "compact_json")


@pytest.mark.parametrize("size, expected", [("2044680", 2044680), (2044680, 2044680), ("0", 0), (None, None)])
def test_file_size_is_read_as_realtimekit_sends_it(hook, sender, size, expected):
    client, _, emit = hook
    body, headers = sender.signed_request(status_update(fileSize=size))
    assert post(client, body, headers).status_code == 200
    assert [e.file_size for e in emit.events] == [expected]


@pytest.mark.parametrize("raw", [b"1e999", b"-1e999", b"NaN", b"Infinity", b"-Infinity", b'"Infinity"', b'"NaN"',
                                 b"-1", b'"-1"', b"12.5", b'"12.5"', b'"1e3"', b'" 12"', b'"12\n"', b"true",
                                 b"99999999999999999999999999", b'"99999999999999999999999999"',
                                 b"1" * 4000, b'"' + b"1" * 4000 + b'"', b'"abc"', b"[]", b"{}"])
def test_absurd_file_sizes_are_a_clean_400(hook, sender, raw, caplog):
    """fileSize 1e999 / NaN used to raise OverflowError / ValueError in the handler (a 500 and
    a traceback); now every value that is not a size in bytes is a 400, nothing emitted."""
    client, receiver, emit = hook
    body = sender.encode(status_update(fileSize="__SIZE__")).replace(b'"__SIZE__"', raw)
    r = post(client, body, {**sender.signed_request(status_update())[1], "rtk-signature": sender.sign(body)})
    assert r.status_code == 400 and r.json() == {"error": "bad request"}
    assert emit.events == [] and len(receiver.seen) == 0
    assert not any(rec.exc_info for rec in caplog.records)


def _refusal_cases(sender, other_key):
    good_body, good = sender.signed_request(status_update())
    tampered = good_body.replace(RID.encode(), b"0000aaaa-1b2c-4d5e-8f90-123456789abc")
    unsigned = {k: v for k, v in good.items() if k != "rtk-signature"}
    _, foreign = other_key.signed_request(status_update())
    big = json.dumps({**status_update(), "pad": "x" * 9000}).encode()

    def signed(raw: bytes) -> tuple[bytes, dict]:
        return raw, {**good, "rtk-signature": sender.sign(raw)}

    return {
        "missing signature": (401, good_body, unsigned),
        "empty signature": (401, good_body, {**good, "rtk-signature": ""}),
        "not base64": (401, good_body, {**good, "rtk-signature": "%%%not-base64%%%"}),
        "wrong key": (401, good_body, {**good, "rtk-signature": foreign["rtk-signature"]}),
        "tampered body": (401, tampered, good),
        "oversized (Content-Length)": (413, big, {**good, "rtk-signature": sender.sign(big)}),
        "malformed JSON, signed": (400, *signed(b'{"event": "recording.statusUpdate", "recording": {')),
        "not an object, signed": (400, *signed(b'["recording.statusUpdate"]')),
        "no recording object": (400, *signed(b'{"event":"recording.statusUpdate"}')),
        "no recording id": (400, *signed(sender.encode(status_update(rid=None) | {"recording": {"status": "UPLOADED"}}))),
        "id that is not an id": (400, *signed(sender.encode(status_update(rid="../../etc/passwd")))),
        "malformed status": (400, *signed(sender.encode(status_update(status="uploaded; drop")))),
    }


@pytest.mark.parametrize("case", [
    "missing signature", "empty signature", "not base64", "wrong key", "tampered body", "oversized (Content-Length)",
    "malformed JSON, signed", "not an object, signed", "no recording object", "no recording id",
    "id that is not an id", "malformed status",
])
def test_refusals_have_the_right_status_and_no_detail(hook, sender, other_key, case, caplog):
    client, receiver, emit = hook
    status, body, headers = _refusal_cases(sender, other_key)[case]
    r = post(client, body, headers)
    assert r.status_code == status
    assert r.json() == {400: {"error": "bad request"}, 401: {"error": "unauthorized"},
                        413: {"error": "payload too large"}}[status]
    assert emit.events == [] and len(receiver.seen) == 0  # nothing done, nothing remembered
    assert any("webhook refused" in m for m in caplog.messages)  # the reason is logged, not sent


def test_oversized_body_without_content_length_is_refused_while_streaming(hook, sender):
    client, receiver, emit = hook
    big = json.dumps({**status_update(), "pad": "x" * 20000}).encode()
    _, headers = sender.signed_request(status_update())

    def chunks():
        for i in range(0, len(big), 1000):
            yield big[i : i + 1000]

    r = client.post("/webhook", content=chunks(), headers={**headers, "rtk-signature": sender.sign(big)})
    assert r.status_code == 413 and emit.events == []


@pytest.mark.parametrize("rid", ["rec\n", "rec\r\n", "\nrec", "rec\n\n", "rec \n"])
def test_an_id_with_a_newline_is_refused(hook, sender, rid):
    """``^...$`` with ``re.match`` took "rec\\n" (``$`` matches before a trailing newline): ids
    are full-matched now."""
    client, receiver, emit = hook
    body, headers = sender.signed_request(status_update(rid=rid))
    assert post(client, body, headers).status_code == 400 and emit.events == []
    body, headers = sender.signed_request(status_update(meetingId="meet-1\n") | {"meeting": {"id": "meet-1\n"}})
    assert post(client, body, headers).status_code == 200
    assert [e.meeting_id for e in emit.events] == [None]  # an invalid meeting id is dropped, never passed on


def _schema_refuses(deployment_flow, parameters) -> str | None:
    """What the Prefect server does with a new run's parameters: the deployment's schema,
    validated by Prefect's own validate (jsonschema); the error's message, or None."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import ValidationError, validate

    schema = parameter_schema(deployment_flow.fn).model_dump_for_openapi()
    try:
        validate(parameters, schema, raise_on_error=True, ignore_required=True)
    except ValidationError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("bad", ["rec\n", "rec\r\n", "rec\n\n"])
def test_parameter_id_and_datetime_patterns_full_match(bad):
    """The deployments' JSON-schema patterns used ``$``: jsonschema (Python ``re.search``)
    took "rec\\n" as a recording id and "2026-01-31\\n" as a date. They end in ``(?![\\s\\S])``
    now, which means the end of the string in Python and in JavaScript alike."""
    from flows.archive import archive_recordings
    from flows.manual import ManualRequest, archive_manual

    assert _schema_refuses(archive_manual, {"request": {"recording_ids": ["rec-1"]}}) is None
    assert "an id of 1 to 64" in _schema_refuses(archive_manual, {"request": {"recording_ids": [bad]}})
    assert "an id of 1 to 64" in _schema_refuses(archive_manual, {"request": {"meeting_id": bad}})
    with pytest.raises(ValueError, match="an id of 1 to 64"):
        ManualRequest(recording_ids=[bad])  # a direct call: the same rules in Python
    date = "2026-01-31" + bad[3:]
    assert _schema_refuses(archive_recordings, {"since": "2026-01-31"}) is None
    assert "an ISO 8601 date" in _schema_refuses(archive_recordings, {"since": date})


def test_parameter_patterns_mean_the_same_in_javascript():
    """The same patterns as ECMAScript regular expressions (what a JS JSON-schema validator,
    such as the UI's, compiles them to, with the ``u`` flag): same answers as Python."""
    import re
    import shutil
    import subprocess

    from flows.parameters import DATETIME_PATTERN, DESTINATION_URL_PATTERN, ID_PATTERN

    node = shutil.which("node")
    if node is None:
        pytest.skip("no node")
    cases = [(ID_PATTERN, v) for v in ("rec-1", "rec\n", "rec\r\n", "a" * 64, "a" * 65, "-x", "")]
    cases += [(DATETIME_PATTERN, v) for v in ("2026-01-31", "2026-01-31T12:00:00Z", "2026-01-31\n", "2026-01-31 x")]
    cases += [(DESTINATION_URL_PATTERN, v) for v in ("file:///tmp/x", "s3://bucket/p", "s3://bucket/../x", "ftp://x")]
    script = ("const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
              "console.log(JSON.stringify(cases.map(([p, v]) => new RegExp(p, 'u').test(v))));")
    out = subprocess.run([node, "-e", script], input=json.dumps(cases), capture_output=True, text=True, timeout=30, check=True)
    in_js = json.loads(out.stdout)
    in_python = [re.search(p, v) is not None for p, v in cases]
    assert in_js == in_python
    assert in_python[:3] == [True, False, False]


def test_replayed_and_duplicate_deliveries_are_acknowledged_and_ignored(hook, sender):
    client, receiver, emit = hook
    body, headers = sender.signed_request(status_update())
    assert post(client, body, headers).status_code == 200
    assert post(client, body, headers).status_code == 200  # the same delivery replayed
    _, retry = sender.signed_request(status_update())  # the same status, a new delivery id
    assert post(client, body, retry).status_code == 200
    assert [e.recording_id for e in emit.events] == [RID]
    assert receiver.counts["duplicate"] == 2

    other = "aaaabbbb-1b2c-4d5e-8f90-123456789abc"
    body2, headers2 = sender.signed_request(status_update(rid=other))
    assert post(client, body2, headers2).status_code == 200
    assert [e.recording_id for e in emit.events] == [RID, other]


def test_other_statuses_and_events_are_acknowledged_without_an_event(hook, sender):
    client, receiver, emit = hook
    for event in (status_update(status="RECORDING"), status_update(status="UPLOADING"),
                  status_update(status="ERRORED"), {"event": "meeting.started", "meeting": {"id": "m"}}):
        body, headers = sender.signed_request(event)
        assert post(client, body, headers).status_code == 200
    assert emit.events == []
    # UPLOADING was seen, UPLOADED still goes through
    body, headers = sender.signed_request(status_update())
    assert post(client, body, headers).status_code == 200 and len(emit.events) == 1


def test_prefect_unavailable_answers_503_and_the_retry_is_not_a_duplicate(hook, sender):
    client, receiver, emit = hook
    emit.fail_next = 1
    body, headers = sender.signed_request(status_update())
    r = post(client, body, headers)
    assert r.status_code == 503 and r.json() == {"error": "unavailable, retry later"}
    assert post(client, body, headers).status_code == 200  # RealtimeKit's retry
    assert [e.recording_id for e in emit.events] == [RID]


class GatedEmit(FakeEmit):
    """Holds each hand-over until the test opens the gate; then fails or takes it."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.fail = False
        self.calls = 0

    async def __call__(self, rec: UploadedRecording) -> None:
        self.calls += 1
        self.entered.set()
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        if self.fail:
            self.fail = False
            raise ConnectionError("prefect said no")
        self.events.append(rec)


def _post_in_thread(url: str, body: bytes, headers: dict, answers: dict, name: str) -> threading.Thread:
    def run():
        r = httpx.post(url, content=body, headers=headers, timeout=30)
        answers[name] = (r.status_code, time.monotonic())

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.mark.parametrize("original_fails", [True, False], ids=["original fails", "original succeeds"])
@pytest.mark.parametrize("same_delivery_id", [True, False], ids=["retry (same rtk-uuid)", "same status, new rtk-uuid"])
def test_a_duplicate_of_a_delivery_in_flight_gets_its_outcome_never_an_early_200(sender, original_fails, same_delivery_id):
    """A retry that arrived while the first attempt was still handing the event to Prefect was
    answered 200 at once; the first then failed (503) and the retry, acknowledged, was never
    sent again: the event was lost. Now the duplicate waits and answers what the first did."""
    emit = GatedEmit()
    receiver = WebhookReceiver(parse_public_key(sender.public_key_pem), emit)
    body, headers = sender.signed_request(status_update())
    dup_body, dup_headers = (body, headers) if same_delivery_id else sender.signed_request(status_update())
    answers: dict = {}
    with ReceiverThread(receiver.app) as rx:
        first = _post_in_thread(rx.url, body, headers, answers, "first")
        assert emit.entered.wait(10)
        second = _post_in_thread(rx.url, dup_body, dup_headers, answers, "second")
        time.sleep(0.5)
        assert answers == {}  # neither is answered while the event is not in Prefect
        emit.fail = original_fails
        opened = time.monotonic()
        emit.gate.set()
        first.join(10), second.join(10)
        expected = 503 if original_fails else 200
        assert answers["first"][0] == answers["second"][0] == expected
        assert answers["second"][1] >= opened
        assert emit.calls == 1  # the duplicate did not hand it over a second time
        # RealtimeKit's retry after the 503: now it goes through; after the 200: a duplicate
        assert httpx.post(rx.url, content=body, headers=headers, timeout=10).status_code == 200
    assert [e.recording_id for e in emit.events] == [RID]
    assert emit.calls == (2 if original_fails else 1)
    assert receiver.counts["duplicate-in-flight"] == 1


def test_a_duplicate_waits_no_longer_than_the_hand_over_may_take(sender):
    async def hang(rec):
        await asyncio.sleep(30)

    receiver = WebhookReceiver(parse_public_key(sender.public_key_pem), hang, emit_timeout=0.5)
    body, headers = sender.signed_request(status_update())
    answers: dict = {}
    with ReceiverThread(receiver.app) as rx:
        started = time.monotonic()
        threads = [_post_in_thread(rx.url, body, headers, answers, n) for n in ("a", "b", "c")]
        for t in threads:
            t.join(10)
    assert {a[0] for a in answers.values()} == {503} and len(answers) == 3
    assert max(a[1] for a in answers.values()) - started < 5


def test_slow_prefect_times_out_into_a_503(sender):
    async def hang(rec):
        await asyncio.sleep(30)

    receiver = WebhookReceiver(parse_public_key(sender.public_key_pem), hang, emit_timeout=0.3)
    with TestClient(receiver.app) as client:
        body, headers = sender.signed_request(status_update())
        started = time.perf_counter()
        assert post(client, body, headers).status_code == 503
        assert time.perf_counter() - started < 5


def test_refusal_alarm_reports_at_once_then_at_most_once_per_interval():
    now = [0.0]
    alarm = RefusalAlarm(300, clock=lambda: now[0])
    assert alarm.record("signature does not verify") == {
        "refused": 1, "reasons": {"signature does not verify": 1}, "seconds": 0.0, "total": 1}
    for t in range(1, 6):
        now[0] = t
        assert alarm.record("signature does not verify" if t % 2 else "no rtk-signature header") is None
    now[0] = 301
    assert alarm.record("signature does not verify") == {
        "refused": 6, "reasons": {"no rtk-signature header": 2, "signature does not verify": 4}, "seconds": 301.0,
        "total": 7}
    now[0] = 5000  # a quiet hour, then one refusal: reported at once
    assert alarm.record("signature does not verify")["refused"] == 1


def test_sustained_signature_refusals_are_an_error_line_and_an_alert_rate_limited(sender, other_key, caplog):
    """RealtimeKit never retries a 401: a rotated key used to make every delivery a final,
    silent refusal (a WARNING each). Now there is an ERROR line with the counts and an alert
    (the Prefect event), at most once per RTK_WEBHOOK_REFUSED_ALERT_SECONDS."""
    alerts: list[dict] = []

    async def alert(report):
        alerts.append(report)

    emit = FakeEmit()
    receiver = WebhookReceiver(parse_public_key(sender.public_key_pem), emit, alert=alert, refused_alert_seconds=300)
    signature = None
    with TestClient(receiver.app) as client:
        for _ in range(20):  # a rotated key: every delivery signed by a key the receiver does not know
            body, headers = other_key.signed_request(status_update())
            signature = headers["rtk-signature"]
            assert post(client, body, headers).status_code == 401
        body, headers = sender.signed_request(status_update())
        assert post(client, body, {k: v for k, v in headers.items() if k != "rtk-signature"}).status_code == 401
        assert post(client, body, headers).status_code == 200  # a good one is not counted
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name == "rtk_archiver.webhook"]
    assert len(errors) == 1 and "RTK_WEBHOOK_PUBLIC_KEY" in errors[0].getMessage()
    assert "1 webhook deliveries refused" in errors[0].getMessage()
    assert alerts == [{"refused": 1, "reasons": {"signature does not verify": 1}, "seconds": 0.0, "total": 1}]
    assert receiver.alarm.total == 21
    assert signature[:20] not in caplog.text

    # the next report, once the interval is over, carries the counts since the last one
    receiver.alarm._reported -= 301
    with TestClient(receiver.app) as client:
        body, headers = other_key.signed_request(status_update())
        assert post(client, body, headers).status_code == 401
    assert alerts[-1]["refused"] == 21 and alerts[-1]["reasons"] == {
        "no rtk-signature header": 1, "signature does not verify": 20}


def test_an_alert_that_fails_changes_nothing_in_the_answer(sender, other_key, caplog):
    async def alert(report):
        raise ConnectionError("prefect is down")

    receiver = WebhookReceiver(parse_public_key(sender.public_key_pem), FakeEmit(), alert=alert)
    with TestClient(receiver.app) as client:
        body, headers = other_key.signed_request(status_update())
        assert post(client, body, headers).status_code == 401
    assert any("could not send the rtk.webhook.refused event" in m for m in caplog.messages)
    assert not any(r.exc_info for r in caplog.records)


def test_seen_cache_forgets_after_the_ttl_and_stays_bounded():
    now = [0.0]
    cache = SeenCache(ttl=10, max_size=3, clock=lambda: now[0])
    assert cache.claim(("a",)) and not cache.claim(("a",))
    now[0] = 11
    assert cache.claim(("a",))  # forgotten after the TTL
    for k in "bcde":
        cache.claim((k,))
    assert len(cache) == 3  # bounded: the oldest go first


def test_settings_name_the_variables(tmp_path, sender, monkeypatch):
    for var in ("RTK_WEBHOOK_PUBLIC_KEY", "RTK_WEBHOOK_PUBLIC_KEY_FILE", "CLOUDFLARE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SettingsError, match="RTK_WEBHOOK_PUBLIC_KEY .*RTK_WEBHOOK_PUBLIC_KEY_FILE is not set"):
        load_public_key(load_webhook_settings())  # and no API token is needed
    monkeypatch.setenv("RTK_WEBHOOK_PUBLIC_KEY", "not a key")
    with pytest.raises(SettingsError, match="RTK_WEBHOOK_PUBLIC_KEY is not a PEM public key"):
        load_public_key(load_webhook_settings())
    # a PEM with literal \n, as .well-known/webhooks.json and env files carry it
    monkeypatch.setenv("RTK_WEBHOOK_PUBLIC_KEY", sender.public_key_pem.replace("\n", "\\n"))
    assert load_public_key(load_webhook_settings()).key_size == 2048
    monkeypatch.delenv("RTK_WEBHOOK_PUBLIC_KEY")
    key_file = tmp_path / "rtk.pem"
    key_file.write_text(sender.public_key_pem)
    monkeypatch.setenv("RTK_WEBHOOK_PUBLIC_KEY_FILE", str(key_file))
    assert load_public_key(load_webhook_settings()).key_size == 2048
    monkeypatch.setenv("RTK_WEBHOOK_MAX_BODY_BYTES", "10")
    with pytest.raises(SettingsError, match="RTK_WEBHOOK_MAX_BODY_BYTES"):
        load_webhook_settings()


def test_cli_refuses_to_start_without_key_or_prefect_api(monkeypatch, capsys, sender):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from rtk_archiver.cli import main

    monkeypatch.delenv("RTK_WEBHOOK_PUBLIC_KEY", raising=False)
    monkeypatch.delenv("RTK_WEBHOOK_PUBLIC_KEY_FILE", raising=False)
    assert main(["webhook", "--port", "1"]) == 2
    assert "RTK_WEBHOOK_PUBLIC_KEY (PEM text) or RTK_WEBHOOK_PUBLIC_KEY_FILE is not set" in capsys.readouterr().err
    monkeypatch.setenv("RTK_WEBHOOK_PUBLIC_KEY", sender.public_key_pem)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert main(["webhook", "--port", "1"]) == 2
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err


def test_cli_never_prints_the_prefect_api_credentials(monkeypatch, capsys, sender):
    """The first line named PREFECT_API_URL as it was, user:password and ?token= included."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import rtk_archiver.webhook as wh
    from rtk_archiver.cli import main

    served = []
    monkeypatch.setattr(wh, "serve", lambda host, port, app=None, **kw: served.append((host, port)))
    monkeypatch.setenv("RTK_WEBHOOK_PUBLIC_KEY", sender.public_key_pem)
    url = "https://archiver:S3cretPw@prefect.example.com:4443/api?token=T0ken123&api_key=K3y"
    with temporary_settings({PREFECT_API_URL: url}):
        assert main(["webhook", "--port", "18788"]) == 0
    out = capsys.readouterr()
    assert served == [("127.0.0.1", 18788)]
    assert "https://prefect.example.com:4443/api" in out.out
    for secret in ("S3cretPw", "archiver:", "T0ken123", "K3y"):
        assert secret not in out.out + out.err


def test_trigger_is_declared_the_same_in_serve_and_prefect_yaml():
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers  # what `prefect deploy` does

    from deployments import specs
    from rtk_archiver.settings import Settings

    settings = Settings(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b")
    manual = next(s for s in specs(settings) if s.name == "manual")
    (trigger,) = manual.triggers
    doc = yaml.safe_load((ROOT / "deployments/prefect.yaml").read_text())
    (ytrigger,) = next(d for d in doc["deployments"] if d["name"] == "manual")["triggers"]
    (from_yaml,) = _initialize_deployment_triggers("manual", [ytrigger])
    assert from_yaml.model_dump() == trigger.model_dump()
    assert trigger.expect == {UPLOADED_EVENT} and trigger.match.root == {"prefect.resource.id": "rtk.recording.*"}


def test_trigger_parameters_render_to_a_valid_manual_request():
    """Prefect 3.8.8's own rendering of the trigger's templated parameters (as the server does
    for a triggered RunDeployment) yields a ManualRequest for exactly that recording."""
    import copy

    from prefect.server.events.actions import RunDeployment
    from prefect.utilities.schema_tools.hydration import HydrationContext, hydrate

    from deployments import UPLOADED_TRIGGER_PARAMETERS
    from flows.manual import ManualRequest

    params = copy.deepcopy(UPLOADED_TRIGGER_PARAMETERS)
    RunDeployment._upgrade_v1_templates(params)
    event = build_event(UploadedRecording(RID, "meet-1", 10, None))
    rendered = hydrate(params, HydrationContext(raise_on_error=True, render_jinja=True, jinja_context={"event": event}))
    assert ManualRequest.model_validate(rendered["request"]).recording_ids == [RID]


# ----------------------------------------------------------------------------- with the simulator


class ReceiverThread:
    """The receiver's ASGI app on uvicorn, on 127.0.0.1 and a free port, in a thread."""

    def __init__(self, app) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/webhook"
        # as `rtk-archiver webhook` runs it (webhook.serve): with its ConnectionGuard
        self._server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def __enter__(self) -> "ReceiverThread":
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline and self._thread.is_alive(), "the receiver did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


def test_simulator_sends_signed_webhooks_on_stop_and_upload_lost_and_duplicated():
    emit = FakeEmit()
    with SimulatorServer() as sim:
        sim.state.upload_delay_seconds = 0.2
        receiver = WebhookReceiver(parse_public_key(sim.webhook_public_key_pem), emit)
        with ReceiverThread(receiver.app) as rx:
            sim.webhooks.url = rx.url
            live = sim.state.add_recording(status="RECORDING", stopped_time=None)
            base = f"{sim.base_url}/accounts/{sim.account_id}/realtime/kit/{sim.app_id}/recordings/{live['id']}"
            r = httpx.put(base, json={"action": "stop"}, headers={"Authorization": f"Bearer {sim.token}"})
            assert r.status_code == 200 and r.json()["data"]["status"] == "UPLOADING"
            deadline = time.monotonic() + 10
            while not emit.events and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sim.webhooks.flush(10)
            assert [d.event["recording"]["status"] for d in sim.webhooks.deliveries] == ["UPLOADING", "UPLOADED"]
            assert all(d.status_code == 200 for d in sim.webhooks.deliveries)
            assert [e.recording_id for e in emit.events] == [live["id"]]
            uploaded = sim.webhooks.deliveries[-1].event["recording"]
            assert uploaded["downloadUrl"].startswith(sim.url)
            assert uploaded["fileSize"] == str(sim.state.recordings[live["id"]].file_size)  # a string, as RealtimeKit's

            # duplicated deliveries: acknowledged, one event
            dup = sim.state.add_recording(status="UPLOADING")
            sim.webhooks.duplicate = True
            sim.state.set_status(dup["id"], "UPLOADED")
            assert sim.webhooks.flush(10)
            sim.webhooks.duplicate = False
            assert [e.recording_id for e in emit.events] == [live["id"], dup["id"]]
            assert [d.status_code for d in sim.webhooks.deliveries[-2:]] == [200, 200]

            # a lost delivery: nothing arrives
            lost = sim.state.add_recording(status="UPLOADING")
            sim.webhooks.drop_next = 1
            sim.state.set_status(lost["id"], "UPLOADED")
            assert sim.webhooks.flush(10)
            assert lost["id"] not in [e.recording_id for e in emit.events]
            assert sim.webhooks.dropped[-1]["recording"]["id"] == lost["id"]
    assert receiver.counts == {"status-UPLOADING": 1, "emitted": 2, "duplicate": 1}


class ScriptedReceiver:
    """A webhook endpoint that answers the given statuses in turn (then 200) and records each
    request's rtk-uuid."""

    def __init__(self, statuses: list[int]) -> None:
        from starlette.applications import Starlette
        from starlette.responses import Response
        from starlette.routing import Route

        self.statuses = list(statuses)
        self.uuids: list[str] = []

        async def handle(request):
            await request.body()
            self.uuids.append(request.headers.get("rtk-uuid"))
            return Response(status_code=self.statuses.pop(0) if self.statuses else 200)

        self.app = Starlette(routes=[Route("/webhook", handle, methods=["POST"])])


@pytest.mark.parametrize("answers, attempts", [
    ([503, 502, 200], 3), ([500, 500, 500], 3), ([401], 1), ([400], 1), ([404], 1), ([413], 1), ([429], 1),
    ([500, 401], 2), ([301], 1), ([200], 1),
])
def test_simulator_retries_like_realtimekit_only_5xx_with_the_same_delivery_id(answers, attempts):
    """RealtimeKit retries only a 5xx or a network error, and a retry is the same delivery (the
    same rtk-uuid): the simulator retried any non-2xx answer with a new rtk-uuid."""
    rx = ScriptedReceiver(answers)
    with ReceiverThread(rx.app) as thread:
        sender = WebhookSender(thread.url, retries=2, retry_delay=0.01)
        sender.send(status_update())
        assert sender.flush(20)
    assert len(rx.uuids) == attempts and len(set(rx.uuids)) == 1
    assert [d.delivery_id for d in sender.deliveries] == rx.uuids
    assert [d.status_code for d in sender.deliveries] == (answers + [200] * 3)[:attempts]


def test_simulator_retries_a_network_error_with_the_same_delivery_id():
    sender = WebhookSender(f"http://127.0.0.1:{free_port()}/webhook", retries=2, retry_delay=0.01, timeout=2)
    sender.send(status_update())
    assert sender.flush(20)
    assert len(sender.deliveries) == 3 and all(d.status_code is None and d.error for d in sender.deliveries)
    assert len({d.delivery_id for d in sender.deliveries}) == 1


def test_simulator_sends_file_size_as_a_string():
    from rtk_archiver.simulator.state import SimulatorState
    from rtk_archiver.simulator.webhooks import status_update_payload

    state = SimulatorState()
    rec = state.add_recording(status="UPLOADED", file_size=2044680)
    payload = status_update_payload(state, state.recordings[rec["id"]])
    assert payload["recording"]["fileSize"] == "2044680"


class Captured(logging.Handler):
    """Records of the receiver's and uvicorn's loggers (uvicorn's do not reach caplog)."""

    NAMES = ("rtk_archiver.webhook", "uvicorn", "uvicorn.error", "uvicorn.access")

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> "Captured":
        self._levels = {}
        for name in self.NAMES:
            log = logging.getLogger(name)
            self._levels[name] = log.level
            log.addHandler(self)
            if log.level == logging.NOTSET or log.level > logging.DEBUG:
                log.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc) -> None:
        for name in self.NAMES:
            logging.getLogger(name).removeHandler(self)
            logging.getLogger(name).setLevel(self._levels[name])

    def errors(self) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= logging.ERROR or r.exc_info]

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.records]


def _raw_request(port: int, head: bytes, body: bytes = b"", *, close: bool = True) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head + body)
    if close:
        sock.close()
    return sock


def _head(length: int, headers: dict, path: str = "/webhook") -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {length}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_client_that_disconnects_mid_body_is_a_quiet_line_not_a_traceback(sender):
    """A sender that hung up before its whole body arrived made Starlette raise ClientDisconnect
    out of the handler: uvicorn logged "Exception in ASGI application" and a traceback."""
    emit = FakeEmit()
    receiver = WebhookReceiver(parse_public_key(sender.public_key_pem), emit)
    body, headers = sender.signed_request(status_update())
    with Captured() as logs, ReceiverThread(receiver.app) as rx:
        for cut in (0, 1, len(body) // 2, len(body) - 1):
            _raw_request(rx.port, _head(len(body), headers), body[:cut])
        wait_until(lambda: receiver.counts.get("disconnected", 0) == 4, 10, lambda: logs.messages())
        # the receiver still works
        assert httpx.post(rx.url, content=body, headers=headers, timeout=10).status_code == 200
    assert logs.errors() == []
    assert sum("disconnected" in m for m in logs.messages()) == 4 and [e.recording_id for e in emit.events] == [RID]


def _closed_within(sock: socket.socket, seconds: float, drip: bytes | None = None) -> float | None:
    """Seconds until the server closed ``sock`` (None if still open after ``seconds``), sending
    ``drip`` every 0.2 s meanwhile."""
    started = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - started < seconds:
        try:
            if drip:
                sock.sendall(drip)
            if sock.recv(65536) == b"":
                return time.monotonic() - started
        except socket.timeout:
            continue
        except OSError:  # reset, broken pipe: closed
            return time.monotonic() - started
    return None


def test_slow_clients_cannot_starve_a_real_delivery(sender):
    """300 connections dripping header lines (slowloris) used to hold uvicorn's 256 connection
    slots (no header or body timeout): every real delivery got 503 for as long as they lasted.
    With the defaults (10 s for headers, 30 s for a body, 64 unfinished requests at most) a
    signed delivery in the middle of them is accepted at once."""
    emit = FakeEmit()
    receiver = WebhookReceiver(parse_public_key(sender.public_key_pem), emit)
    guard = receiver.app.state.guard = ConnectionGuard()  # the defaults, as create_app makes it
    assert (guard.header_timeout, guard.body_timeout, guard.max_pending) == (10.0, 30.0, 64)
    body, headers = sender.signed_request(status_update())
    stop = threading.Event()
    socks: list[socket.socket] = []

    def drip():
        while not stop.is_set():
            for sock in list(socks):
                try:
                    sock.send(b"X-Drip: 1\r\n")
                except OSError:
                    pass
            stop.wait(0.3)

    with ReceiverThread(receiver.app) as rx:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", rx.port), timeout=5)
            sock.sendall(b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            socks.append(sock)
        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        try:
            time.sleep(1)
            started = time.monotonic()
            r = httpx.post(rx.url, content=body, headers=headers, timeout=10)
            elapsed = time.monotonic() - started
            assert r.status_code == 200 and elapsed < 3, (r.status_code, elapsed)
            assert [e.recording_id for e in emit.events] == [RID]
            assert len(guard) <= 64 and guard.counts.get("evicted", 0) >= 300 - 64
        finally:
            stop.set()
            dripper.join(5)
            for sock in socks:
                sock.close()


def test_headers_and_bodies_that_take_too_long_are_cut_off(sender):
    emit = FakeEmit()
    receiver = WebhookReceiver(parse_public_key(sender.public_key_pem), emit)
    guard = receiver.app.state.guard = ConnectionGuard(header_timeout=1.0, body_timeout=1.5, max_pending=64)
    body, headers = sender.signed_request(status_update())
    with Captured() as logs, ReceiverThread(receiver.app) as rx:
        silent = socket.create_connection(("127.0.0.1", rx.port), timeout=5)
        t = _closed_within(silent, 5)
        assert t is not None and 0.8 < t < 3, t  # sent nothing: closed after the header timeout

        dripping = _raw_request(rx.port, b"POST /webhook HTTP/1.1\r\nHost: x\r\n", close=False)
        t = _closed_within(dripping, 5, drip=b"X-Drip: 1\r\n")
        assert t is not None and 0.8 < t < 3, t  # a header line every 0.2 s does not keep it open

        slow_body = _raw_request(rx.port, _head(len(body), headers), body[:10], close=False)
        t = _closed_within(slow_body, 6, drip=b" ")
        assert t is not None and 1.2 < t < 4, t  # a byte every 0.2 s: cut off after the body timeout
        wait_until(lambda: receiver.counts.get("disconnected") == 1, 5, lambda: receiver.counts)

        # kept alive after a good request, then dripping the next request's headers: cut off too
        kept = _raw_request(rx.port, _head(len(body), headers), body, close=False)
        kept.settimeout(5)
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        t = _closed_within(kept, 5, drip=b"P")
        assert t is not None and t < 3, t

        assert httpx.post(rx.url, content=body, headers=headers, timeout=10).status_code == 200
    for sock in (silent, dripping, slow_body, kept):
        sock.close()
    assert guard.counts.get("headers-timeout", 0) >= 3 and guard.counts.get("body-timeout") == 1
    assert logs.errors() == [] and len(guard) == 0


def _events_named(server, name: str, since: datetime) -> list[dict]:
    r = server.request("POST", "/events/filter", json={
        "filter": {"event": {"name": [name]}, "occurred": {"since": since.isoformat()}}, "limit": 50})
    r.raise_for_status()
    return r.json()["events"]


def test_refusals_reach_the_prefect_server_as_an_rtk_webhook_refused_event(prefect_server, sender, other_key, monkeypatch):
    """The receiver as `rtk-archiver webhook` builds it (create_app, PrefectEmitter) against a
    real `prefect server`: badly signed deliveries become one rtk.webhook.refused event."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from rtk_archiver.webhook import create_app, load_webhook_settings

    monkeypatch.setenv("RTK_WEBHOOK_PUBLIC_KEY", sender.public_key_pem)
    monkeypatch.delenv("RTK_WEBHOOK_PUBLIC_KEY_FILE", raising=False)
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        app = create_app(load_webhook_settings(rtk_webhook_refused_alert_seconds=600))
        with TestClient(app) as client:
            for _ in range(3):
                body, headers = other_key.signed_request(status_update())
                assert post(client, body, headers).status_code == 401
    events = wait_until(lambda: _events_named(prefect_server, REFUSED_EVENT, since), 30, "the refused event")
    assert len(events) == 1  # rate-limited: one for three refusals
    (event,) = events
    assert event["resource"]["prefect.resource.id"] == "rtk.webhook.receiver"
    assert event["payload"]["refused"] == 1 and event["payload"]["reasons"] == {"signature does not verify": 1}
    assert app.state.receiver.alarm.total == 3


def test_what_the_server_has_is_not_emitted_again_and_a_failed_look_is_a_503(sender):
    handed: set[str] = set()
    broken = [False]

    async def recall(rec):
        if broken[0]:
            raise ConnectionError("prefect is down")
        return rec.recording_id in handed

    emit = FakeEmit()
    receiver = WebhookReceiver(parse_public_key(sender.public_key_pem), emit, recall=recall)
    other = "aaaabbbb-1b2c-4d5e-8f90-123456789abc"
    handed.add(RID)  # handed over before a restart
    with TestClient(receiver.app) as client:
        body, headers = sender.signed_request(status_update())
        assert post(client, body, headers).status_code == 200
        broken[0] = True
        body2, headers2 = sender.signed_request(status_update(rid=other))
        assert post(client, body2, headers2).status_code == 503  # not known either way: RealtimeKit retries
        broken[0] = False
        assert post(client, body2, headers2).status_code == 200
    assert [e.recording_id for e in emit.events] == [other]
    assert receiver.counts["duplicate"] == 1 and receiver.counts["emit-failed"] == 1


def test_a_replayed_delivery_after_a_receiver_restart_starts_nothing(prefect_server, sender, monkeypatch):
    """The delivery ids and recordings seen were only in the receiver's memory: after a restart
    (or past the server's 30-minute event de-duplication) a captured delivery made a new event,
    and the trigger a new run. Now the receiver asks the Prefect server, which keeps the event
    (its id derived from the recording id), before it emits: a replay starts nothing."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from rtk_archiver.webhook import create_app, load_webhook_settings

    monkeypatch.setenv("RTK_WEBHOOK_PUBLIC_KEY", sender.public_key_pem)
    monkeypatch.delenv("RTK_WEBHOOK_PUBLIC_KEY_FILE", raising=False)
    rid = f"replay-{uuid.uuid4().hex[:12]}"
    body, headers = sender.signed_request(status_update(rid=rid))  # the captured delivery
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    with temporary_settings({PREFECT_API_URL: prefect_server.api_url}):
        first = create_app(load_webhook_settings())
        with TestClient(first) as client:
            assert post(client, body, headers).status_code == 200
        assert first.state.receiver.counts == {"emitted": 1}

        def stored():
            return [e for e in _events_named(prefect_server, UPLOADED_EVENT, since)
                    if e["resource"]["prefect.resource.id"] == f"rtk.recording.{rid}"]

        wait_until(stored, 30, "the event to be stored")
        for _ in range(2):  # restarted twice; the replay comes again each time
            restarted = create_app(load_webhook_settings())
            with TestClient(restarted) as client:
                assert post(client, body, headers).status_code == 200
                _, new_id = sender.signed_request(status_update(rid=rid))  # the same status, another delivery id
                assert post(client, body, {**headers, "rtk-uuid": new_id["rtk-uuid"]}).status_code == 200
            assert restarted.state.receiver.counts == {"duplicate": 2}
    assert len(stored()) == 1


# ----------------------------------------------------------------------------- end to end (slow)


def _wait(check, timeout: float, what, interval: float = 0.25):
    return wait_until(check, timeout, what, interval)


def _manual_runs_for(api_url: str, recording_id: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    async def read():
        async with get_client() as client:
            runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["manual"])))
        return [r for r in runs if recording_id in (r.parameters.get("request") or {}).get("recording_ids", [])]

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        return asyncio.run(read())


def _run_poll(api_url: str) -> str:
    """Start a run of the scheduled-poll deployment now and wait for its end state."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        run = run_deployment("poll-recordings/scheduled-poll", parameters={"overlap_minutes": 30}, timeout=90)
    return run.state.type.value


@pytest.mark.slow
def test_end_to_end_webhook_to_archive_on_a_real_server(prefect_server, archiver_env, tmp_path):
    """SLOW (real `prefect server`, `rtk-archiver serve` and `rtk-archiver webhook` processes,
    ~40 s): the simulator's webhook for an UPLOADED recording gets it archived by a manual run
    started by the trigger; a duplicate delivery changes nothing; a lost webhook is archived by
    the next poll."""
    sim = archiver_env
    now = datetime.now(timezone.utc)
    # UPLOADING until the test says so (serve's first scheduled poll sees them as pending)
    fast = sim.state.add_recording(status="UPLOADING", file_size=300_000, stopped_time=now - timedelta(minutes=2))
    lost = sim.state.add_recording(status="UPLOADING", file_size=200_000, stopped_time=now - timedelta(minutes=1))
    rx_port = free_port()
    sim.webhooks.url = f"http://127.0.0.1:{rx_port}/webhook"
    env = {"RTK_WEBHOOK_PUBLIC_KEY": sim.webhook_public_key_pem, "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "PREFECT_HOME": str(tmp_path / "prefect-client-home")}
    from tests.fixtures.prefect_server import running_serve

    _forget_automations(prefect_server.api_url)
    # serve from the repository root (the deployments' entrypoints are relative to it)
    with running_serve(prefect_server.api_url, cwd=ROOT, env=env, log_path=tmp_path / "serve.log") as serve, \
            running_serve(prefect_server.api_url, "--port", str(rx_port), cwd=tmp_path, env=env,
                          command="webhook") as receiver:
        _wait(lambda: _healthy(rx_port), 60, lambda: f"the receiver to listen\n{receiver.log_text()[-2000:]}")
        _wait(lambda: _automation_exists(prefect_server.api_url), 90,
              lambda: f"serve to register the trigger\n{serve.log_text()[-3000:]}", interval=1)

        # webhook -> event -> trigger -> manual run -> archived
        started = time.monotonic()
        sim.state.set_status(fast["id"], "UPLOADED")
        archived = sim.archive / fast["output_file_name"]
        _wait(lambda: _complete(sim.archive / (fast["output_file_name"] + ".metadata.json")), 150,
              lambda: f"the webhook's run to archive it\n{serve.log_text()[-3000:]}\n{receiver.log_text()[-2000:]}")
        latency = time.monotonic() - started
        assert archived.stat().st_size == 300_000
        assert sim.webhooks.deliveries[-1].status_code == 200
        assert len(_manual_runs_for(prefect_server.api_url, fast["id"])) == 1
        print(f"webhook -> archived in {latency:.1f} s")

        # a duplicate delivery (a new delivery id, the same status): acknowledged, nothing runs
        sim.webhooks.send(sim.webhooks.deliveries[-1].event)
        assert sim.webhooks.flush(10) and sim.webhooks.deliveries[-1].status_code == 200
        _wait(lambda: "duplicate delivery for recording" in receiver.log_text(), 10, receiver.log_text)
        time.sleep(2.5)  # longer than the runner's poll: a second run would have been picked up
        assert len(_manual_runs_for(prefect_server.api_url, fast["id"])) == 1
        assert sim.state.downloads[(fast["id"], "video")] == 1

        # a lost webhook: nothing happens until the poll, which archives it
        sim.webhooks.drop_next = 1
        sim.state.set_status(lost["id"], "UPLOADED")
        time.sleep(1)
        assert not (sim.archive / lost["output_file_name"]).exists()
        state = _run_poll(prefect_server.api_url)
        if state == "CANCELLED":  # a scheduled poll was running (CANCEL_NEW): once more
            state = _run_poll(prefect_server.api_url)
        assert state == "COMPLETED", serve.log_text()[-3000:]
        assert (sim.archive / lost["output_file_name"]).stat().st_size == 200_000
        assert sim.state.downloads[(lost["id"], "video")] == 1
        assert sim.state.downloads[(fast["id"], "video")] == 1  # the poll found it archived
        assert "Traceback" not in receiver.log_text()


def _complete(sidecar) -> bool:
    """The recording is archived: its sidecar is there and complete (not only the claim
    written before the files)."""
    return sidecar.exists() and json.loads(sidecar.read_text()).get("state") == "complete"


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _automation_exists(api_url: str) -> bool:
    import httpx as h

    r = h.post(f"{api_url}/automations/filter", json={}, timeout=5)
    return r.status_code == 200 and any(a["name"] == "archive-on-upload" for a in r.json())


def _forget_automations(api_url: str) -> None:
    """The shared server may hold the trigger of an earlier serve (another test's, for a
    deployment since deleted): remove it, so that waiting for the trigger waits for this serve's."""
    import httpx as h

    for a in h.post(f"{api_url}/automations/filter", json={}, timeout=5).json():
        if a["name"] == "archive-on-upload":
            h.delete(f"{api_url}/automations/{a['id']}", timeout=5)
