"""The per-backend transfer knobs (ARCHIVE_S3_PART_SIZE / _CONCURRENCY, ARCHIVE_GCS_CHUNK_SIZE,
ARCHIVE_AZURE_BLOCK_SIZE / _CONCURRENCY, ARCHIVE_SFTP_WINDOW_SIZE) reach the upload, and the
upload stays verified with them: the stored checksum is the one of the bytes sent."""

from __future__ import annotations

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
        reader = VerifyingReader(media(size), size, backend.hash_types)
        info = backend.put("video.mp4", reader, size)
        reader.verify_end()
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
        reader = VerifyingReader(media(size), size, backend.hash_types)
        info = backend.put("video.mp4", reader, size)
        reader.verify_end()
        assert info.size == size and info.hashes["crc32c"] == reader.hexdigests()["crc32c"]
    finally:
        backend.close()


def test_azure_block_size_and_concurrency_are_used(azure_env):
    size = 2 * MiB + 9  # three blocks of 1 MiB
    backend = open_backend(parse_destination_url(f"az://{azure_env}/tuned"),
                           settings(archive_azure_block_size=MiB, archive_azure_concurrency=2))
    try:
        assert (backend.block_size, backend.in_flight) == (MiB, 2)
        reader = VerifyingReader(media(size), size, backend.hash_types)
        info = backend.put("video.mp4", reader, size)
        reader.verify_end()
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
