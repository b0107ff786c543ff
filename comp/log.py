"""Logging for the kit: every message to stderr (above the progress bars), so stdout stays clean for
the CSV that scripts/predict.py writes; and the one place that decides whether progress bars are drawn.

A bar is drawn only when stderr is a terminal and `--quiet` was not given: a bar written to a file or a
pipe (`2> fold0.log`, a Kaggle notebook's captured output, CI) is a stream of carriage-return frames, while
the loop's one line per epoch (comp.train.loop) says the same in a form a log can keep."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

_quiet = False  # set by the scripts' --quiet (comp.cli.main)


def log(msg: str) -> None:
    tqdm.write(msg, file=sys.stderr)


def set_quiet(quiet: bool) -> None:
    """--quiet: no progress bars, even on a terminal."""
    global _quiet
    _quiet = bool(quiet)


def bars_enabled() -> bool:
    """Whether progress bars are drawn: stderr is a terminal (isatty) and not --quiet."""
    isatty = getattr(sys.stderr, "isatty", None)
    return not _quiet and bool(isatty and isatty())


def progress(total: int, desc: str, *, initial: int = 0, enabled: bool = True, **kw: Any) -> tqdm:
    """A tqdm bar on stderr, disabled (drawing nothing, counting nothing) unless `bars_enabled()` and
    `enabled` (e.g. only on DDP rank 0). Every progress bar of the kit is made here.

    Args:
        total: steps the bar counts to; initial: steps already done (a resumed epoch).
        kw: further tqdm arguments (leave, postfix...).
    """
    kw = {"leave": False, "dynamic_ncols": True, **kw}
    return tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, disable=not (enabled and bars_enabled()),
                **kw)
