"""The per-backend transfer knobs (ARCHIVE_S3_PART_SIZE / _CONCURRENCY, ARCHIVE_GCS_CHUNK_SIZE,
ARCHIVE_AZURE_BLOCK_SIZE / _CONCURRENCY, ARCHIVE_SFTP_WINDOW_SIZE) reach the upload, and the
upload stays verified with them: the stored checksum is the one of the bytes sent."""

from __future__ import annotations

import base64
import hashlib

import pytest

from rtk_archiver.settings import Settings
from rtk_archiver.simulator import iter_media
from rtk_archiver.streams import VerifyingReader
from storage_backends import open_backend, parse_destination_url

MiB = 1024 * 1024


def settings(**kw) -> Settings:
    return Settings(cloudflare_api_token="t", cloudflare_account_id="a", realtimekit_app_id="b", **kw)


def media(size: int):
    return iter_media("tuning", "video", 0, size, chunk=256 * 1024)


def put_media(backend, size: int):
    """``size`` bytes of media put at video.mp4 through a VerifyingReader, checked to its end:
    what the backend reports, and the reader (its digests)."""
    reader = VerifyingReader(media(size), size, backend.hash_types)
    info = backend.put("video.mp4", reader, size)
    reader.verify_end()
    return info, reader


def test_gcs_chunk_must_be_a_multiple_of_256_kib():
    with pytest.raises(ValueError, match="multiple of 256 KiB"):
        settings(archive_gcs_chunk_size=1_000_000)
    assert settings(archive_gcs_chunk_size=4 * MiB).archive_gcs_chunk_size == 4 * MiB


def test_s3_part_size_and_concurrency_are_used_and_verified(s3_env):
    size = 11 * MiB + 7  # three 5 MiB parts
    backend = open_backend(parse_destination_url(f"s3://{s3_env}/tuned"),
                           settings(archive_s3_part_size=5 * MiB, archive_s3_concurrency=2))
    try:
        assert backend.part_size == 5 * MiB and backend.concurrency == 2
        info, _ = put_media(backend, size)
        data = b"".join(media(size))
        parts = [hashlib.sha256(data[i : i + 5 * MiB]).digest() for i in range(0, size, 5 * MiB)]
        assert len(parts) == 3
        assert info.size == size
        assert info.hashes["s3-sha256"].split("-")[0] == hashlib.sha256(b"".join(parts)).hexdigest()
    finally:
        backend.close()


def test_gcs_chunk_size_is_used(gcs_env):
    size = 3 * MiB + 5
    backend = open_backend(parse_destination_url(f"gs://{gcs_env}/tuned"), settings(archive_gcs_chunk_size=MiB))
    try:
        assert backend.chunk_size == MiB == 2 * backend.read_ahead_bytes
        info, reader = put_media(backend, size)
        assert info.size == size and info.hashes["crc32c"] == reader.hexdigests()["crc32c"]
    finally:
        backend.close()


def test_azure_block_size_and_concurrency_are_used(azure_env):
    size = 2 * MiB + 9  # three blocks of 1 MiB
    backend = open_backend(parse_destination_url(f"az://{azure_env}/tuned"),
                           settings(archive_azure_block_size=MiB, archive_azure_concurrency=2))
    try:
        assert (backend.block_size, backend.in_flight) == (MiB, 2)
        info, _ = put_media(backend, size)
        assert info.hashes["md5"] == hashlib.md5(b"".join(media(size))).hexdigest()
        blocks = backend.container.get_blob_client("tuned/video.mp4").get_block_list("committed")[0]
        assert [b.size for b in blocks] == [MiB, MiB, 9]
    finally:
        backend.close()


def test_sftp_window_size_is_used(sftp_backend_factory):
    backend = sftp_backend_factory(archive_sftp_window_size=8 * MiB)
    try:
        backend.put_bytes("w.bin", b"x" * 1000)
        channel = backend._sftp.get_channel()
        assert channel.in_window_size == 8 * MiB
    finally:
        backend.close()


# --- parts finishing out of order (storage_backends/parts.py) -----------------------------


def test_a_slow_part_does_not_hold_back_the_next_read():
    """``wait_below`` returns as soon as any part is done: with part 1 slow and part 2 done,
    the next part may be read (the download goes on) while part 1 is still in flight."""
    import threading

    from storage_backends.parts import PartUploads

    release = threading.Event()
    uploads = PartUploads(2, "test-part")
    uploads.submit(lambda: (release.wait(10), "slow")[1])
    uploads.submit(lambda: "fast")
    uploads.wait_below()  # the old code waited for the oldest part: here, until release
    assert uploads.results == ["fast"] and not release.is_set()
    release.set()
    assert uploads.finish() == ["fast", "slow"]


def test_a_failed_part_is_raised_and_parts_not_started_are_dropped():
    import threading

    from storage_backends.parts import PartUploads

    started, sending, release = [], threading.Event(), threading.Event()

    def part(n):
        started.append(n)
        if n == 1:
            raise OSError("part 1 refused")
        sending.set()
        release.wait(10)

    uploads = PartUploads(1, "test-part")  # one worker: a second part waits in the queue
    uploads.submit(part, 1)
    with pytest.raises(OSError, match="part 1 refused"):
        uploads.wait_below()
    uploads.submit(part, 2)
    # part 2 must be sending before abandon (the worker may not have taken it yet: a part
    # not started is dropped, which is what part 3 checks)
    assert sending.wait(10)
    uploads.submit(part, 3)  # queued behind it
    threading.Timer(0.2, release.set).start()
    uploads.abandon()  # drops part 3, waits for part 2
    assert started == [1, 2] and release.is_set()


def _first_part_slow(monkeypatch, cls, method, index_of):
    """Part 1's upload of ``cls`` sleeps until a later part is done (completion out of order)."""
    import threading

    later_done = threading.Event()
    order: list[int] = []
    original = getattr(cls, method)

    def slowed(*args, **kwargs):
        n = index_of(*args, **kwargs)
        if n == 1:
            assert later_done.wait(20), "a later part never finished while part 1 was in flight"
        result = original(*args, **kwargs)
        order.append(n)
        if n != 1:
            later_done.set()
        return result

    monkeypatch.setattr(cls, method, slowed)
    return order


def test_s3_parts_finishing_out_of_order_complete_in_order(s3_env, monkeypatch):
    """Part 1 finishes last: the multipart upload is completed with the parts in their
    order (S3 refuses any other), and the object is the exact bytes with their checksum."""
    from storage_backends.s3 import S3Backend

    size = 16 * MiB + 3  # 4 parts of 5 MiB (2 in flight)
    order = _first_part_slow(monkeypatch, S3Backend, "_upload_part", lambda self, args, box, checksum: args["PartNumber"])
    backend = open_backend(parse_destination_url(f"s3://{s3_env}/unordered"),
                           settings(archive_s3_part_size=5 * MiB, archive_s3_concurrency=2))
    try:
        info, _ = put_media(backend, size)
        assert order[0] != 1 and sorted(order) == [1, 2, 3, 4]
        data = b"".join(media(size))
        body = backend.client.get_object(Bucket=s3_env, Key="unordered/video.mp4")["Body"].read()
        assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
        parts = [hashlib.sha256(data[i : i + 5 * MiB]).digest() for i in range(0, size, 5 * MiB)]
        assert info.size == size and info.hashes["s3-sha256"].split("-")[0] == hashlib.sha256(b"".join(parts)).hexdigest()
    finally:
        backend.close()


def test_azure_blocks_finishing_out_of_order_commit_in_order(azure_env, monkeypatch):
    import storage_backends.azure as azure_module

    size = 3 * MiB + 1  # 4 blocks of 1 MiB (2 in flight)
    def index_of(blob, block_id, box):  # the id is "<upload>-<index from 0>", base64
        return int(base64.b64decode(block_id).decode().rsplit("-", 1)[1]) + 1

    order = _first_part_slow(monkeypatch, azure_module, "_stage", index_of)
    backend = open_backend(parse_destination_url(f"az://{azure_env}/unordered"),
                           settings(archive_azure_block_size=MiB, archive_azure_concurrency=2))
    try:
        info, _ = put_media(backend, size)
        assert order[0] != 1 and sorted(order) == [1, 2, 3, 4]
        data = b"".join(media(size))
        assert info.hashes["md5"] == hashlib.md5(data).hexdigest()
        body = backend.container.get_blob_client("unordered/video.mp4").download_blob().readall()
        assert body == data
    finally:
        backend.close()
