"""Issue 10, "clear errors instead of raw ones": API error messages, escaped API text in the
summary and the artifacts, ``--report`` checked before any work, permanent OS errors at the
destination (read-only file system, a file in the way, a name too long, permission denied)
failing once, at once, with a clear message. Settings bounds: tests/test_settings.py; ports:
tests/test_destination.py; permission denied per backend: tests/test_backend_contract.py."""

from __future__ import annotations

import json

import cloudflare
import httpx
import pytest

from rtk_archiver.api import ApiError, RealtimeKitAPI
from rtk_archiver.settings import Settings

TOKEN = "tok-VERY-SECRET-0123456789"


# --- 4. the API's own error messages ----------------------------------------------------------

def api_answering(monkeypatch, status: int, body) -> RealtimeKitAPI:
    """A RealtimeKitAPI whose every request gets ``status`` / ``body`` (no retries)."""
    real = cloudflare.Cloudflare

    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, (dict, list)):
            return httpx.Response(status, json=body)
        return httpx.Response(status, content=body, headers={"content-type": "application/json"})

    def client(**kw):
        return real(**kw, http_client=httpx.Client(transport=httpx.MockTransport(handler)))

    monkeypatch.setattr(cloudflare, "Cloudflare", client)
    settings = Settings(
        cloudflare_api_token=TOKEN, cloudflare_account_id="acc", realtimekit_app_id="app", ARCHIVE_API_MAX_RETRIES=0
    )
    return RealtimeKitAPI(settings)


def api_error(api: RealtimeKitAPI, call: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        if call == "get":
            api.get_recording("rec-1")
        else:
            list(api.iter_recordings())
    return info.value


@pytest.mark.parametrize("call", ["get", "list"])
@pytest.mark.parametrize("status", [200, 400, 422, 500, 401, 403])
def test_success_false_keeps_the_api_messages(monkeypatch, call, status):
    """Used to say only 'RealtimeKit API answered success=false' (200) or repeat the raw body."""
    body = {"success": False, "errors": [{"code": 7001, "message": "App is suspended"}, {"code": 7002, "message": "quota exceeded"}]}
    err = api_error(api_answering(monkeypatch, status, body), call)
    text = str(err)
    assert "App is suspended" in text and "quota exceeded" in text and "7001" in text
    assert "{'success'" not in text  # the messages, not the raw body
    assert TOKEN not in text


def test_api_messages_are_bounded_redacted_and_escaped(monkeypatch):
    body = {
        "success": False,
        "errors": [
            {"code": 1, "message": f"token {TOKEN} rejected, see https://files.example/x.mp4?X-Amz-Signature=SIGSECRET"},
            {"code": 2, "message": "\x1b[2J\x1b]0;owned\x07 line\rover \u202egnp.exe"},
            {"code": 3, "message": "A" * 50_000},
        ],
    }
    text = str(api_error(api_answering(monkeypatch, 200, body), "get"))
    assert TOKEN not in text and "SIGSECRET" not in text
    assert "https://files.example/x.mp4?<redacted>" in text
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text and "\x07" not in text
    assert "\\x1b[2J" in text and "\\u202e" in text
    assert len(text) < 600


def test_success_false_without_messages_says_so(monkeypatch):
    text = str(api_error(api_answering(monkeypatch, 200, {"success": False}), "get"))
    assert "success=false" in text and "without an error message" in text


@pytest.mark.parametrize("body", [b"[1, 2]", b'"just a string"'])
def test_a_body_that_is_not_an_object_is_named(monkeypatch, body):
    text = str(api_error(api_answering(monkeypatch, 200, body), "get"))
    assert "malformed" in text
