"""What every script shares: `--config PATH`, `--debug`, `KEY=VALUE` overrides, and the mapping of user
errors to one `error:` line on stderr with exit code 2 (a traceback only with `--debug`).

Besides `UserError`, two kinds of failure are the machine's, not the kit's, and get the same one line:
running out of memory (CUDA, or the CPU allocator: the hint is a smaller batch_size) and a file system
that refuses a write (disk full, read-only, permissions: the file is named)."""

from __future__ import annotations

import argparse
import errno
import sys
import traceback
from collections.abc import Callable
from typing import Any

from comp.errors import UserError
from comp.log import set_quiet


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", default=None, help="YAML config (default: configs/demo.yaml)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one error line")
    p.add_argument("--quiet", action="store_true", help="no progress bars (drawn only when stderr is a terminal)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. epochs=3")
    return p


# OSErrors that are the file system's answer, not a bug: shown as `error: <why>: <file>`
FS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
             errno.ENAMETOOLONG}
OOM_WORDS = ("out of memory", "can't allocate memory", "Cannot allocate memory")  # CUDA; torch's CPU allocator


def _batch_hint(args: argparse.Namespace) -> str:
    """`try a smaller batch_size (now N: e.g. batch_size=N/2)`, from the run's own config when it loads
    (scripts taking --config and KEY=VALUE overrides; the others get the plain hint)."""
    if not (hasattr(args, "config") and hasattr(args, "overrides")):
        return "try a smaller batch_size"
    try:
        from comp.config import load_config

        bs = load_config(args.config, args.overrides).batch_size
    except Exception:
        return "try a smaller batch_size"
    return f"try a smaller batch_size (now {bs}: e.g. batch_size={max(1, bs // 2)})"


def main(run: Callable[[argparse.Namespace], Any], p: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Parse arguments and call `run(args)`; exit 2 with one `error:` line on a `UserError`, out of memory
    or a refused file write, 130 on Ctrl-C, and 1 with a one-line message (traceback with --debug) on
    anything unexpected."""
    args = p.parse_args(argv)
    set_quiet(getattr(args, "quiet", False))
    try:
        code = run(args)
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        line = None
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or any(w in first for w in OOM_WORDS):
            where = "GPU" if type(e).__name__ == "OutOfMemoryError" or "CUDA" in first else "RAM"
            line = f"out of memory ({where}); {_batch_hint(args)}"
        elif isinstance(e, OSError) and e.errno in FS_ERRNOS:
            line = f"{e.strerror or first}" + (f": {e.filename}" if e.filename else "")
        if line is None:
            if args.debug:
                raise
            print(f"internal error: {type(e).__name__}: {first} (rerun with --debug for the traceback)",
                  file=sys.stderr)
            sys.exit(1)
        if args.debug:
            traceback.print_exc()
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    sys.exit(int(code or 0))
