"""Faults the tests inject in more than one area: a full disk under comp.io (the one writer of the kit's
files), a bad checkpoint in each way a real one goes bad, and a script started in its own process group to be
signalled as a terminal or a job scheduler does."""

from __future__ import annotations

import builtins
import errno
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import torch
from helpers import ROOT

import comp.io
from comp.experiment.checkpoint import FORMAT_VERSION
from comp.models import create_model

# --- a full disk --------------------------------------------------------------------------------------------


def enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def disk_full(monkeypatch, name: str, nth: int = 1) -> None:
    """The disk fills while comp.io writes the temporary of a file named `name` (a suffix): its `nth` such
    write gets half its bytes, then ENOSPC. comp.io is the one writer of the kit's files, so this is
    every file's disk-full path."""
    real, seen = comp.io._open, [0]

    class Half:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[: len(data) // 2])
            raise enospc(self.f.name)

        def __getattr__(self, key):
            return getattr(self.f, key)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def opener(path, mode="r", *args, **kwargs):
        f = real(path, mode, *args, **kwargs)
        if "w" in mode and str(path).endswith(".tmp") and name in Path(path).name:
            seen[0] += 1
            if seen[0] == nth:
                return Half(f)
        return f

    monkeypatch.setattr(comp.io, "_open", opener)


# --- a bad checkpoint: each fault is f(path, ctx) with ctx {"two_class": fixture, "marker": Path} ------------


class Payload:
    """Unpickling this calls exec(), which writes the marker file: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('the code ran')",)


def edit(fn):
    """A fault that rewrites the checkpoint's dict through fn(ck, ctx)."""
    def apply(path: Path, ctx: dict) -> None:
        ck = torch.load(path, weights_only=True)
        torch.save(fn(ck, ctx), path)
    return apply


def truncate(path: Path, ctx: dict) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def other_classes(path: Path, ctx: dict) -> None:
    shutil.copy(ctx["two_class"]["fold"] / path.name, path)


def evil(path: Path, ctx: dict) -> None:
    ck = torch.load(path, weights_only=True)
    torch.save({**ck, "hook": Payload(ctx["marker"])}, path)


def _other_architecture(ck: dict, ctx: dict) -> dict:
    torch.manual_seed(0)
    return {**ck, "model": create_model("timm/test_efficientnet", 3).state_dict()}


# name -> (what is done to the checkpoint, extra overrides, what the error line must name)
BAD_CHECKPOINTS = {
    "truncated": (truncate, [], ["cannot load checkpoint", "truncated or not a PyTorch checkpoint"]),
    "empty": (lambda p, c: p.write_bytes(b""), [], ["cannot load checkpoint", "the file is empty (0 bytes)"]),
    "not a checkpoint": (lambda p, c: p.write_text("model weights: see the attached spreadsheet\n"), [],
                         ["cannot load checkpoint", "truncated or not a PyTorch checkpoint"]),
    "pickle carrying code": (evil, [], ["cannot load checkpoint", "pickled code", "refused (weights_only=True)"]),
    "another class count": (other_classes, [], ["['0', '1'] but the data has ['0', '1', '2']"]),
    "another architecture (config)": (lambda p, c: None, ["model.name=timm/test_efficientnet"],
                                      ["was trained with a", "model"]),
    "weights of another architecture": (edit(_other_architecture), [],
                                        ["the weights do not fit timm/test_resnet"]),
    "weights saved under DDP's 'module.' names": (
        edit(lambda ck, c: {**ck, "model": {f"module.{k}": v for k, v in ck["model"].items()}}), [],
        ["the weights do not fit timm/test_resnet", "Missing key(s)"]),
    "older kit layout (weights and epoch only)": (
        edit(lambda ck, c: {"model": ck["model"], "epoch": ck["epoch"]}), [],
        ["has no 'model_name'", f"checkpoint format 0, this kit writes {FORMAT_VERSION}"]),
    "a bare state dict": (edit(lambda ck, c: ck["model"]), [], ["is not a kit checkpoint (no 'model' state dict)"]),
    "newer kit": (edit(lambda ck, c: {**ck, "format_version": FORMAT_VERSION + 1}), [],
                  [f"written by a newer kit (format {FORMAT_VERSION + 1} > {FORMAT_VERSION}); update the kit"]),
}


# --- a script signalled in its own process group ------------------------------------------------------------

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # the same thread count in every run


def start(code_or_script: str, *argv: str, log: Path) -> subprocess.Popen:
    """A script of scripts/ (or `-c` code) in its own session, so its worker processes get the signal with it;
    its stderr appended to `log`."""
    cmd = [sys.executable, *(["-c", code_or_script] if "\n" in code_or_script else
                             [str(ROOT / "scripts" / code_or_script)]), *argv]
    with open(log, "a") as f:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=f, env=ENV, cwd=str(ROOT),
                                start_new_session=True)


def signal_group(proc: subprocess.Popen, sig: int) -> int:
    """`sig` to the whole process group, as a terminal's Ctrl-C or a job scheduler does; the exit code."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"the process did not end after {signal.Signals(sig).name}") from None
