"""What every script shares: `--config PATH`, `--debug`, `KEY=VALUE` overrides, and the mapping of user
errors to one `error:` line on stderr with exit code 2 (a traceback only with `--debug`).

Besides `UserError`, some failures are the machine's, not the kit's, and get the same one line:
running out of memory (CUDA, or the CPU allocator: the hint is a smaller batch_size), a file system that
refuses a write or a path (disk full, read-only, permissions, a file where a folder belongs: the path is
named), and DataLoader workers out of shared memory (/dev/shm: the hint is fewer num_workers or a larger
--shm-size). A UserError raised in a DataLoader worker is shown as its own line (comp.errors).

Anything else is the kit's own bug and stays one: `internal error: ...` names the innermost frame
(file:line in function) and a file holding the full traceback (`comp-internal-error-<time>.txt` in the
temporary folder); `--debug` prints the traceback too. Flags and KEY=VALUE overrides may come in any
order (`parse_intermixed_args`)."""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from comp.errors import worker_user_error
from comp.log import set_quiet


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every script takes."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (default: configs/demo.yaml)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one error line")
    p.add_argument("--quiet", action="store_true", help="no progress bars (drawn only when stderr is a terminal)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. epochs=3")
    return p


# OSErrors that are the file system's answer, not a bug: shown as `error: <why>: <file>`
FS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR,
             errno.ENAMETOOLONG, errno.EEXIST, errno.ELOOP, errno.ETXTBSY}
# torch's words for DataLoader workers out of shared memory (a worker killed by SIGBUS; /dev/shm full)
SHM_PATTERNS = (re.compile(r"killed by signal: Bus error"), re.compile(r"out of shared memory"),
                re.compile(r"insufficient shared memory"),
                re.compile(r"unable to write to file </torch_[^>]*>: No space left on device"),
                re.compile(r"No space left on device.*/dev/shm|/dev/shm.*No space left on device"))
SHM_HINT = ("the DataLoader workers ran out of shared memory (/dev/shm{size}); use fewer workers (e.g. "
            "num_workers={half}) or a smaller batch_size, or give the container more: docker run --shm-size=8g "
            "(Kubernetes: an emptyDir volume with medium: Memory at /dev/shm)")
# torch's words when a worker process died without an exception (the SIGBUS of a full /dev/shm, a worker
# killed for RAM, a crash in a C library): the worker's own note, if any, is on stderr above the line
WORKER_DIED = re.compile(r"DataLoader worker \(pid\(s\) ([\d, ]+)\) exited unexpectedly")
WORKER_DIED_HINT = ("a DataLoader worker process died (pid {pids}): most often out of shared memory (/dev/shm{size}: "
                    "its note 'bus error' above says so) or RAM; use fewer workers (e.g. num_workers={half}) or give "
                    "the container more: docker run --shm-size=8g; num_workers=0 shows any other error in the main "
                    "process")
WORKER_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')
OOM_WORDS = ("out of memory", "can't allocate memory", "Cannot allocate memory")  # CUDA; torch's CPU allocator


def _batch_hint(args: argparse.Namespace) -> str:
    """`try a smaller batch_size (now N: e.g. batch_size=N/2)`, from the run's own config when it loads
    (scripts taking --config and KEY=VALUE overrides; the others get the plain hint)."""
    if not (hasattr(args, "config") and hasattr(args, "overrides")):
        return "try a smaller batch_size"
    try:
        from comp.config import read_config

        bs = read_config(args.config, args.overrides).batch_size
    except Exception:
        return "try a smaller batch_size"
    return f"try a smaller batch_size (now {bs}: e.g. batch_size={max(1, bs // 2)})"


def shm_size() -> str:
    """', 64 MiB' from /dev/shm's size where it can be read, else ''."""
    try:
        import shutil

        return f", {shutil.disk_usage('/dev/shm').total / 2**20:.0f} MiB"
    except OSError:
        return ""


def _num_workers(args: argparse.Namespace) -> int | None:
    try:
        from comp.config import read_config

        return int(read_config(args.config, args.overrides).num_workers)
    except Exception:
        return None


def user_line(e: BaseException, args: argparse.Namespace) -> str | None:
    """The one `error:` line for an exception that is the user's or the machine's, not the kit's; None for
    the kit's own bugs."""
    hidden = worker_user_error(e)
    if hidden is not None:
        return str(hidden)
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or any(w in first for w in OOM_WORDS):
        where = "GPU" if type(e).__name__ == "OutOfMemoryError" or "CUDA" in first else "RAM"
        return f"out of memory ({where}); {_batch_hint(args)}"
    shm_text = f"{text} {getattr(e, 'filename', '') or ''}"
    if isinstance(e, (RuntimeError, OSError)) and any(p.search(shm_text) for p in SHM_PATTERNS):
        workers = _num_workers(args)
        return SHM_HINT.format(size=shm_size(), half=max(0, (workers or 2) // 2))
    died = WORKER_DIED.search(first) if isinstance(e, RuntimeError) else None
    if died:
        workers = _num_workers(args)
        return WORKER_DIED_HINT.format(pids=died.group(1), size=shm_size(), half=max(0, (workers or 2) // 2))
    if isinstance(e, OSError) and e.errno in FS_ERRNOS:
        names = [str(f) for f in (e.filename, e.filename2) if f]
        what = {errno.EEXIST: "a file is in the way (a folder belongs there)",
                errno.ENOTDIR: "a file is in the way (a folder belongs there)"}.get(e.errno, e.strerror or first)
        return f"{what}" + (f": {' -> '.join(names)}" if names else "")
    return None


def internal_error(e: BaseException, debug: bool) -> str:
    """Write the full traceback of the kit's own bug to a file; the `internal error:` line naming it and
    the innermost frame (file:line in function)."""
    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    frames = traceback.extract_tb(e.__traceback__)
    where = f" at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}" if frames else ""
    in_worker = WORKER_FRAME.findall(str(e))  # re-raised from a DataLoader worker: the worker's own frame
    if in_worker and str(e).startswith("Caught "):
        where = f" at {in_worker[-1][0]}:{in_worker[-1][1]} in {in_worker[-1][2]} (in a DataLoader worker)"
    path = Path(tempfile.gettempdir()) / f"comp-internal-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    try:
        path.write_text(f"{' '.join(sys.argv)}\n\n{text}")
        saved = f"traceback in {path}"
    except OSError as w:
        saved = f"the traceback could not be saved ({w.strerror}); rerun with --debug"
    if debug:
        print(text, file=sys.stderr, end="")
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"internal error: {type(e).__name__}: {first}{where} ({saved})"


def main(run: Callable[[argparse.Namespace], Any], p: argparse.ArgumentParser, argv: list[str] | None = None) -> None:
    """Parse arguments (flags and KEY=VALUE overrides in any order) and call `run(args)`; exit 2 with one
    `error:` line on a `UserError` (from a DataLoader worker too), out of memory, out of shared memory or a
    refused path, 130 on Ctrl-C, and 1 with an `internal error:` line naming the innermost frame and the
    file holding the traceback on anything else (the kit's own bugs)."""
    args = p.parse_intermixed_args(argv)
    set_quiet(getattr(args, "quiet", False))
    try:
        code = run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        line = user_line(e, args)
        if line is None:
            print(internal_error(e, getattr(args, "debug", False)), file=sys.stderr)
            sys.exit(1)
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"error: {line}", file=sys.stderr)
        sys.exit(2)
    sys.exit(int(code or 0))
