"""The one exception type for the user's mistakes, and how the CLI shows it.

Anything that is the user's to fix (a bad file, field, config value or parent checkpoint) raises
`UserError`; the CLI prints it as one line and exits with code 2. Any other exception is a bug in
llmpipe and keeps its traceback.
"""

from __future__ import annotations

EXIT_USER_ERROR = 2
# A stage ran but its result failed a check (regression gate, diverged loss): exit code 3.
EXIT_CHECK_FAILED = 3


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
        return text
