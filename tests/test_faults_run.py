"""Run faults: a loss that turns NaN, out of memory (GPU or RAM), a full disk while a checkpoint, a CSV,
the probabilities or a cache entry is written, and the Kaggle CLI missing or failing. Each ends in one
`error:` line (the step, file or key named), exit code 2, no traceback unless --debug, and what was
written before stays byte for byte as it was: no half-written file, no temporary left behind.

The machine's failures are injected in-process with monkeypatch (an OutOfMemoryError from the forward
pass, an ENOSPC from the write after half the bytes), through the scripts' own entry, comp.cli.main."""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

import pytest
import torch
from helpers import copy_of, one_error, run_main, snapshot, trained_fixture

import comp.io
import comp.predict.predict as predict_mod
import comp.train.loop as train_mod
from comp.data.cache import cache_folder
from comp.experiment import checkpoint as ckpt_io
from comp.experiment import load_config

RESUME = ("train_fold.py", "--fold", "0", "--resume")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    return trained_fixture(tmp_path_factory, "run_faults")


@pytest.fixture
def ex(trained, tmp_path) -> dict:
    return copy_of(trained, tmp_path / "ex")


def enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


# --- a loss that turns NaN --------------------------------------------------------------------------------

def test_nan_loss_stops_naming_the_step_and_keeps_every_file(ex):
    before = snapshot(ex["base"])
    code, _, err = run_main(*RESUME, *ex["overrides"], "epochs=3", "batch_size=4", "optim.lr=1e30")
    one_error(code, err, "loss is nan at epoch 1 step 1 (fold 0)", "checkpoints in", "are intact",
              "try a lower optim.lr or set train.clip_grad")
    assert snapshot(ex["base"]) == before  # config.yaml too: the failed attempt's settings are not recorded


# --- out of memory ----------------------------------------------------------------------------------------

def _gpu_oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total "
                                 "capacity; 14.90 GiB already allocated)\nmore lines of allocator detail")


def _ram_oom(*args, **kwargs):
    torch.empty(2**62, dtype=torch.uint8)  # the real CPU allocator's failure


@pytest.mark.parametrize("oom, where", [(_gpu_oom, "GPU"), (_ram_oom, "RAM")])
def test_out_of_memory_in_training_suggests_a_smaller_batch(ex, monkeypatch, oom, where):
    monkeypatch.setattr(train_mod, "_forward_loss", oom)
    before = snapshot(ex["base"])
    code, _, err = run_main(*RESUME, *ex["overrides"], "epochs=2")
    one_error(code, err, f"out of memory ({where}); try a smaller batch_size (now 8: e.g. batch_size=4)")
    assert snapshot(ex["base"]) == before


def test_out_of_memory_in_prediction_writes_nothing(ex, monkeypatch, tmp_path):
    monkeypatch.setattr(predict_mod, "forward_views", _gpu_oom)
    probs = tmp_path / "probs.npy"
    probs.write_bytes(b"earlier probabilities")
    before = snapshot(ex["base"])
    code, out, err = run_main("predict.py", *ex["overrides"], "batch_size=32", "--save-probs", str(probs))
    one_error(code, err, "out of memory (GPU); try a smaller batch_size (now 32: e.g. batch_size=16)")
    assert out == "" and probs.read_bytes() == b"earlier probabilities" and snapshot(ex["base"]) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex", "probs.npy"]


def test_out_of_memory_with_debug_shows_the_traceback(ex, monkeypatch):
    monkeypatch.setattr(train_mod, "_forward_loss", _gpu_oom)
    code, _, err = run_main(*RESUME, "--debug", *ex["overrides"], "epochs=2")
    assert code == 2 and "Traceback" in err and "OutOfMemoryError" in err
    assert err.strip().splitlines()[-1].startswith("error: out of memory (GPU)")


# --- a full disk --------------------------------------------------------------------------------------------

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


def test_disk_full_while_writing_metrics_keeps_it_and_the_commit_point(ex, monkeypatch):
    disk_full(monkeypatch, "metrics.csv")
    before = snapshot(ex["base"])
    code, _, err = run_main(*RESUME, *ex["overrides"], "epochs=2")
    one_error(code, err, "could not write", "metrics.csv: No space left on device")
    after = snapshot(ex["base"])
    for name in ("metrics.csv", "last.pt"):  # (best.pt, oof.csv, config.yaml: the improved epoch's, written)
        assert after[f"runs/fold0/{name}"] == before[f"runs/fold0/{name}"], name
    assert not [k for k in after if k.endswith(".tmp")]


@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_disk_full_while_writing_probabilities_keeps_the_earlier_file(ex, monkeypatch, tmp_path, suffix):
    probs = tmp_path / f"probs{suffix}"
    probs.write_bytes(b"earlier probabilities")
    disk_full(monkeypatch, probs.name)
    code, out, err = run_main("predict.py", *ex["overrides"], "--save-probs", str(probs))
    one_error(code, err, f"could not write --save-probs {probs}: No space left on device")
    assert out == "" and probs.read_bytes() == b"earlier probabilities"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex", probs.name]


def test_disk_full_while_building_the_cache(ex, monkeypatch):
    cfg = load_config(None, ex["overrides"])
    disk_full(monkeypatch, f"png.{cfg.images.cache_format}", nth=5)  # the fifth entry: half, then the disk is full
    out = ex["base"] / "new_runs"
    code, _, err = run_main("prepare.py", *ex["overrides"], f"out_dir={out}")
    one_error(code, err, "could not write cache entry", "No space left on device (images.cache_dir)")
    cfg = load_config(None, ex["overrides"])
    folder, entries = cache_folder(cfg), f"*.{cfg.images.cache_format}"
    assert len(list(folder.rglob(entries))) == 4 and not list(folder.rglob(".*.tmp"))  # 4 whole entries
    assert not (out / "folds.csv").exists() and not (folder / "cache.json").exists()
    monkeypatch.undo()
    code, _, err = run_main("prepare.py", *ex["overrides"], f"out_dir={out}")
    assert code == 0, err
    assert len(list(folder.rglob(entries))) == 39 and (out / "folds.csv").is_file()


# --- the Kaggle CLI -------------------------------------------------------------------------------------

def _no_kaggle(monkeypatch, tmp_path: Path) -> None:
    """No `kaggle` on PATH, nor beside the interpreter."""
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(sys, "executable", str(empty / "python"))


def _failing_kaggle(monkeypatch, tmp_path: Path) -> Path:
    """A stand-in `kaggle` first on PATH: records that it ran, says 403, exits 1."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ran = tmp_path / "kaggle_ran"
    exe = bin_dir / "kaggle"
    exe.write_text(f"#!{sys.executable} -S\nimport sys\nopen({str(ran)!r}, 'w').write(' '.join(sys.argv[1:]))\n"
                   "print('403 - Forbidden - you must accept this competition\\'s rules first')\nsys.exit(1)\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return ran


def _download_args(tmp_path: Path, ex: dict) -> list[str]:
    return [*ex["overrides"], f"data.root={tmp_path / 'downloads' / 'tiny'}", "data.competition=tiny-comp"]


def test_kaggle_cli_missing_for_the_download(ex, monkeypatch, tmp_path):
    _no_kaggle(monkeypatch, tmp_path)
    code, _, err = run_main("prepare.py", "--download", *_download_args(tmp_path, ex))
    one_error(code, err, "the kaggle CLI is not on PATH", "pip install kaggle")
    assert not (tmp_path / "downloads").exists()


def test_kaggle_cli_failing_for_the_download(ex, monkeypatch, tmp_path):
    ran = _failing_kaggle(monkeypatch, tmp_path)
    code, _, err = run_main("prepare.py", "--download", *_download_args(tmp_path, ex))
    one_error(code, err, "kaggle competitions download -c tiny-comp -p", "failed: 403 - Forbidden")
    assert ran.read_text().startswith("competitions download -c tiny-comp -p ")
    assert list((tmp_path / "downloads").iterdir()) == []  # no data root, no half-made temporary folder


def test_kaggle_cli_missing_for_the_submission(ex, monkeypatch, tmp_path):
    code, sub, err = run_main("predict.py", *ex["overrides"])
    assert code == 0, err
    file = tmp_path / "sub.csv"
    file.write_text(sub)
    _no_kaggle(monkeypatch, tmp_path)
    subs = tmp_path / "submissions"
    code, _, err = run_main("submit.py", str(file), "-m", "first try", *ex["overrides"],
                            "data.competition=tiny-comp", f"predict.submissions_dir={subs}")
    one_error(code, err, "the kaggle CLI is not on PATH")
    assert not subs.exists() and file.read_text() == sub  # nothing recorded, the file as it was
