"""``file://`` backend: a local (or mounted) directory.

Writes go to a hidden temp file in the target directory, are fsynced, then moved into place
without clobbering (``link`` + ``unlink``: fails if anything is at the final name) or, for
keys the archiver proved are its own, replacing (``rename``). The final name only ever holds
a complete file.

Temp files are ``.<name>.<digest of the full name>.rtkpart-<random>``, and their writer holds
an exclusive ``flock`` on them until they are gone. Cleanup only removes a temp file whose
lock it can take: its writer is dead (a killed run), never a live upload of another run. It
runs on a process's first upload into a directory, then at most every ``SWEEP_SECONDS``
(``tempnames.Sweeps``: listing the directory on every upload cost O(files in it) per upload).
A writer that loses the instant between creating its temp file and locking it to a cleanup
sees its name gone once it holds the lock, and starts over under a new name.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

from rtk_archiver.models import ObjectInfo

from .base import KeyTaken, PermanentStorageError, Readable, StorageBackend, StorageError
from .destination import Destination
from .tempnames import SWEEPS, TEMP_MARKER, temp_prefix, temp_writer

COPY_CHUNK = 1024 * 1024
#: the writer part of this backend's temp names (``_locked_temp``)
LOCAL_WRITER = re.compile(r"[0-9a-f]{12}")

#: OS errors that no retry can fix: named, failed at once
PERMANENT_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOTDIR: "a path component is a file, not a directory",
    errno.EISDIR: "is a directory",
    errno.ENAMETOOLONG: "name too long for the file system",
    errno.ELOOP: "too many symbolic links",
    errno.EDQUOT: "disk quota exceeded",
    errno.EINVAL: "invalid name for the file system",
}


def _shown(path: object, limit: int = 300) -> str:
    """A path for a message: long ones keep their start and their last component."""
    text = str(path)
    if len(text) <= limit:
        return text
    head, _, last = text.rpartition("/")
    return f"{head[:120]}/…/{last[-120:]}"


def os_error(exc: OSError, action: str, path: object) -> StorageError:
    """Map an OSError to a clear StorageError: permanent for what retrying cannot fix."""
    code = exc.errno
    path = _shown(path)
    if code in PERMANENT_ERRNOS:
        return PermanentStorageError(f"cannot {action} {path}: {PERMANENT_ERRNOS[code]}")
    if code == errno.ENOSPC:
        return StorageError(f"cannot {action} {path}: no space left on device")
    return StorageError(f"cannot {action} {path}: {exc.strerror or type(exc).__name__}")


class LocalBackend(StorageBackend):
    def __init__(self, destination: Destination, settings: object | None = None) -> None:
        super().__init__(destination)
        self.root = Path(destination.root)

    def _path(self, key: str) -> Path:
        try:
            path = (self.root / key).resolve()
            root = self.root.resolve()
        except OSError as exc:
            raise os_error(exc, "resolve", self.root / key) from None
        if path != root and root not in path.parents:
            raise PermanentStorageError(f"refusing to write outside {self.root}: {key!r}")
        return path

    def stat(self, key: str) -> ObjectInfo | None:
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                return None  # a parent is a file: nothing can be at key
            raise os_error(exc, "stat", path) from None
        return ObjectInfo(size=st.st_size)

    def put(
        self, key: str, source: Readable, size: int | None, *, replace: bool = False, metadata: dict[str, str] | None = None
    ) -> ObjectInfo:
        final = self._path(key)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise PermanentStorageError(f"cannot create directory {final.parent}: a file is in the way") from None
        except OSError as exc:
            raise os_error(exc, "create directory", final.parent) from None
        if not replace and final.exists():
            raise KeyTaken(f"{final} already exists and was not written by this recording's archive: left untouched")
        prefix = temp_prefix(final.name)
        where = _swept(final.parent)
        SWEEPS.remove_left(where, lambda name: _unlink_quietly(final.parent / name))  # from a failed upload
        if SWEEPS.due(where):
            self._remove_abandoned(final.parent)
        tmp: Path | None = None
        written = 0
        fd = -1
        reading = False
        try:
            tmp, fd = self._locked_temp(final.parent, prefix)
            with os.fdopen(os.dup(fd), "wb") as out:
                while True:
                    reading = True  # the source's own errors propagate as they are
                    chunk = source.read(COPY_CHUNK)
                    reading = False
                    if not chunk:
                        break
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if size is not None and written != size:
                raise StorageError(f"wrote {written} bytes for {key!r}, expected {size}")
            if replace:
                os.replace(tmp, final)
            else:
                try:
                    os.link(tmp, final)  # fails if anything is there: never clobbers
                except FileExistsError:
                    raise KeyTaken(
                        f"{final} appeared while uploading and was not written by this recording's archive: left untouched"
                    ) from None
                os.unlink(tmp)
        except BaseException as exc:
            if tmp is not None and not _unlink_quietly(tmp):
                SWEEPS.left_behind(where, tmp.name)
            if isinstance(exc, OSError) and not reading and not isinstance(exc, FileExistsError):
                raise os_error(exc, "write", final) from None
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        _fsync_dir(final.parent)
        return ObjectInfo(size=written)

    @staticmethod
    def _locked_temp(directory: Path, prefix: str) -> tuple[Path, int]:
        """A new temp file, locked, still at its name. A cleanup can take the lock of a file
        created an instant ago and remove it; the lock then comes to us on a nameless file,
        which we give up for a new name."""
        for _ in range(100):
            tmp = directory / f"{prefix}{uuid.uuid4().hex[:12]}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # a cleanup holds it for an instant at most
                if _same_file(tmp, fd):
                    return tmp, fd  # ours until the temp file is gone
            except BaseException:
                os.close(fd)
                _unlink_quietly(tmp)
                raise
            os.close(fd)
        raise StorageError(f"could not create a temp file next to {directory / prefix!s}: removed each time")

    def remove_abandoned(self, key: str) -> None:
        directory = self._path(key).parent
        SWEEPS.mark(_swept(directory))
        self._remove_abandoned(directory)

    @staticmethod
    def _remove_abandoned(directory: Path) -> None:
        """Temp files in ``directory`` whose writer is gone (a killed run): their lock is free.
        A live upload holds its lock: never touched."""
        try:
            with os.scandir(directory) as entries:
                names = [e.name for e in entries if temp_writer(e.name, LOCAL_WRITER) is not None]
        except OSError:
            return
        for stale in (directory / name for name in names):
            try:  # never a symlink's target; a FIFO named like a temp file must not block
                fd = os.open(stale, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError:
                continue  # gone meanwhile (or not a file we could have written)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue  # the archiver only writes regular files
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a live upload
                if _same_file(stale, fd):  # not finished and removed by its writer meanwhile
                    _unlink_quietly(stale)
            finally:
                os.close(fd)

    def read_bytes(self, key: str, limit: int = 1 << 20) -> bytes | None:
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                return fh.read(limit)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise os_error(exc, "read", path) from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise os_error(exc, "delete", path) from None

    def list(self, prefix: str = "") -> Iterator[tuple[str, ObjectInfo]]:
        """Regular files under ``prefix``, in key order (as S3 and GCS list), one directory in
        memory at a time; symlinks and temp files are left out."""
        directory = prefix.rpartition("/")[0]
        start = self._path(directory) if directory else self.root
        yield from self._walk(start, f"{directory}/" if directory else "", prefix)

    def _walk(self, path: Path, rel: str, prefix: str) -> Iterator[tuple[str, ObjectInfo]]:
        try:
            with os.scandir(path) as it:
                # a directory sorts as "name/", so the walk comes out in key order
                entries = sorted(it, key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise os_error(exc, "list", path) from None
        for entry in entries:
            key = rel + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                        yield from self._walk(Path(entry.path), key + "/", prefix)
                elif entry.is_file(follow_symlinks=False) and TEMP_MARKER not in entry.name and key.startswith(prefix):
                    yield key, ObjectInfo(size=entry.stat(follow_symlinks=False).st_size)
            except FileNotFoundError:
                continue  # removed while listing

    def read_chunks(self, key: str, chunk_size: int = COPY_CHUNK) -> Iterator[bytes]:
        """The object's content, streamed (the scrub's ``--deep`` re-hash)."""
        path = self._path(key)
        try:
            with open(path, "rb") as fh:
                while chunk := fh.read(chunk_size):
                    yield chunk
        except OSError as exc:
            raise os_error(exc, "read", path) from None


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _swept(directory: Path) -> tuple[str, str]:
    """``directory`` in this process's record of sweeps (``tempnames.SWEEPS``)."""
    return ("file", str(directory))


def _unlink_quietly(path: Path) -> bool:
    """Remove ``path``; whether it is gone."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        return False
    return True


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
