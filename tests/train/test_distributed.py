"""DDP (comp.train.distributed) under torchrun with 2 CPU processes (gloo): a fold trains with a frozen-backbone
warm-up, is stopped by SIGTERM mid-epoch, resumes under torchrun, and ends with the weights of a run never
stopped; the ranks agree bit for bit and only rank 0 writes. torchrun and its process group are what is under
test, so the runs are subprocesses: three launches (the run never stopped, alongside the stopped one, then
its resume), each of 2 epochs of 4 steps on 16 px images."""

from __future__ import annotations

import os
import re
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
from comp.metrics import score_all

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
ARGS = ["epochs=2", "batch_size=2", "image_size=16", "num_workers=0", "folds.n_folds=2", "data.source=competition",
        "model.name=timm/test_efficientnet", "model.drop_rate=0.3", "model.freeze_epochs=1", "train.ema=true",
        "train.mixup=0.4", "train.recovery_every=2", "optim.warmup_epochs=0.5"]


def torchrun(data: Path, out: Path, *extra: str) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "scripts" / "train_fold.py"), "--fold", "0", *ARGS, f"data.root={data}", f"out_dir={out}", *extra]
    with open(out / "stderr.log", "a") as log:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=ENV, cwd=str(ROOT),
                                start_new_session=True)


def finish(p: subprocess.Popen, out: Path, timeout: float = 240) -> str:
    try:
        rc = p.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raise
    err = (out / "stderr.log").read_text()
    assert rc == 0, err[-4000:]
    return err


def test_torchrun_two_processes_stop_resume_and_agree(tmp_path):
    data = write_tiny_competition(tmp_path / "data")
    whole = torchrun(data, tmp_path / "whole")  # never stopped, alongside
    out = tmp_path / "stopped"
    fold = out / "fold0"

    p = torchrun(data, out)
    end = time.monotonic() + 240
    while not (fold / "recovery.pt").exists():  # mid-epoch 0, the backbone frozen
        assert p.poll() is None and time.monotonic() < end, (out / "stderr.log").read_text()[-4000:]
        time.sleep(0.005)
    p.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    assert p.wait(120) != 0
    err = (out / "stderr.log").read_text()
    assert err.count("resume with: torchrun --nproc_per_node=2 scripts/train_fold.py --fold 0 --resume") == 1, err
    ck = ckpt_io.load(fold / "recovery.pt") if (fold / "recovery.pt").exists() else ckpt_io.load(fold / "last.pt")
    assert len(ck["rng"]) == 2 and ck["world_size"] == 2  # every rank's RNG streams

    err = finish(torchrun(data, out, "--resume"), out)
    assert re.search(r"resumed from .*: epoch \d, step \d/4", err)
    for e in (0, 1):  # one log line per epoch: only rank 0 reports (and writes)
        assert len(re.findall(rf"fold 0 epoch {e}: train_loss", err)) == 1, err
    digest = re.findall(r"the 2 processes agree, weights sha256 ([0-9a-f]+)", err)
    last = torch.load(fold / "last.pt", weights_only=True)
    assert digest == [ckpt_io.weights_digest(last["model"])]

    finish(whole, tmp_path / "whole")
    ref = torch.load(tmp_path / "whole" / "fold0" / "last.pt", weights_only=True)
    for part in ("model", "ema"):
        for k, v in ref[part].items():
            assert torch.equal(v, last[part][k]), f"{part}.{k} differs from the run never stopped"

    # the metrics were gathered from both ranks: the best epoch's row is the score of the whole oof.csv
    metrics = pd.read_csv(fold / "metrics.csv")
    oof = pd.read_csv(fold / "oof.csv", dtype={"id": str})
    folds = pd.read_csv(out / "folds.csv", dtype={"id": str})
    assert sorted(oof["id"]) == sorted(folds.loc[folds["fold"] == 0, "id"])
    best = torch.load(fold / "best.pt", weights_only=True)
    row = metrics.iloc[best["epoch"] - 1]
    scores = score_all(oof["label"].to_numpy(), oof.filter(like="prob_").to_numpy())
    assert row["accuracy"] == pytest.approx(scores["accuracy"]) and row["auc"] == pytest.approx(scores["auc"], abs=1e-6)
