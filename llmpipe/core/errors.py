"""The one exception type for the user's mistakes, and how the CLI shows it.

Anything that is the user's to fix (a bad file, field, config value or parent checkpoint) raises
`UserError`; the CLI prints it as one line and exits with code 2. Any other exception is a bug in
llmpipe and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

EXIT_USER_ERROR = 2
# A stage ran but its result failed a check (regression gate, diverged loss): exit code 3.
EXIT_CHECK_FAILED = 3
# Every character str.splitlines() breaks at, mapped to its escape.
_LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}


class UserError(Exception):
    """A mistake the user can fix, located as precisely as we know (file, line, field)."""

    exit_code = EXIT_USER_ERROR

    def __init__(
        self,
        what: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.what = what
        self.file = file
        self.line = line
        self.field = field
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """Render as `<file>:<line>: <field>: <what> — <hint>` with the parts we know."""
        where = ""
        if self.file:
            where = str(self.file) + (f":{self.line}" if self.line is not None else "") + ": "
        field = f'"{self.field}" ' if self.field else ""
        text = f"{where}{field}{self.what}"
        if self.hint:
            text += f" — {self.hint}"
        # One line whatever the data held: a line break quoted from a file (a key, a value, a path)
        # is shown escaped, as repr() would.
        return text.translate(_LINE_BREAKS)


# OSErrors that come from the user's machine or arguments, not from a bug in llmpipe: a full disk,
# a quota, no permission, a read-only file system, a path through a file. The CLI shows them as one
# line (exit code 2); any other OSError keeps its traceback.
_FIXABLE_OS_ERRORS = {
    errno.ENOSPC: "free disk space (or point --out / $LLMPIPE_CACHE at a larger disk) and rerun; finished stages are untouched",
    errno.EDQUOT: "free space within your disk quota and rerun; finished stages are untouched",
    errno.EROFS: "the file system is read-only: choose a writable folder (--out)",
    errno.EACCES: "no permission: choose a folder you can write (--out) or fix its permissions",
    errno.EPERM: "not permitted: choose a folder you can write (--out) or fix its permissions",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another path",
    errno.ENAMETOOLONG: "use a shorter path",
}


def os_error_line(error: OSError) -> str | None:
    """The one-line message for an OSError the user can fix (disk full, no permission, ...), or None
    when it is not one of those and so should keep its traceback."""
    hint = _FIXABLE_OS_ERRORS.get(error.errno)
    if hint is None:
        return None
    what = error.strerror or os.strerror(error.errno)
    where = error.filename if error.filename is not None else "<unknown file>"
    return UserError(what, file=str(where), hint=hint).one_line()


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Name `path` in an OSError raised inside the block that names no file of its own.

    A full disk shows up in write() or fsync(), whose OSError carries no file name; the one-line
    message must still say where the disk filled up."""
    try:
        yield
    except OSError as e:
        if e.filename is not None or e.errno is None:
            raise
        raise OSError(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
