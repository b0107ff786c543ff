"""Questions about the machine with one portable answer each, so no Linux-only call is made without a
fallback (the CPU demo is promised on macOS and Windows too).

- `os.sched_getaffinity` exists on Linux only; `os.process_cpu_count` (Python 3.13+) is its portable
  successor, `os.cpu_count` the last resort.
- the `forkserver` start method exists where `fork` does (Linux, macOS); Windows has `spawn` only.
- the checkout's git commit, recorded with every run and submission, is `unknown` where git is not.
- a child process of the `spawn` and `forkserver` start methods imports the main module again (spawn in
  each child, forkserver once in its server); a script that calls the kit at its top level, with no
  `if __name__ == "__main__":` guard, would then run again in it (`unguarded_main`), so the kit's process
  pools fall back to this process for such a script, saying so in one line.
"""

from __future__ import annotations

import ast
import multiprocessing
import os
import subprocess
import sys
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


RERUNS_MAIN = ("spawn", "forkserver")  # start methods whose children import the main module afresh
GUARD = 'if __name__ == "__main__":'


def default_start_method() -> str:
    """The start method a pool with no context of its own uses, read without fixing it (unlike
    multiprocessing.get_start_method(), which sets the default on first call): the one set, else the
    platform's default (the first of get_all_start_methods: fork on Linux before Python 3.14, spawn on
    macOS and Windows)."""
    return multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]


def rerun_main(method: str) -> Path | None:
    """The file a child process of start `method` runs again from its top: the main module's, when `method`
    imports the main module afresh (RERUNS_MAIN) and multiprocessing re-runs it (a script, or a `-m` module
    other than a package's `__main__`, as multiprocessing.spawn.get_preparation_data decides); None for
    fork, an interactive session or notebook, `python -c`."""
    if method not in RERUNS_MAIN:
        return None
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)
    name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if not file or name == "__main__" or name.endswith(".__main__") or Path(file).stem == "ipython":
        return None
    return Path(file) if Path(file).is_file() else None


def has_main_guard(path: Path) -> bool:
    """Whether the top level of the Python file `path` holds an `if __name__ == "__main__":` block (either
    operand order, parsed with ast); True when it cannot be read or parsed (nothing is claimed then)."""
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return True
    for node in tree.body:
        test = node.test if isinstance(node, ast.If) else None
        if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq):
            sides = [test.left, *test.comparators]
            if any(isinstance(v, ast.Name) and v.id == "__name__" for v in sides) and any(
                    isinstance(v, ast.Constant) and v.value == "__main__" for v in sides):
                return True
    return False


def unguarded_main(method: str) -> Path | None:
    """The main script that each child process of start `method` would run again from its top because it
    has no `if __name__ == "__main__":` guard (a plain `import comp; comp.prepare(cfg)` script), else None.
    A pool started from such a script re-runs the script's work in its children, which then fail (a child
    may not start processes while it imports the main module) after minutes spent redoing it."""
    path = rerun_main(method)
    return path if path is not None and not has_main_guard(path) else None


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
