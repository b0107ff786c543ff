"""User-facing errors: raised for bad input, printed as one `error:` line by the scripts (exit code 2).

A `UserError` raised in a DataLoader worker process keeps its meaning in the main process: torch re-raises
a worker's exception by calling its class with one message (`Caught X in DataLoader worker process N.`
plus the worker's traceback: torch.utils._utils.ExceptionWrapper.reraise), or as a RuntimeError when the
class takes other arguments; `worker_user_error` finds the original message in either. Every UserError
(subclasses included, whatever their __init__) pickles and unpickles to itself (`__reduce__`), so one
raised in a multiprocessing pool reaches the parent too."""

from __future__ import annotations

import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# torch's re-raise of a worker's exception: "Caught ImageError in DataLoader worker process 0.\nOriginal Traceback"
_WORKER = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\s*(?:\n|\\n)Original Traceback")


def one_line(text: str) -> str:
    """`text` on one line: control characters (a newline or carriage return in a value the user gave, an
    escape sequence) shown escaped, as `repr` would show them, so an echoed value can never break the
    one-line contract of an error or inject terminal codes."""
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


def _rebuild(cls: type, args: tuple, state: dict[str, Any]) -> UserError:
    """Unpickle a UserError of any subclass without calling its __init__ (see `UserError.__reduce__`)."""
    e = cls.__new__(cls)
    Exception.__init__(e, *args)
    e.__dict__.update(state)
    return e


def _worker_message(text: str) -> tuple[str, str] | None:
    """(exception class name, its one-line message) from torch's text of an exception re-raised from a
    DataLoader worker, or None when `text` is not one. The message is the traceback's last line, after
    the class name (`comp.data.image_base.ImageError: image file is truncated: ...`)."""
    m = _WORKER.match(text)
    if not m:
        return None
    lines = [ln for ln in re.split(r"\n|\\n", text.rstrip()) if ln.strip()]
    last = lines[-1] if lines else ""
    name, sep, message = last.partition(": ")
    if not sep or name.rsplit(".", 1)[-1] != m.group(1):
        return None
    return m.group(1), message


class UserError(Exception):
    """A problem with the user's config, data, checkpoint or submission; the message names the culprit.
    The message is kept on one line whatever it echoes (`one_line`)."""

    def __init__(self, message: object = ""):
        text = str(message)
        caught = _worker_message(text)  # torch's re-raise of a worker's UserError: its own message only
        super().__init__(one_line(caught[1] if caught else text))

    def __reduce__(self) -> tuple:
        return _rebuild, (type(self), self.args, dict(self.__dict__))


def _subclasses(cls: type) -> list[type]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _subclasses(sub)
    return out


def worker_user_error(e: BaseException) -> UserError | None:
    """The UserError behind `e` when `e` is torch's re-raise of a UserError (or subclass) raised in a
    DataLoader worker: the worker's own message, as a UserError. None for anything else (the kit's own
    bugs stay internal errors)."""
    if isinstance(e, UserError):
        return e
    caught = _worker_message(str(e))
    if caught is None or caught[0] not in {c.__name__ for c in _subclasses(UserError)}:
        return None
    return UserError(caught[1])
