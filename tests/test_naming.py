"""Names from the API are made safe, never followed."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from rtk_archiver.models import Recording
from rtk_archiver.naming import keys_for, redact_urls, safe_component, safe_relative_path


def rec(name: str, path: str | None = None, audio: bool = False) -> Recording:
    return Recording.model_validate(
        {
            "id": "0b6f1a52-0000-4000-8000-000000000001",
            "status": "UPLOADED",
            "invoked_time": datetime(2026, 11, 1, tzinfo=timezone.utc),
            "output_file_name": name,
            "audio_download_url": "https://bucket.example/x/audio.mp3?sig=1" if audio else None,
            "storage_config": {"type": "aws", "bucket": "b", "path": path} if path is not None else None,
        }
    )


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "/etc/passwd", "..", ".", "a/b/c.mp4", "a\\b\\..\\c.mp4", "x\x00y.mp4", "bell\x07\n.mp4",
     "C:\\evil.mp4", " ", "", "\u202eevil.mp4"],
)
def test_safe_component_never_escapes(name):
    out = safe_component(name)
    assert out and "/" not in out and "\\" not in out and "\x00" not in out
    assert out not in (".", "..") and not out.startswith(".")
    assert all(ord(c) >= 32 for c in out)


def test_unicode_is_kept_and_long_names_are_bounded():
    assert safe_component("réunion 会议.mp4") == "réunion 会议.mp4"
    long = "é" * 400 + ".mp4"
    out = safe_component(long)
    assert len(out.encode()) <= 180 and out.endswith(".mp4")
    assert safe_component("é" * 400 + "x.mp4") != out  # distinct long names stay distinct


def test_relative_path_is_made_relative_and_safe():
    assert safe_relative_path("/recordings/2026/") == "recordings/2026"
    assert safe_relative_path("../../up") == "__/__/up"
    assert safe_relative_path("a\\..\\b") == "a/__/b"
    assert safe_relative_path(None) == ""


def test_keys_layout_video_audio_sidecar_beside_each_other():
    keys = keys_for(rec("meeting.mp4", path="team/a", audio=True))
    assert keys.video == "team/a/meeting.mp4"
    assert keys.audio == "team/a/meeting.mp4.audio.mp3"
    assert keys.sidecar == "team/a/meeting.mp4.metadata.json"
    assert keys_for(rec("meeting.mp4")).audio is None


def test_traversal_name_stays_inside_path():
    keys = keys_for(rec("../../../x.mp4", path="../base"))
    for key in (keys.video, keys.sidecar):
        assert not key.startswith("/") and ".." not in key.split("/")


def test_disambiguated_names_carry_the_id():
    keys = keys_for(rec("m.mp4"), disambiguate=True)
    assert keys.video == "m__0b6f1a52-0000-4000-8000-000000000001.mp4"


def test_redact_urls_drops_signatures():
    msg = "error for url 'https://h.example/a/b.mp4?X-Signature=abc&X-Expires=1'"
    assert "abc" not in redact_urls(msg) and "https://h.example/a/b.mp4" in redact_urls(msg)
