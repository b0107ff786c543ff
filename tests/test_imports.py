"""Importing the kit changes no global state (shared/DESIGN.md): every comp module, imported in a fresh
interpreter after the libraries it imports, leaves the process as it found it: no exit hook, no matplotlib
backend or pyplot, no cuDNN / TF32 flag, no signal handler, no torch default dtype or thread count, no
multiprocessing start method, no warnings filter, no OpenCV thread count or log level, no environment
variable. Whatever the kit needs of these it sets where it acts (a worker's initializer, the training run),
and the failure names the first module whose import changed each one."""

from __future__ import annotations

import ast
import json
import subprocess
import sys

from helpers import ROOT

COMP = ROOT / "comp"
STATEFUL = {"matplotlib.pyplot", "pylab"}  # importing these is itself a global change (a backend, an exit hook)

PROBE = r'''
import atexit, importlib, json, multiprocessing, os, signal, sys, warnings
ROOT, LIBRARIES, MODULES = json.loads(sys.argv[1])
sys.path.insert(0, ROOT)
for name in LIBRARIES:  # their own import-time effects are not the kit's: they happen before the baseline
    try:
        importlib.import_module(name)
    except Exception:  # an optional package (simplejpeg, ...) or a name that is no module
        pass
import cv2, matplotlib, numpy as np, torch


def state():
    rc = matplotlib.rcParams
    return {
        "atexit callbacks": atexit._ncallbacks(),
        "matplotlib rcParams": {k: repr(dict.__getitem__(rc, k)) for k in sorted(dict.keys(rc))},  # backend unresolved
        "matplotlib.pyplot imported": "matplotlib.pyplot" in sys.modules,
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
        "grad enabled": torch.is_grad_enabled(),
        "signal handlers": {s: repr(signal.getsignal(getattr(signal, s))) for s in ("SIGINT", "SIGTERM", "SIGCHLD")},
        "torch default dtype": str(torch.get_default_dtype()),
        "torch threads": torch.get_num_threads(),
        "multiprocessing start method": multiprocessing.get_start_method(allow_none=True),
        "warnings filters": repr(warnings.filters),
        "opencv threads": cv2.getNumThreads(),
        "opencv log level": cv2.utils.logging.getLogLevel(),
        "numpy error handling": np.geterr(),
        "environment": dict(os.environ),
        "sys.path": list(sys.path),
        "excepthook": repr(sys.excepthook),
    }


before = state()
changed = {}
for name in MODULES:
    importlib.import_module(name)
    now = state()
    for key in before:
        if key not in changed and now[key] != before[key]:
            changed[key] = name
after = state()
print(json.dumps({k: {"by": changed[k], "before": before[k], "after": after[k]} for k in changed}, default=repr))
'''


def module_name(path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def libraries() -> list[str]:
    """Every non-comp module that a comp module imports at its top level (try blocks included), and for
    `from X import y` X.y too (y may be a submodule); not pyplot, whose import is a change of its own."""
    out: set[str] = set()
    for path in COMP.rglob("*.py"):
        tree = ast.parse(path.read_text())
        nodes = [n for top in tree.body for n in ast.walk(top) if not isinstance(top, (ast.FunctionDef, ast.ClassDef))]
        for node in nodes:
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return sorted(m for m in out if m.split(".")[0] not in ("comp", "__future__") and m not in STATEFUL)


def test_importing_every_comp_module_changes_nothing_global():
    modules = sorted(module_name(p) for p in COMP.rglob("*.py"))
    args = json.dumps([str(ROOT), libraries(), modules])
    res = subprocess.run([sys.executable, "-c", PROBE, args], capture_output=True, text=True, timeout=300,
                         cwd=str(ROOT))
    assert res.returncode == 0, res.stderr[-3000:]
    changed = json.loads(res.stdout.strip().splitlines()[-1])
    assert changed == {}, "\n".join(f"{k}: changed by importing {v['by']}: {v['before']} -> {v['after']}"[:600]
                                    for k, v in changed.items())
    assert len(modules) > 50  # every module, not an empty glob
