"""Stop or kill a real training run (scripts/train_fold.py) at many moments, resume it, and require the final
weights to be bit-identical to a run never interrupted.

The process is what is under test here (SIGKILL in the middle of a checkpoint write; SIGTERM and SIGINT sent to
the whole process group, as a scheduler's preemption and a terminal's Ctrl-C do, with the loader's worker
processes in it), so the runs are subprocesses; the run never interrupted is trained in-process.

The run exercises every source of randomness the resume must carry: sample order, per-sample
augmentation (demo.yaml's Affine), dropout (torch RNG), mixup/cutmix (numpy RNG), plus EMA, a cosine
schedule with warmup, a recovery checkpoint at every optimizer step (7 steps per epoch, 3 epochs) and the
average of the last 2 epochs' weights (train.swa_epochs), whose running sum must travel in the checkpoints.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import ROOT, write_tiny_competition

from comp.experiment import checkpoint as ckpt_io
from comp.experiment import load_config
from comp.train.loop import fit

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # same thread count in every run
ARGS = ["epochs=3", "batch_size=2", "image_size=16", "num_workers=0", "folds.n_folds=2", "data.source=competition",
        "model.name=timm/test_efficientnet", "model.drop_rate=0.3", "train.ema=true", "train.mixup=0.4",
        "train.cutmix=0.4", "train.recovery_every=1", "optim.warmup_epochs=0.5", "train.swa_epochs=2"]


def start(data: Path, out: Path, *extra: str, resume: bool = False) -> subprocess.Popen:
    """scripts/train_fold.py on fold 0 in its own session (its process group: the script and its loader
    workers); stderr goes to out/stderr.log, appended across runs."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(ROOT / "scripts" / "train_fold.py"), "--fold", "0", *(["--resume"] if resume else []),
           *ARGS, f"data.root={data}", f"out_dir={out}", *extra]
    with open(out / "stderr.log", "a") as log:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=ENV, cwd=str(ROOT),
                                start_new_session=True)


def poll(proc: subprocess.Popen, cond, timeout: float = 120) -> bool:
    """Wait until `cond()` holds (True) or the process ends (False)."""
    end = time.monotonic() + timeout
    while proc.poll() is None:
        if cond():
            return True
        if time.monotonic() > end:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("timed out waiting for the training run")
        time.sleep(0.0005)
    return False


def stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def freeze(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGSTOP)
    while not stopped(proc.pid):
        time.sleep(0.0002)


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def kill_during_write(proc: subprocess.Popen, tmp: Path, skip: int = 0) -> None:
    """SIGKILL while `tmp` (a checkpoint being written) exists, after `skip` writes: freeze the process as
    soon as the file appears, and kill it if the write is still unfinished, else wait for the next."""
    while poll(proc, tmp.exists):
        freeze(proc)
        if tmp.exists() and skip == 0:
            kill(proc)
            return
        os.kill(proc.pid, signal.SIGCONT)
        skip -= tmp.exists()
        while tmp.exists() and proc.poll() is None:  # this write finishing
            time.sleep(0.0002)
    raise AssertionError(f"the run ended before a write of {tmp.name} could be interrupted")


def mtime(path: Path) -> int | None:
    """`path`'s modification time, None when it is not there (the run may remove it at any moment: recovery.pt
    goes once the epoch's last.pt is written)."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return None


def changed(path: Path):
    """A condition: `path` is (re)written after this call."""
    before = mtime(path)
    return lambda: (now := mtime(path)) is not None and now != before


def signal_inside_epoch(proc: subprocess.Popen, recovery: Path, sig: int, epoch: int | None = None) -> None:
    """`sig` to the run's whole process group while the run is inside `epoch`'s steps (any epoch's when None):
    the run is frozen at each new `recovery` (written atomically, so whole) and signalled only when that
    checkpoint is of `epoch`; the signal is then handled at the next step, still in the epoch. (A signal
    sent after a plain poll could land in the validation after the epoch's last step on a loaded machine:
    the run then ends with last.pt and no recovery.pt.)"""
    while poll(proc, changed(recovery)):
        freeze(proc)
        try:  # frozen: the file is the run's last recovery checkpoint, or gone at the epoch's end
            hit = epoch is None or torch.load(recovery, weights_only=True)["epoch"] == epoch
        except FileNotFoundError:
            hit = False
        if hit:
            os.killpg(proc.pid, sig)  # the workers ignore it; the script acts after the current step
        os.kill(proc.pid, signal.SIGCONT)
        if hit:
            return
    raise AssertionError(f"the run ended before a recovery checkpoint (epoch {epoch})")


def assert_latest_loads(fold: Path) -> tuple[int, int]:
    """Every checkpoint left in the folder loads with weights_only=True; returns the newest (epoch, step)."""
    for p in fold.glob("*.pt"):
        ckpt_io.load(p)
    found = ckpt_io.newest([fold / "recovery.pt", fold / "last.pt"])
    return (found[1]["epoch"], found[1]["step"]) if found else (0, 0)


def assert_stopped_by(proc: subprocess.Popen, sig: int, out: Path, since: int) -> None:
    """The run ended on `sig` as a stop: exit code 128 + sig, a recovery checkpoint named, the command to
    resume with, and no traceback or dead worker reported (in the run's own part of stderr.log)."""
    code = proc.wait(60)
    err = (out / "stderr.log").read_text(errors="replace")[since:]
    assert code == 128 + sig, (code, err[-2000:])
    assert "internal error" not in err and "killed by signal" not in err and "Traceback" not in err, err[-2000:]
    recovery = out / "fold0" / "recovery.pt"
    assert recovery.is_file()
    assert f"stopped by {signal.Signals(sig).name}; checkpoint {recovery}" in err, err[-2000:]
    assert "resume with: python scripts/train_fold.py --fold 0 --resume" in err, err[-2000:]


def assert_same_training(a: Path, b: Path) -> None:
    ca, cb = (torch.load(p / "fold0" / "last.pt", weights_only=True) for p in (a, b))
    assert int(cb["swa"]["n_averaged"]) == 2 and cb["swa_done"]
    for part in ("model", "ema", "swa"):
        assert ca[part].keys() == cb[part].keys()
        for k in ca[part]:
            assert torch.equal(ca[part][k], cb[part][k]), f"{part}.{k} differs"
    for k, state in ca["optimizer"]["state"].items():
        for name, t in state.items():
            assert torch.equal(t, cb["optimizer"]["state"][k][name]), f"optimizer state {k}.{name} differs"
    cols = ["epoch", "train_loss", "valid_loss", "accuracy", "auc", "lr", "weights"]
    ma, mb = (pd.read_csv(p / "fold0" / "metrics.csv")[cols] for p in (a, b))
    pd.testing.assert_frame_equal(ma, mb, check_exact=True)  # epoch losses too, across the partial epochs


def test_killed_or_signalled_anywhere_resumes_bit_for_bit(tmp_path):
    data = write_tiny_competition(tmp_path / "data")
    out = tmp_path / "killed"
    fold, log = out / "fold0", out / "stderr.log"
    moments = []

    # 1. SIGKILL in the middle of writing last.pt (between epochs 0 and 1)
    p = start(data, out)
    kill_during_write(p, fold / ".last.pt.tmp")
    assert (fold / ".last.pt.tmp").exists()  # the kill did cut a write short
    moments.append(assert_latest_loads(fold))

    # 2. SIGTERM to the process group mid-epoch (a scheduler's preemption): a recovery checkpoint after the
    #    current step, the message, exit 128+15; resumed with 2 DataLoader workers where the first run had none
    since = log.stat().st_size
    p = start(data, out, "num_workers=2", resume=True)
    signal_inside_epoch(p, fold / "recovery.pt", signal.SIGTERM)
    assert_stopped_by(p, signal.SIGTERM, out, since)
    moments.append(assert_latest_loads(fold))
    assert moments[-1][1] > 0  # stopped mid-epoch

    # 3. SIGKILL mid-epoch, in the middle of writing recovery.pt (two writes after the resume)
    p = start(data, out, resume=True)
    kill_during_write(p, fold / ".recovery.pt.tmp", skip=2)
    moments.append(assert_latest_loads(fold))

    # 4. SIGINT to the process group (Ctrl-C) in epoch 2, once epoch 1 is in the average, with 2 workers
    since = log.stat().st_size
    p = start(data, out, "num_workers=2", resume=True)
    signal_inside_epoch(p, fold / "recovery.pt", signal.SIGINT, epoch=2)
    assert_stopped_by(p, signal.SIGINT, out, since)
    ck = torch.load(fold / "recovery.pt", weights_only=True)
    assert ck["epoch"] == 2 and ck["step"] > 0 and int(ck["swa"]["n_averaged"]) == 1
    moments.append(assert_latest_loads(fold))

    # 5. to the end
    p = start(data, out, resume=True)
    assert p.wait(120) == 0, log.read_text()[-3000:]
    assert moments == sorted(set(moments)), moments  # each interruption came after some progress
    assert not list(fold.glob(".*.tmp"))  # the cut-short writes were cleaned up

    # the same run never interrupted, in-process (one thread, as the runs above)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(load_config(None, [*ARGS, f"data.root={data}", f"out_dir={tmp_path / 'base'}"]), 0)
    finally:
        torch.set_num_threads(threads)
    assert_same_training(tmp_path / "base", out)
