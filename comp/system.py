"""Questions about the machine with one portable answer each, so no Linux-only call is made without a
fallback (the CPU demo is promised on macOS and Windows too).

- `os.sched_getaffinity` exists on Linux only; `os.process_cpu_count` (Python 3.13+) is its portable
  successor, `os.cpu_count` the last resort.
- the `forkserver` start method exists where `fork` does (Linux, macOS); Windows has `spawn` only.
- the checkout's git commit, recorded with every run and submission, is `unknown` where git is not.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from multiprocessing.context import BaseContext
from pathlib import Path


def usable_cpus() -> int:
    """CPU cores this process may run on (>= 1): its affinity mask where the OS reports one (Linux:
    taskset, a container's cpuset), else `os.process_cpu_count()` (Python 3.13+), else `os.cpu_count()`."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    count = getattr(os, "process_cpu_count", os.cpu_count)()
    return max(1, count or 1)


def process_context() -> BaseContext:
    """The multiprocessing context of the kit's process pools: `forkserver` (clean workers, not forks of
    a parent that may hold torch/BLAS threads) where the OS has it, `spawn` elsewhere (Windows)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def git_commit(repo: Path | None = None) -> str:
    """The commit of the kit's checkout (12 hex digits), `+dirty` when tracked files differ from it;
    `unknown` outside git or without a git executable. Recorded with every run (comp.train.tracking) and
    every submission (comp.submit.kaggle)."""
    repo = repo or Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, timeout=30)
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
