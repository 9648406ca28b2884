"""What a file-system backend (local, SFTP) does with a symbolic link inside its destination:
never follows it. The archiver only ever writes regular files and real directories, so a
link where an archive file or one of its directories should be is not the archiver's: it is
reported (``NotOurs``), never read through, written through, overwritten nor removed."""

from __future__ import annotations

from .base import PermanentStorageError


class NotOurs(PermanentStorageError):
    """A symbolic link (or another non-regular file) where the archiver expects its own file or
    directory: not followed, left untouched. Permanent: retrying finds the same link."""


def link_refused(where: str) -> NotOurs:
    return NotOurs(
        f"{where} is a symbolic link: the archiver writes only regular files and directories, so this is not its "
        "own; not followed, not overwritten nor removed (move it away, or replace it by the real file)"
    )
