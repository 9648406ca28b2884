"""Wrong bytes are never archived, right bytes always are: an error page (HTML / JSON / XML)
answered in place of the media fails clearly, whatever its Content-Type says; real media with
a generic or missing type is archived; a chunked body without file_size is streamed to its
end and recorded at the bytes received. Issue 10."""

from __future__ import annotations

import json

import pytest

from flows.archive import archive_recordings
from rtk_archiver.models import OutcomeKind
from rtk_archiver.simulator import media_bytes
from tests.fixtures import run_report

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def env(archiver_env, monkeypatch):
    monkeypatch.setenv("ARCHIVE_TASK_RETRIES", "0")
    return archiver_env


def outcome(report, rec):
    return next(o for o in report.outcomes if o.recording_id == rec["id"])


def audio_name(rec) -> str:
    return rec["output_file_name"] + ".audio.m4a"  # <video>.audio.<ext>


def sidecar(env, rec) -> dict:
    return json.loads((env.archive / (rec["output_file_name"] + ".metadata.json")).read_text())


def assert_archived_with_audio(env, rec):
    assert (env.archive / rec["output_file_name"]).read_bytes() == media_bytes(rec["id"], "video", 0, rec["file_size"])
    audio_size = env.state.recordings[rec["id"]].audio_size
    assert (env.archive / audio_name(rec)).read_bytes() == media_bytes(rec["id"], "audio", 0, audio_size)
    sizes = {f["kind"]: f["size"] for f in sidecar(env, rec)["files"]}
    assert sizes == {"video": rec["file_size"], "audio": audio_size}


def test_audio_answering_an_html_error_page_fails_clearly_and_the_next_run_archives_it(env):
    """The reported case: the audio URL answered `200 text/html` and an 18-byte page was
    archived as `.audio.m4a` with a good sidecar."""
    rec = env.state.add_recording(file_size=50_000, audio=True)
    faults = env.state.faults
    faults.error_pages, faults.fault_kinds = 5, ("audio",)
    faults.error_page = b"<html>Denied</html>"  # 18 bytes
    got = outcome(run_report(archive_recordings), rec)
    assert got.kind == OutcomeKind.FAILED
    assert "audio download answered 200 with Content-Type text/html: an error page" in got.reason, got.reason
    assert not (env.archive / audio_name(rec)).exists()
    sidecar = env.archive / (rec["output_file_name"] + ".metadata.json")
    # not "archived": at most the claim that keeps the stored video this recording's own
    assert not sidecar.exists() or json.loads(sidecar.read_text())["state"] == "claimed"
    faults.error_pages = 0
    assert outcome(run_report(archive_recordings), rec).kind == OutcomeKind.ARCHIVED
    assert_archived_with_audio(env, rec)


ERROR_PAGES = {
    "html-without-type": (None, b"<!DOCTYPE html>\n<html><body>Access denied</body></html>", "an HTML document"),
    "json-as-octet-stream": ("application/octet-stream", b'{"error": "token expired"}', "a JSON document"),
    "xml-as-binary": ("binary/octet-stream", b'<?xml version="1.0"?><Error><Code>AccessDenied</Code></Error>', "an XML document"),
    "html-as-text-plain": ("text/plain", b"  \r\n<html><head><title>502</title></head></html>", "an HTML document"),
    "json-type": ("application/json", b'{"success": false}', "Content-Type application/json"),
    "problem-json": ("application/problem+json; charset=utf-8", b'{"title": "x"}', "Content-Type application/problem+json"),
    "xml-type-and-video-file-size": ("application/xml", b"<Error/>", "Content-Type application/xml"),
}


@pytest.mark.parametrize("case", ERROR_PAGES, ids=list(ERROR_PAGES))
def test_error_pages_are_refused_by_type_or_by_their_first_bytes(env, case):
    content_type, page, expected = ERROR_PAGES[case]
    rec = env.state.add_recording(file_size=40_000, audio=True)
    env.state.faults.hide_file_size = case != "xml-type-and-video-file-size"  # no size to compare with
    env.state.faults.error_pages, env.state.faults.error_page_type, env.state.faults.error_page = 5, content_type, page
    got = outcome(run_report(archive_recordings), rec)
    assert got.kind == OutcomeKind.FAILED
    assert expected in got.reason and "error page" in got.reason, got.reason
    assert not [p for p in env.archive.rglob("*") if p.is_file()]


def test_an_empty_media_body_is_refused(env):
    rec = env.state.add_recording(file_size=40_000, audio=True)
    faults = env.state.faults
    faults.error_pages, faults.fault_kinds, faults.error_page, faults.error_page_type = 5, ("audio",), b"", "audio/mp4"
    got = outcome(run_report(archive_recordings), rec)
    assert got.kind == OutcomeKind.FAILED and "audio download is empty (0 bytes)" in got.reason, got.reason


@pytest.mark.parametrize("media_type", [None, "application/octet-stream", "binary/octet-stream", "text/plain"])
def test_real_media_with_a_generic_or_missing_type_is_archived(env, media_type):
    rec = env.state.add_recording(file_size=300_000, audio=True)
    env.state.faults.media_type = media_type
    env.state.faults.hide_file_size = True
    assert outcome(run_report(archive_recordings), rec).kind == OutcomeKind.ARCHIVED
    assert_archived_with_audio(env, rec)


def test_chunked_bodies_without_file_size_are_streamed_to_their_end(env):
    """No Content-Length and no file_size: failed forever before ("no Content-Length and the
    API gave no file_size"); now archived, sized by the bytes received, also across a reset."""
    plain = env.state.add_recording(file_size=3 * 1024 * 1024 + 3, audio=True)
    broken = env.state.add_recording(file_size=2 * 1024 * 1024 + 1)
    faults = env.state.faults
    faults.chunked = faults.hide_file_size = True
    faults.download_resets, faults.reset_after = 1, 700_000  # one body breaks off: resumed with Range
    report = run_report(archive_recordings)
    assert {outcome(report, r).kind for r in (plain, broken)} == {OutcomeKind.ARCHIVED}, report.outcomes
    assert_archived_with_audio(env, plain)
    assert (env.archive / broken["output_file_name"]).read_bytes() == media_bytes(broken["id"], "video", 0, broken["file_size"])
    assert sidecar(env, broken)["files"][0]["size"] == broken["file_size"]


def test_chunked_body_without_file_size_into_s3(env, s3_env, moto_s3_server):
    import boto3

    rec = env.state.add_recording(file_size=9 * 1024 * 1024 + 5, audio=True)  # multipart
    env.state.faults.chunked = env.state.faults.hide_file_size = True
    report = run_report(archive_recordings, destination=f"s3://{s3_env}/chunked")
    assert outcome(report, rec).kind == OutcomeKind.ARCHIVED, outcome(report, rec).reason
    client = boto3.client("s3", endpoint_url=moto_s3_server, region_name="us-east-1")
    body = client.get_object(Bucket=s3_env, Key=f"chunked/{rec['output_file_name']}")["Body"].read()
    assert body == media_bytes(rec["id"], "video", 0, rec["file_size"])
    meta = json.loads(client.get_object(Bucket=s3_env, Key=f"chunked/{rec['output_file_name']}.metadata.json")["Body"].read())
    assert {f["kind"]: f["size"] for f in meta["files"]}["video"] == rec["file_size"]


def test_sniffing_never_mistakes_media_for_an_error_page():
    import random

    from tasks.transfer import error_page_kind

    for i in range(300):  # media starting with '<', '{' or '[' followed by binary bytes
        body = b"<{["[i % 3 : i % 3 + 1] + random.Random(i).randbytes(600)
        assert error_page_kind(body) is None
    assert error_page_kind(b"\x00\x00\x00\x18ftypmp42") is None
    assert error_page_kind(b"") is None
    assert error_page_kind("\ufeff<html lang='fr'>Accès refusé</html>".encode()) == "HTML"
    assert error_page_kind(b"[1, 2") == "JSON"
