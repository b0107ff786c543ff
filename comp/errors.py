"""User-facing errors: raised for bad input, printed as one `error:` line by the scripts (exit code 2)."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: str) -> str:
    """`text` on one line: control characters (a newline or carriage return in a value the user gave, an
    escape sequence) shown escaped, as `repr` would show them, so an echoed value can never break the
    one-line contract of an error or inject terminal codes."""
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


class UserError(Exception):
    """A problem with the user's config, data, checkpoint or submission; the message names the culprit.
    The message is kept on one line whatever it echoes (`one_line`)."""

    def __init__(self, message: object = ""):
        super().__init__(one_line(str(message)))
