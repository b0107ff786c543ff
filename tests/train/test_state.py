"""The run state a training checkpoint holds and how it is written (comp.train.state, through
comp.experiment.checkpoint): atomic writes and safe loads, a full disk while a checkpoint or metrics.csv is
written (the previous last.pt, the commit point, stays), and the RNG states of a machine with other GPUs."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from faults import disk_full, enospc
from helpers import copy_of, one_error, run_main, snapshot, trained_fixture

from comp.errors import UserError
from comp.experiment import checkpoint as ckpt_io

RESUME = ("train_fold.py", "--fold", "0", "--resume")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    return trained_fixture(tmp_path_factory, "train_state")  # timm/test_resnet, one epoch of fold 0


@pytest.fixture
def ex(trained, tmp_path) -> dict:
    return copy_of(trained, tmp_path / "ex")


def test_checkpoint_writes_are_atomic_and_loads_safe(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt_io.save({"model": {"w": torch.ones(3)}, "epoch": 1, "step": 0}, path)
    good = path.read_bytes()

    def dies(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(UserError, match="No space left"):
        ckpt_io.save({"model": {}, "epoch": 2, "step": 0}, path)
    monkeypatch.undo()
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["last.pt"]

    (tmp_path / "recovery.pt").write_bytes(good[: len(good) // 2])  # a torn file: skipped, not fatal
    assert ckpt_io.newest([tmp_path / "recovery.pt", path])[0] == path
    torch.save({"model": {}, "hook": print}, tmp_path / "evil.pt")  # code: refused, never run
    with pytest.raises(UserError, match="weights_only"):
        ckpt_io.load(tmp_path / "evil.pt")

    # RNG states survive the weights_only round trip
    ckpt_io.save({"model": {}, "rng": ckpt_io.rng_state()}, tmp_path / "rng.pt")
    expect = (torch.rand(3), np.random.rand(), random.random())
    ckpt_io.set_rng_state(ckpt_io.load(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(expect[0], got[0]) and expect[1:] == got[1:]


# --- a full disk ----------------------------------------------------------------------------------------

def _half_then_full(real, name_part: str, calls: list):
    """A writer that fails like a full disk for files whose name holds `name_part`: half the bytes, then
    ENOSPC. Other files are written as usual."""
    def write(obj, f, *args, **kwargs):
        name = getattr(f, "name", str(f))
        if name_part in str(name):
            calls.append(name)
            f.write(b"\x00" * 100)
            raise enospc(name)
        return real(obj, f, *args, **kwargs)
    return write


@pytest.mark.parametrize("target", [".pt", "last.pt"])
def test_disk_full_while_writing_a_checkpoint_keeps_the_previous_one(ex, monkeypatch, target):
    """ENOSPC on the attempt's first checkpoint (everything as it was) or on last.pt alone (after best.pt
    and the CSVs: last.pt, the commit point, is the previous epoch's, byte for byte)."""
    calls: list = []
    monkeypatch.setattr(torch, "save", _half_then_full(torch.save, target, calls))
    before = snapshot(ex["base"])
    code, _, err = run_main(*RESUME, *ex["overrides"], "epochs=2")
    line = one_error(code, err, "could not write checkpoint", "No space left on device", "the previous one is intact")
    assert calls and target in line
    after = snapshot(ex["base"])
    assert after["runs/fold0/last.pt"] == before["runs/fold0/last.pt"]
    assert not [k for k in after if k.endswith(".tmp")]
    if target == ".pt":
        assert after == before
    monkeypatch.undo()  # space freed: the resume redoes the epoch and ends as a run never interrupted
    code, _, err = run_main(*RESUME, *ex["overrides"], "epochs=2")
    assert code == 0, err
    assert ckpt_io.load(ex["fold"] / "last.pt")["epoch"] == 2


def test_disk_full_while_writing_metrics_keeps_it_and_the_commit_point(ex, monkeypatch):
    disk_full(monkeypatch, "metrics.csv")
    before = snapshot(ex["base"])
    code, _, err = run_main(*RESUME, *ex["overrides"], "epochs=2")
    one_error(code, err, "could not write", "metrics.csv: No space left on device")
    after = snapshot(ex["base"])
    for name in ("metrics.csv", "last.pt"):  # (best.pt, oof.csv, config.yaml: the improved epoch's, written)
        assert after[f"runs/fold0/{name}"] == before[f"runs/fold0/{name}"], name
    assert not [k for k in after if k.endswith(".tmp")]


# --- resuming on another machine shape -------------------------------------------------------------------

@pytest.mark.parametrize("saved", [0, 2, 5, 8])  # 0: saved on a CPU
def test_cuda_rng_states_restore_for_the_gpus_both_machines_have(monkeypatch, saved):
    state = ckpt_io.rng_state()
    state["cuda"] = [torch.full((16,), k, dtype=torch.uint8) for k in range(saved)]
    for here in (0, 1, 2, 8):
        calls = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda h=here: h > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda h=here: h)
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, d, c=calls: c.append((int(s[0]), d)))
        missed = ckpt_io.set_rng_state(state)
        assert calls == [(k, k) for k in range(min(saved, here))]
        assert bool(missed) == (saved != here)
