"""``file://`` backend: a local (or mounted) directory.

Writes go to a hidden temp file in the target directory, are fsynced, then renamed into
place, so the final name only ever holds a complete file. Temp files of the same name left
by a killed run are removed by the next write (runs hold the recording's lock meanwhile).
"""

from __future__ import annotations

import glob
import os
import uuid
from pathlib import Path

from rtk_archiver.models import ObjectInfo

from .base import PermanentStorageError, Readable, StorageBackend, StorageError
from .destination import Destination

COPY_CHUNK = 1024 * 1024
TEMP_MARKER = ".rtkpart-"


class LocalBackend(StorageBackend):
    def __init__(self, destination: Destination) -> None:
        super().__init__(destination)
        self.root = Path(destination.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        root = self.root.resolve()
        if path != root and root not in path.parents:
            raise PermanentStorageError(f"refusing to write outside {self.root}: {key!r}")
        return path

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self._path(key).stat()
        except FileNotFoundError:
            return None
        return ObjectInfo(size=st.st_size)

    def put(self, key: str, source: Readable, size: int) -> ObjectInfo:
        final = self._path(key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except PermissionError as exc:
            raise PermanentStorageError(f"cannot create directory {final.parent}: permission denied") from exc
        prefix = f".{final.name[:120]}{TEMP_MARKER}"
        for stale in final.parent.glob(f"{glob.escape(prefix)}*"):  # left by a killed run
            stale.unlink(missing_ok=True)
        tmp = final.parent / f"{prefix}{uuid.uuid4().hex[:12]}"
        written = 0
        try:
            with open(tmp, "xb") as out:
                while True:
                    chunk = source.read(COPY_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if written != size:
                raise StorageError(f"wrote {written} bytes for {key!r}, expected {size}")
            os.replace(tmp, final)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, PermissionError):
                raise PermanentStorageError(f"cannot write {final}: permission denied") from exc
            if isinstance(exc, OSError) and exc.errno == 28:
                raise StorageError(f"cannot write {final}: no space left on device") from exc
            raise
        _fsync_dir(final.parent)
        return ObjectInfo(size=written)

    def read_bytes(self, key: str, limit: int = 1 << 20) -> bytes | None:
        try:
            with open(self._path(key), "rb") as fh:
                return fh.read(limit)
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
