"""Shared helpers of the test suite, imported by name (`from helpers import FAST, run_main`); conftest.py holds
the fixtures. A tiny competition in the Kaggle CSV layout (and one per task), the scripts run in-process (their
own parser and comp.cli.main) or as a user runs them, a tiny fold trained once per test run and copied per
test, hand-made experiments in the training checkpoint's format, and the checks of a user error (one
`error:` line, exit code 2, nothing overwritten). A module of its own, not conftest.py: pytest swaps the
module named `conftest` as it loads each folder's own, so `from conftest import` would read the wrong one."""

from __future__ import annotations

import io
import os
import runpy
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from comp.config import config_hash
from comp.data.competition import load_competition
from comp.experiment import load_config
from comp.experiment.checkpoint import save as save_atomic
from comp.experiment.model import inputs_of
from comp.models import create_model, input_norm
from comp.tasks import make_task

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Tiny and fast: 16 px images, 2 folds, a few steps, no worker processes, and timm's 0.37 M-parameter
# test_resnet (a 1.5 MB best.pt where resnet18's is 45 MB, its last.pt 134 MB): the kit's own ResNets are
# proven in tests/models/test_resnet.py and trained end to end where a test names them.
FAST = ["epochs=1", "batch_size=8", "image_size=16", "num_workers=0", "folds.n_folds=2",
        "train.recovery_every=0", "model.name=timm/test_resnet"]


def write_tiny_competition(root: Path, n_per_class: int = 10, n_test: int = 9, classes=(0, 1, 2), size=24,
                           seed: int = 0) -> Path:
    """A competition laid out like a Kaggle CSV download: train.csv, train/, test/, sample_submission.csv,
    solution.csv. Each class has its own mean colour, so a model can learn it in a few steps."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows, test_rows = [], []
    for c_i, c in enumerate(classes):
        for k in range(n_per_class):
            img = np.clip(rng.normal(60 + 70 * c_i, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / "train" / f"img_{c_i}_{k:03d}.png"), img)
            rows.append((f"img_{c_i}_{k:03d}", c))
    for k in range(n_test):
        c_i = k % len(classes)
        img = np.clip(rng.normal(60 + 70 * c_i, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "test" / f"test_{k:03d}.png"), img)
        test_rows.append((f"test_{k:03d}", classes[c_i]))
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(root / "train.csv", index=False)
    test = pd.DataFrame(test_rows, columns=["id", "label"])
    test.assign(label=classes[0]).to_csv(root / "sample_submission.csv", index=False)
    test.to_csv(root / "solution.csv", index=False)
    return root


def tiny_config(root: Path, *extra: str, out: Path | None = None):
    """The demo config pointed at the competition under `root` (write_tiny_competition), with FAST; runs under
    `out` (default: runs/ beside the data)."""
    out = out or root.parent / "runs"
    return load_config(None, [*FAST, f"data.root={root}", f"out_dir={out}", "data.source=competition", *extra])


def run_script(name: str, *args: str, check: bool = False, env: dict | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Run scripts/<name> with the test interpreter, capturing stdout and stderr separately."""
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                         env=e, timeout=timeout, cwd=str(ROOT))
    if check and res.returncode != 0:
        raise AssertionError(f"{name} {args} exited {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}")
    return res


def assert_user_error(res: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, one `error:` line naming the culprit, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


# --- shared by the fault suites ------------------------------------------------------------------------

SCRIPTS = ROOT / "scripts"
# 16 px images, 2 folds, one epoch of one step, a 0.4 M-parameter model: a fold trains in about a second
COMMON = [*FAST, "data.source=competition", "data.solution_csv=solution.csv", "model.name=timm/test_resnet",
          "aug.tta=[identity]", "predict.folds=[0]"]  # fold 0 alone is trained: a partial ensemble, asked for


def run_main(script: str, *argv: str) -> tuple[int, str, str]:
    """`python scripts/<script> ARGV` in this process: the script's own parser and comp.cli.main.
    Returns (exit code, stdout, stderr)."""
    old_argv, old_path = sys.argv, list(sys.path)
    sys.argv = [str(SCRIPTS / script), *argv]
    sys.path.insert(0, str(SCRIPTS))  # for the scripts' `import _common`
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            runpy.run_path(str(SCRIPTS / script), run_name="__main__")
    except SystemExit as e:
        code = e.code
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
    return (code if isinstance(code, int) else int(code is not None)), out.getvalue(), err.getvalue()


def one_error(code: int, err: str, *needles: str) -> str:
    """Exit code 2, exactly one `error:` line holding every needle, no traceback; returns the line."""
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err and "internal error" not in err, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err[-2000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_kept(before: dict[str, bytes], folder: Path, new_ok: tuple[str, ...] = ()) -> None:
    """Nothing of `before` overwritten or deleted, and no file added but those named in `new_ok`
    (a half-written or temporary file would be one)."""
    after = snapshot(folder)
    changed = sorted(k for k in before if after.get(k) != before[k])
    assert not changed, f"changed or deleted: {changed}"
    added = sorted(k for k in set(after) - set(before) if Path(k).name not in new_ok)
    assert not added, f"added: {added}"


def experiment(base: Path, *extra: str, classes=(0, 1, 2), train: bool = True) -> dict:
    """A tiny competition under base/data and, with `train`, fold 0 trained into base/runs."""
    from comp.train.loop import fit

    write_tiny_competition(base / "data", classes=classes)
    ex = at(base, *extra)
    if train:
        fit(load_config(None, ex["overrides"]), 0)
    return ex


def at(base: Path, *extra: str) -> dict:
    """The overrides of the experiment under `base` (after a copy, its own paths)."""
    root, out = base / "data", base / "runs"
    return {"base": base, "root": root, "out": out, "fold": out / "fold0",
            "overrides": [*COMMON, f"data.root={root}", f"out_dir={out}", *extra]}


def copy_of(ex: dict, dest: Path, *extra: str) -> dict:
    """A private copy of an experiment (data and runs): a fault may do anything to it."""
    shutil.copytree(ex["base"], dest)
    return at(dest, *extra)


_TRAINED: dict[str, dict] = {}  # one trained experiment per setting for the whole test run


def trained_fixture(tmp_path_factory, name: str, **kw) -> dict:
    """A tiny trained fold, trained once per test run for each setting (`kw`) and shared by the modules
    that read it (those that change files work on `copy_of` it), built with one thread as the runs it is
    compared with. Returns a new dict each call, so a module may add keys of its own."""
    key = repr(sorted(kw.items()))
    if key not in _TRAINED:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _TRAINED[key] = experiment(tmp_path_factory.mktemp(f"trained_{name}"), **kw)
        finally:
            torch.set_num_threads(threads)
    return dict(_TRAINED[key])


# --- hand-made experiments (checkpoints in the training format, not trained) and per-task replicas ---

TINY_MODEL = "model.name=timm/test_resnet"  # 0.4 M parameters: checkpoints of 1.5 MB, instant forward passes


def make_experiment(tmp_path: Path, *extra: str, n_folds: int = 2, root: Path | None = None, best=(0.5, 0.6),
                    ema: bool = False, oof_seed: int = 0, **competition) -> dict:
    """A tiny competition and an experiment whose folds look trained: `fold<K>/best.pt` (random weights
    seeded by K, in the training checkpoint format), `fold<K>/oof.csv` (random probabilities) and the
    split `folds.csv` (row i in fold i mod n_folds)."""
    root = root or write_tiny_competition(tmp_path / "data", **competition)
    out = tmp_path / "runs"
    overrides = FAST + [f"data.root={root}", f"out_dir={out}", "data.source=competition",
                        "data.solution_csv=solution.csv", "aug.tta=[identity,hflip]", TINY_MODEL,
                        f"folds.n_folds={n_folds}", *extra]
    cfg = load_config(None, overrides)
    comp = load_competition(cfg)
    rng = np.random.default_rng(oof_seed)
    for k in range(n_folds):
        torch.manual_seed(100 + k)
        model = create_model(cfg.model.name, comp.num_classes, in_chans=cfg.model.in_chans)
        weights = model.state_dict()
        ck = {"format_version": 1, "model": weights, "ema": None, "config_hash": config_hash(cfg),
              "model_name": cfg.model.name, "num_classes": comp.num_classes, "in_chans": cfg.model.in_chans,
              "classes": list(comp.classes), "fold": k, "metric": cfg.metric, "eval_weights": "model",
              "best": best[k % len(best)], "epoch": 1, "step": 0, "optimizer": {"state": {}, "param_groups": []},
              "input_norm": [list(v) for v in input_norm(model)], "inputs": inputs_of(cfg, input_norm(model)),
              "task": make_task(cfg, comp.classes).meta()}
        if ema:  # the validated weights are another set: the EMA
            torch.manual_seed(200 + k)
            ck["ema"] = create_model(cfg.model.name, comp.num_classes, in_chans=cfg.model.in_chans).state_dict()
            ck["eval_weights"] = "ema"
        save_atomic(ck, out / f"fold{k}" / "best.pt")
        part = comp.train.iloc[k::n_folds]
        probs = rng.dirichlet(np.ones(comp.num_classes), len(part))
        oof = pd.DataFrame({"id": part["id"].to_numpy(), "label": part["label"].to_numpy()})
        for c, name in enumerate(comp.classes):
            oof[f"prob_{name}"] = probs[:, c]
        oof.to_csv(out / f"fold{k}" / "oof.csv", index=False)
    split = comp.train[["id", "label", "group"]].assign(fold=np.arange(len(comp.train)) % n_folds)
    split.to_csv(out / "folds.csv", index=False)  # the split the oof.csv rows follow, as training writes it
    return {"cfg": cfg, "comp": comp, "root": root, "out": out, "overrides": overrides}


def write_test_images(root: Path, images: list[np.ndarray]) -> None:
    """Replace the test images of a tiny competition with `images` (same ids, in order)."""
    for k, img in enumerate(images):
        cv2.imwrite(str(root / "test" / f"test_{k:03d}.png"), img)


LABELS = ["ett", "ngt", "cvc"]


def write_competition(root: Path, task: str, n: int = 24, n_test: int = 6, seed: int = 0) -> list[str]:
    """A CSV competition whose targets follow the image brightness: one per task kind. Returns the
    overrides that read it."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows = []
    for k in range(n):
        level = k % 4
        img = np.clip(rng.normal(40 + 50 * level, 15, (20, 20, 3)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "train" / f"im{k:03d}.png"), img)
        row = {"image_id": f"im{k:03d}", "patient_id": f"p{k // 2}"}
        if task == "multilabel":
            row.update({c: int(b) for c, b in zip(LABELS, [level >= 2, level % 2 == 1, level == 0], strict=True)})
        elif task == "soft":
            votes = np.bincount([level % 3, level % 3, (level + 1) % 3], minlength=3)
            row.update({f"{c}_vote": int(v) for c, v in zip(LABELS, votes, strict=True)})
        elif task == "regression":
            row["boneage"] = 30.0 + 40.0 * level + rng.normal(0, 3)
        elif task == "binary":
            row["target"] = int(level >= 2)
        else:  # ordinal
            row["diagnosis"] = level
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    test_ids = [f"t{k:02d}" for k in range(n_test)]
    for k, i in enumerate(test_ids):
        cv2.imwrite(str(root / "test" / f"{i}.png"), np.full((20, 20, 3), 40 + 50 * (k % 4), np.uint8))
    cols = {"multilabel": LABELS, "soft": [f"{c}_vote" for c in LABELS], "regression": ["boneage"],
            "binary": ["target"], "ordinal": ["diagnosis"]}[task]
    sample = pd.DataFrame({"image_id": test_ids, **{c: 0 for c in cols}})
    sample.to_csv(root / "sample_submission.csv", index=False)
    truth = pd.DataFrame(rows[:n_test]).drop(columns="patient_id").assign(image_id=test_ids)  # levels 0,1,2,3,0,1
    truth.to_csv(root / "solution.csv", index=False)
    base = ["data.id_column=image_id", "data.group_column=patient_id", f"data.root={root}",
            "data.solution_csv=solution.csv"]
    if task in ("multilabel", "soft"):
        return base + [f"task={'multiclass' if task == 'soft' else task}", f"data.label_columns=[{','.join(cols)}]"]
    return base + [f"task={task}", f"data.label_column={cols[0]}"]
