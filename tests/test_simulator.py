"""The simulator against Cloudflare's own SDK (strict response validation) and plain HTTP."""

from __future__ import annotations

import hashlib
import json
import time

import cloudflare
import httpx
import pytest

from rtk_archiver.simulator import SimulatorServer, media_bytes, media_sha256
from rtk_archiver.simulator.state import STATUSES


@pytest.fixture(scope="module")
def sim():
    with SimulatorServer(count=60, seed=3) as server:
        yield server


@pytest.fixture(scope="module")
def sdk(sim):
    client = cloudflare.Cloudflare(
        api_token=sim.token, base_url=sim.base_url, _strict_response_validation=True, max_retries=0
    )
    yield client
    client.close()


def list_all(sdk, sim, **query):
    seen, page = [], 1
    while True:
        resp = sdk.realtime_kit.recordings.get_recordings(sim.app_id, account_id=sim.account_id, page_no=page, **query)
        if not resp.data:
            return seen, resp.paging
        seen.extend(resp.data)
        page += 1


def test_sdk_lists_and_fetches_every_recording_strictly(sdk, sim):
    recs, paging = list_all(sdk, sim, per_page=7)
    assert len(recs) == 60 == len({r.id for r in recs})
    assert {r.status for r in recs} == set(STATUSES)
    assert {r.storage_config.type if r.storage_config else None for r in recs} >= {None, "aws", "digitalocean", "gcs", "sftp", "azure"}
    assert any(r.audio_download_url for r in recs) and any(r.status == "UPLOADED" and not r.audio_download_url for r in recs)
    assert any(r.status == "UPLOADED" and not r.download_url for r in recs)  # bucket disabled / expired
    for r in recs:
        one = sdk.realtime_kit.recordings.get_one_recording(r.id, account_id=sim.account_id, app_id=sim.app_id)
        assert one.data.id == r.id and one.data.start_reason is not None
        assert r.meeting is not None and r.meeting.id


def test_pagination_and_filters(sdk, sim):
    rec = sdk.realtime_kit.recordings
    first = rec.get_recordings(sim.app_id, account_id=sim.account_id, page_no=1, per_page=10, sort_order="ASC")
    zero = rec.get_recordings(sim.app_id, account_id=sim.account_id, page_no=0, per_page=10, sort_order="ASC")
    assert [r.id for r in first.data] == [r.id for r in zero.data]
    assert (first.paging.start_offset, first.paging.end_offset, first.paging.total_count) == (1, 10, 60)
    capped = rec.get_recordings(sim.app_id, account_id=sim.account_id, per_page=1000)
    assert len(capped.data) == min(capped.paging.total_count, sim.state.max_per_page) and len(capped.data) < 1000
    only = rec.get_recordings(sim.app_id, account_id=sim.account_id, per_page=100, status=["UPLOADED", "ERRORED"])
    assert only.data and {r.status for r in only.data} <= {"UPLOADED", "ERRORED"}
    times = sorted(r.invoked_time for r in first.data)
    window = rec.get_recordings(sim.app_id, account_id=sim.account_id, per_page=100, start_time=times[2], end_time=times[5])
    assert window.data and all(times[2] <= r.invoked_time <= times[5] for r in window.data)


def test_active_recording_and_stop_pause_resume(sdk, sim):
    rec = sdk.realtime_kit.recordings
    sim.state.upload_delay_seconds = 0.2
    live = sim.state.add_recording(status="RECORDING", meeting_id="5f8e6c1a-1111-4222-8333-444455556666", audio=True)
    active = rec.get_active_recordings("5f8e6c1a-1111-4222-8333-444455556666", account_id=sim.account_id, app_id=sim.app_id)
    assert active.data.id == live["id"]
    for action, status in (("pause", "PAUSED"), ("resume", "RECORDING"), ("stop", "UPLOADING")):
        out = rec.pause_resume_stop_recording(live["id"], account_id=sim.account_id, app_id=sim.app_id, action=action)
        assert out.data.status == status
    time.sleep(0.5)
    done = rec.get_one_recording(live["id"], account_id=sim.account_id, app_id=sim.app_id).data
    assert done.status == "UPLOADED" and done.stopped_time and done.download_url and done.audio_download_url
    with pytest.raises(cloudflare.NotFoundError):
        rec.get_active_recordings("5f8e6c1a-1111-4222-8333-444455556666", account_id=sim.account_id, app_id=sim.app_id)


def test_errors(sim):
    bad = cloudflare.Cloudflare(api_token="wrong", base_url=sim.base_url, max_retries=0)
    with pytest.raises(cloudflare.AuthenticationError):
        bad.realtime_kit.recordings.get_recordings(sim.app_id, account_id=sim.account_id)
    good = cloudflare.Cloudflare(api_token=sim.token, base_url=sim.base_url, max_retries=0)
    with pytest.raises(cloudflare.NotFoundError):
        good.realtime_kit.recordings.get_one_recording("nope", account_id=sim.account_id, app_id=sim.app_id)
    with pytest.raises(cloudflare.NotFoundError):
        good.realtime_kit.recordings.get_recordings("other-app", account_id=sim.account_id)


def test_media_download_range_and_expiry(sim):
    view = sim.state.add_recording(file_size=3 * 1024 * 1024 + 17, audio=True)
    rid, size = view["id"], 3 * 1024 * 1024 + 17
    with httpx.Client() as http:
        full = http.get(view["download_url"])
        assert full.status_code == 200 and int(full.headers["content-length"]) == size
        assert hashlib.sha256(full.content).hexdigest() == media_sha256(rid, "video", size)
        part = http.get(view["download_url"], headers={"Range": "bytes=1048570-1048600"})
        assert part.status_code == 206 and part.content == media_bytes(rid, "video", 1048570, 31)
        assert part.headers["content-range"] == f"bytes 1048570-1048600/{size}"
        assert http.get(view["download_url"], headers={"Range": "bytes=-5"}).content == media_bytes(rid, "video", size - 5, 5)
        assert http.get(view["download_url"], headers={"Range": f"bytes={size}-"}).status_code == 416
        head = http.head(view["audio_download_url"])
        assert head.status_code == 200 and head.headers["accept-ranges"] == "bytes"
        assert http.get(view["download_url"].replace("X-Signature=", "X-Signature=0")).status_code == 403

        sim.state.url_ttl_seconds = -1
        try:
            stale = http.get(f"{sim.base_url}/accounts/{sim.account_id}/realtime/kit/{sim.app_id}/recordings/{rid}",
                             headers={"Authorization": f"Bearer {sim.token}"}).json()["data"]
        finally:
            sim.state.url_ttl_seconds = 3600
        assert http.get(stale["download_url"]).status_code == 403
        fresh = http.get(f"{sim.base_url}/accounts/{sim.account_id}/realtime/kit/{sim.app_id}/recordings/{rid}",
                         headers={"Authorization": f"Bearer {sim.token}"}).json()["data"]
        assert fresh["download_url"] != stale["download_url"]
        assert http.get(fresh["download_url"], headers={"Range": "bytes=0-9"}).content == media_bytes(rid, "video", 0, 10)


def test_secrets_are_never_returned(sim, sdk):
    view = sim.state.add_recording(
        storage_config={"type": "sftp", "host": "h", "username": "u", "auth_method": "KEY",
                        "private_key": "-----BEGIN KEY-----SUPERSECRET", "password": "PASSPHRASE-XYZ"}
    )
    assert "SUPERSECRET" not in json.dumps(view) and "PASSPHRASE-XYZ" not in json.dumps(view)
    with httpx.Client(headers={"Authorization": f"Bearer {sim.token}"}) as http:
        prefix = f"{sim.base_url}/accounts/{sim.account_id}/realtime/kit/{sim.app_id}/recordings"
        bodies = [http.get(prefix, params={"per_page": 100, "page_no": p}).text for p in (1, 2)]
        bodies.append(http.get(f"{prefix}/{view['id']}").text)
    for body in bodies:
        assert "SUPERSECRET" not in body and "PASSPHRASE-XYZ" not in body
    assert view["id"] in "".join(bodies)


def test_media_bytes_are_the_same_whatever_part_is_read():
    """Blocks are drawn only as far as a read goes: any range, of any length, is the same
    bytes as that slice of the whole file (a short draw is the start of a long one)."""
    from rtk_archiver.simulator.content import BLOCK, _block, _pool_block, iter_media

    size = 2 * BLOCK + 12_345
    _block.cache_clear(), _pool_block.cache_clear()
    whole = b"".join(iter_media("rid", "video", 0, size))
    assert len(whole) == size and hashlib.sha256(whole).hexdigest() == media_sha256("rid", "video", size)
    for start, end in [(0, 1), (0, 7), (3, 13), (0, 65_536), (5, 65_539), (BLOCK - 3, BLOCK + 5),
                       (BLOCK + 1, 2 * BLOCK - 1), (2 * BLOCK, size), (17, size)]:
        _block.cache_clear(), _pool_block.cache_clear()  # drawn afresh for this read alone
        assert b"".join(iter_media("rid", "video", start, end)) == whole[start:end], (start, end)
    # a small file's bytes are the start of a big file's (same id): its block is a prefix
    assert media_bytes("rid", "video", 0, 65_537) == whole[:65_537]
    assert media_bytes("rid", "audio", 0, 4096) != whole[:4096]


def test_track_recordings_as_the_platform_serves_them(sim):
    """A track recording's download_url is a list of layers: the SDK's own types say string
    (strict validation refuses it, as it would refuse the real platform's answer); the SDK's
    raw response and the archiver's own model read it."""
    rec = sim.state.add_recording(type="TRACK", tracks=2)
    try:
        raw = httpx.get(f"{sim.base_url}/accounts/{sim.account_id}/realtime/kit/{sim.app_id}/recordings/{rec['id']}",
                        headers={"Authorization": f"Bearer {sim.token}"}).json()["data"]
        assert raw["type"] == "TRACK" and raw["output_file_name"].startswith("{{file_name_prefix}}")
        layer = raw["download_url"][0]
        assert layer["layer_name"] == "default" and len(layer["download_urls"]) == 2
        for name, entry in layer["download_urls"].items():
            assert name.endswith(".webm") and "_peer_audio_" in name
            assert httpx.get(entry["download_url"]).status_code == 200
        assert raw["audio_download_url"] is None
        lenient = cloudflare.Cloudflare(api_token=sim.token, base_url=sim.base_url, max_retries=0)
        one = lenient.realtime_kit.recordings.get_one_recording(rec["id"], account_id=sim.account_id, app_id=sim.app_id)
        assert isinstance(one.data.download_url, list)  # the SDK's type says str: it is not
        from rtk_archiver.models import Recording

        parsed = Recording.model_validate(raw)
        assert parsed.is_track and len(parsed.track_files) == 2 and parsed.download_url is None
        # POST /recordings/track starts one
        started = httpx.post(f"{sim.base_url}/accounts/{sim.account_id}/realtime/kit/{sim.app_id}/recordings/track",
                             headers={"Authorization": f"Bearer {sim.token}"}, json={"meeting_id": "m-1"})
        assert started.status_code == 201 and started.json()["data"]["type"] == "TRACK"
        sim.state.recordings.pop(started.json()["data"]["id"])
    finally:
        sim.state.recordings.pop(rec["id"])
