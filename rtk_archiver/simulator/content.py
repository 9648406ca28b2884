"""Deterministic pseudo-random media content, fast enough to serve GiB files on loopback.

A file is a sequence of 1 MiB blocks. Each recording/kind has a pool of 16 random blocks
(each seeded by the id, the kind and its number); block ``i`` is pool block ``(i * 7) % 16``
with its first 8 bytes replaced by ``i`` (big-endian), so every offset holds distinct,
reproducible bytes and a misplaced range shows up in any checksum. Tests regenerate the same
bytes to verify archives.

Pool blocks are drawn when first needed, and only as far as needed: a 64 KiB recording draws
64 KiB, not the 16 MiB of a whole pool (which cost the simulator ~70 ms of CPU per recording,
taken from the archiver it serves on a 2-core machine: ``bench.small``). ``randbytes`` of a
length that is a multiple of 4 is the start of a longer draw from the same seed (its 32-bit
words come in order), so a short draw and a whole block agree byte for byte
(``tests/test_simulator.py`` checks it).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from functools import lru_cache
from typing import Literal

BLOCK = 1 << 20
POOL = 16
Kind = Literal["video", "audio"]


@lru_cache(maxsize=128)
def _pool_block(recording_id: str, kind: str, number: int, length: int) -> bytes:
    """The first ``length`` (a multiple of 4, at most BLOCK) bytes of a pool block."""
    return random.Random(f"rtk-sim:{recording_id}:{kind}:{number}").randbytes(length)


@lru_cache(maxsize=64)
def _block(recording_id: str, kind: str, index: int, length: int = BLOCK) -> bytes:
    """The first ``length`` bytes of block ``index``."""
    base = _pool_block(recording_id, kind, (index * 7) % POOL, min(BLOCK, -(-length // 4) * 4))
    return (index.to_bytes(8, "big") + base[8:])[:length]


def iter_media(recording_id: str, kind: Kind, start: int, end: int, chunk: int = BLOCK) -> Iterator[bytes]:
    """Bytes [start, end) of a recording's media, in chunks of at most ``chunk`` bytes."""
    pos = start
    while pos < end:
        index, offset = divmod(pos, BLOCK)
        n = min(BLOCK - offset, end - pos, chunk)
        block = _block(recording_id, kind, index, min(BLOCK, end - index * BLOCK))  # as far as this read goes
        yield block if (offset == 0 and n == BLOCK) else block[offset : offset + n]
        pos += n


def media_bytes(recording_id: str, kind: Kind, offset: int, length: int) -> bytes:
    return b"".join(iter_media(recording_id, kind, offset, offset + length))


def media_source(recording_id: str, version: int = 0) -> str:
    """The id the bytes of a recording's file at ``version`` are drawn from (version 0: the
    recording's own id): a replaced file has other bytes of the same size."""
    return recording_id if not version else f"{recording_id}~v{version}"


def media_etag(recording_id: str, kind: str, version: int, size: int) -> str:
    """A strong ETag for one version of a file (stands in for R2's md5 ETag)."""
    return '"' + hashlib.md5(f"{recording_id}:{kind}:{version}:{size}".encode()).hexdigest() + '"'


def media_sha256(recording_id: str, kind: Kind, size: int) -> str:
    h = hashlib.sha256()
    for chunk in iter_media(recording_id, kind, 0, size):
        h.update(chunk)
    return h.hexdigest()
