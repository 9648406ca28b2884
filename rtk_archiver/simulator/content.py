"""Deterministic pseudo-random media content, fast enough to serve GiB files on loopback.

A file is a sequence of 1 MiB blocks. Each recording/kind has a pool of 16 random blocks
(seeded by its id); block ``i`` is pool block ``(i * 7) % 16`` with its first 8 bytes
replaced by ``i`` (big-endian), so every offset holds distinct, reproducible bytes and a
misplaced range shows up in any checksum. Tests regenerate the same bytes to verify archives.
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


@lru_cache(maxsize=64)
def _pool(recording_id: str, kind: str) -> tuple[bytes, ...]:
    rng = random.Random(f"rtk-sim:{recording_id}:{kind}")
    return tuple(rng.randbytes(BLOCK) for _ in range(POOL))


@lru_cache(maxsize=32)
def _block(recording_id: str, kind: str, index: int) -> bytes:
    base = _pool(recording_id, kind)[(index * 7) % POOL]
    return index.to_bytes(8, "big") + base[8:]


def iter_media(recording_id: str, kind: Kind, start: int, end: int, chunk: int = BLOCK) -> Iterator[bytes]:
    """Bytes [start, end) of a recording's media, in chunks of at most ``chunk`` bytes."""
    pos = start
    while pos < end:
        index, offset = divmod(pos, BLOCK)
        n = min(BLOCK - offset, end - pos, chunk)
        block = _block(recording_id, kind, index)
        yield block if (offset == 0 and n == BLOCK) else block[offset : offset + n]
        pos += n


def media_bytes(recording_id: str, kind: Kind, offset: int, length: int) -> bytes:
    return b"".join(iter_media(recording_id, kind, offset, offset + length))


def media_sha256(recording_id: str, kind: Kind, size: int) -> str:
    h = hashlib.sha256()
    for chunk in iter_media(recording_id, kind, 0, size):
        h.update(chunk)
    return h.hexdigest()
