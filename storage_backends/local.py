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

No link below the root is ever followed: every directory is opened from its parent with
``O_NOFOLLOW | O_DIRECTORY`` and every file relative to it (``dir_fd``, ``O_NOFOLLOW``), so a
symlink at an archive file's name or at one of its directories, even one that appears while
looking, is refused (``nofollow.NotOurs``): never read through, written through, replaced nor
removed.
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
from .nofollow import NotOurs, link_refused
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


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: a FIFO or device named like an archive file must not block the open
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class LocalBackend(StorageBackend):
    def __init__(self, destination: Destination, settings: object | None = None) -> None:
        super().__init__(destination)
        self.root = Path(destination.root)

    # -- paths: every component below the root opened without following a link ---------------
    def _parts(self, key: str) -> list[str]:
        parts = [p for p in key.split("/") if p not in ("", ".")]
        if key.startswith("/") or ".." in parts or not parts:
            raise PermanentStorageError(f"refusing to write outside {self.root}: {key!r}")
        return parts

    def _open_dir(self, parts: list[str], *, create: bool = False) -> int | None:
        """A descriptor of ``root/parts...`` (the caller closes it), each component below the
        root opened relative to its parent with ``O_NOFOLLOW | O_DIRECTORY``: a link anywhere
        below the root is refused (``NotOurs``), never followed, even if it appears while
        looking. None when a component is missing or a file (``create``: made, a file refused).
        The root itself is the configured path (it may be a link the operator chose)."""
        try:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            if not create:
                return None
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            except FileExistsError:
                raise PermanentStorageError(f"cannot create directory {self.root}: a file is in the way") from None
            except OSError as exc:
                raise os_error(exc, "create directory", self.root) from None
        except NotADirectoryError:
            if create:
                why = "a file is in the way" if os.path.lexists(self.root) else "a path component is a file, not a directory"
                raise PermanentStorageError(f"cannot create directory {self.root}: {why}") from None
            return None
        except OSError as exc:
            raise os_error(exc, "open", self.root) from None
        done: list[str] = []
        try:
            for part in parts:
                done.append(part)
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        return None
                    try:
                        os.mkdir(part, 0o777, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile (another run), or something else: the open tells
                    except OSError as exc:
                        raise os_error(exc, "create directory", self.root.joinpath(*done)) from None
                    try:
                        child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    except OSError as exc:
                        child = self._not_a_directory(fd, part, done, exc, create, len(done) == len(parts))
                except OSError as exc:
                    child = self._not_a_directory(fd, part, done, exc, create, len(done) == len(parts))
                if child is None:
                    os.close(fd)
                    return None
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _not_a_directory(self, fd: int, part: str, done: list[str], exc: OSError, create: bool, last: bool = True) -> int | None:
        """Why ``part`` (in ``fd``) could not be opened as a directory: a link (refused), a file
        (None, or refused when creating), or another error."""
        where = self.root.joinpath(*done)
        try:
            st = os.stat(part, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            if create:
                raise StorageError(f"cannot create directory {_shown(where)}: removed while creating it") from None
            return None
        except OSError:
            raise os_error(exc, "open directory", where) from None
        if stat.S_ISLNK(st.st_mode):
            raise link_refused(_shown(where))
        if not stat.S_ISDIR(st.st_mode):
            if create:
                why = "a file is in the way" if last else "a path component is a file, not a directory"
                raise PermanentStorageError(f"cannot create directory {_shown(where)}: {why}")
            return None
        raise os_error(exc, "open directory", where) from None

    def _where(self, parts: list[str]) -> Path:
        return self.root.joinpath(*parts)

    @staticmethod
    def _lstat(dfd: int, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    # -- the interface -------------------------------------------------------------------------
    def stat(self, key: str) -> ObjectInfo | None:
        parts = self._parts(key)
        dfd = self._open_dir(parts[:-1])
        if dfd is None:
            return None  # a parent is missing, or a file: nothing can be at key
        try:
            st = self._lstat(dfd, parts[-1])
        except OSError as exc:
            raise os_error(exc, "stat", self._where(parts)) from None
        finally:
            os.close(dfd)
        if st is None:
            return None
        if stat.S_ISLNK(st.st_mode):
            raise link_refused(_shown(self._where(parts)))
        return ObjectInfo(size=st.st_size)

    def put(
        self, key: str, source: Readable, size: int | None, *, replace: bool = False, metadata: dict[str, str] | None = None
    ) -> ObjectInfo:
        parts = self._parts(key)
        final = self._where(parts)
        name = parts[-1]
        dfd = self._open_dir(parts[:-1], create=True)
        assert dfd is not None
        try:
            return self._put_in(dfd, final, name, key, source, size, replace)
        finally:
            os.close(dfd)

    def _put_in(self, dfd: int, final: Path, name: str, key: str, source: Readable, size: int | None, replace: bool) -> ObjectInfo:
        def refuse_link() -> None:
            there = self._lstat(dfd, name)
            if there is not None and stat.S_ISLNK(there.st_mode):
                raise link_refused(_shown(final))  # never replaced, even for the recording's own key
            if not replace and there is not None:
                raise KeyTaken(f"{final} already exists and was not written by this recording's archive: left untouched")

        try:
            refuse_link()
        except OSError as exc:
            raise os_error(exc, "stat", final) from None
        prefix = temp_prefix(name)
        where = _swept(final.parent)
        SWEEPS.remove_left(where, lambda n: _unlink_quietly(dfd, n))  # from a failed upload
        if SWEEPS.due(where):
            self._remove_abandoned(dfd)
        tmp: str | None = None
        written = 0
        fd = -1
        reading = False
        try:
            tmp, fd = self._locked_temp(dfd, final.parent, prefix)
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
                refuse_link()  # a link that appeared while uploading: the rename would replace it
                os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            else:
                try:  # fails if anything is there (a link included): never clobbers
                    os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
                except FileExistsError:
                    raise KeyTaken(
                        f"{final} appeared while uploading and was not written by this recording's archive: left untouched"
                    ) from None
                os.unlink(tmp, dir_fd=dfd)
        except BaseException as exc:
            if tmp is not None and not _unlink_quietly(dfd, tmp):
                SWEEPS.left_behind(where, tmp)
            if isinstance(exc, OSError) and not reading and not isinstance(exc, FileExistsError):
                raise os_error(exc, "write", final) from None
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        try:
            os.fsync(dfd)
        except OSError:
            pass
        return ObjectInfo(size=written)

    @staticmethod
    def _locked_temp(dfd: int, directory: Path, prefix: str) -> tuple[str, int]:
        """A new temp file (its name in ``dfd``), locked, still at its name. A cleanup can take
        the lock of a file created an instant ago and remove it; the lock then comes to us on a
        nameless file, which we give up for a new name."""
        for _ in range(100):
            tmp = f"{prefix}{uuid.uuid4().hex[:12]}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # a cleanup holds it for an instant at most
                if _same_file(dfd, tmp, fd):
                    return tmp, fd  # ours until the temp file is gone
            except BaseException:
                os.close(fd)
                _unlink_quietly(dfd, tmp)
                raise
            os.close(fd)
        raise StorageError(f"could not create a temp file next to {directory / prefix!s}: removed each time")

    def remove_abandoned(self, key: str) -> None:
        parts = self._parts(key)
        SWEEPS.mark(_swept(self._where(parts).parent))
        try:
            dfd = self._open_dir(parts[:-1])
        except StorageError:
            return
        if dfd is None:
            return
        try:
            self._remove_abandoned(dfd)
        finally:
            os.close(dfd)

    @staticmethod
    def _remove_abandoned(dfd: int) -> None:
        """Temp files in the directory ``dfd`` whose writer is gone (a killed run): their lock
        is free. A live upload holds its lock: never touched."""
        try:
            with os.scandir(dfd) as entries:
                names = [e.name for e in entries if temp_writer(e.name, LOCAL_WRITER) is not None]
        except OSError:
            return
        for stale in names:
            try:  # never a symlink's target; a FIFO named like a temp file must not block
                fd = os.open(stale, _READ_FLAGS, dir_fd=dfd)
            except OSError:
                continue  # gone meanwhile (or not a file we could have written)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue  # the archiver only writes regular files
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a live upload
                if _same_file(dfd, stale, fd):  # not finished and removed by its writer meanwhile
                    _unlink_quietly(dfd, stale)
            finally:
                os.close(fd)

    def _open_file(self, key: str) -> int | None:
        """A read-only descriptor of the regular file at key, no link followed on the way
        (``NotOurs`` for a link, or a FIFO / device where a file should be); None if absent."""
        parts = self._parts(key)
        path = self._where(parts)
        dfd = self._open_dir(parts[:-1])
        if dfd is None:
            return None
        try:
            try:
                fd = os.open(parts[-1], _READ_FLAGS, dir_fd=dfd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                st = self._lstat(dfd, parts[-1])
                if st is not None and stat.S_ISLNK(st.st_mode):
                    raise link_refused(_shown(path)) from None
                raise os_error(exc, "read", path) from None
        finally:
            os.close(dfd)
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return fd
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise PermanentStorageError(f"cannot read {_shown(path)}: is a directory")
        raise NotOurs(f"{_shown(path)} is not a regular file (a FIFO, socket or device): not the archiver's; not read")

    def read_bytes(self, key: str, limit: int = 1 << 20) -> bytes | None:
        fd = self._open_file(key)
        if fd is None:
            return None
        try:
            with os.fdopen(fd, "rb") as fh:
                return fh.read(limit)
        except OSError as exc:
            raise os_error(exc, "read", self._where(self._parts(key))) from None

    def delete(self, key: str) -> None:
        parts = self._parts(key)
        path = self._where(parts)
        dfd = self._open_dir(parts[:-1])
        if dfd is None:
            return
        try:
            st = self._lstat(dfd, parts[-1])
            if st is None:
                return
            if stat.S_ISLNK(st.st_mode):
                raise link_refused(_shown(path))  # never removed: not the archiver's
            os.unlink(parts[-1], dir_fd=dfd)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise os_error(exc, "delete", path) from None
        finally:
            os.close(dfd)

    def missing_dirs(self, key: str) -> list[str]:
        parts = self._parts(key)[:-1]
        for n in range(len(parts) + 1):
            dfd = self._open_dir(parts[:n])
            if dfd is None:  # missing (or a file: writing would fail, nothing would be made)
                return ["/".join(parts[:m]) for m in range(len(parts), max(n, 1) - 1, -1)]
            os.close(dfd)
        return []

    def remove_empty_dir(self, directory: str) -> None:
        parts = self._parts(directory)
        dfd = self._open_dir(parts[:-1])
        if dfd is None:
            return
        try:
            st = self._lstat(dfd, parts[-1])
            if st is not None and stat.S_ISDIR(st.st_mode):  # a link is never removed
                os.rmdir(parts[-1], dir_fd=dfd)
        except OSError:
            pass  # not empty (something else is there now), or gone
        finally:
            os.close(dfd)

    def list(self, prefix: str = "") -> Iterator[tuple[str, ObjectInfo]]:
        """Regular files under ``prefix``, in key order (as S3 and GCS list), one directory in
        memory at a time; symlinks and temp files are left out, a linked directory is never
        entered (each directory is opened from its parent without following a link)."""
        directory = prefix.rpartition("/")[0]
        try:
            dfd = self._open_dir(self._parts(directory) if directory else [])
        except NotOurs:
            return  # the prefix's directory is a link: nothing of ours under it
        if dfd is None:
            return
        try:
            yield from self._walk(dfd, self._where(directory.split("/")) if directory else self.root,
                                  f"{directory}/" if directory else "", prefix)
        finally:
            os.close(dfd)

    def _walk(self, dfd: int, path: Path, rel: str, prefix: str) -> Iterator[tuple[str, ObjectInfo]]:
        try:
            with os.scandir(dfd) as it:
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
                        try:
                            child = os.open(entry.name, _DIR_FLAGS, dir_fd=dfd)
                        except OSError:
                            continue  # removed, or replaced by a link, meanwhile: never entered
                        try:
                            yield from self._walk(child, path / entry.name, key + "/", prefix)
                        finally:
                            os.close(child)
                elif entry.is_file(follow_symlinks=False) and TEMP_MARKER not in entry.name and key.startswith(prefix):
                    yield key, ObjectInfo(size=entry.stat(follow_symlinks=False).st_size)
            except FileNotFoundError:
                continue  # removed while listing

    def read_chunks(self, key: str, chunk_size: int = COPY_CHUNK) -> Iterator[bytes]:
        """The object's content, streamed (the scrub's ``--deep`` re-hash); a link is never
        read through (``NotOurs``)."""
        fd = self._open_file(key)
        if fd is None:
            raise StorageError(f"cannot read {_shown(self._where(self._parts(key)))}: gone")
        try:
            with os.fdopen(fd, "rb") as fh:
                while chunk := fh.read(chunk_size):
                    yield chunk
        except OSError as exc:
            raise os_error(exc, "read", self._where(self._parts(key))) from None


def _same_file(dfd: int, name: str, fd: int) -> bool:
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except OSError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _swept(directory: Path) -> tuple[str, str]:
    """``directory`` in this process's record of sweeps (``tempnames.SWEEPS``)."""
    return ("file", str(directory))


def _unlink_quietly(dfd: int, name: str) -> bool:
    """Remove ``name`` from the directory ``dfd``; whether it is gone."""
    try:
        os.unlink(name, dir_fd=dfd)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True
