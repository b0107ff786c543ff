"""The CV report (scripts/report.py), the error analysis and the review sheets for every task beyond one
softmax (binary, multi-label, regression, an ordinal regression head, soft targets): one tiny fold per task
trained in-process, then every number the report prints or writes checked against scikit-learn on the OOF
file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import FAST, run_main, write_competition
from sklearn import metrics as skm

from comp.errors import UserError
from comp.experiment import RunFiles, load_config
from comp.experiment.oof import oof_probs, oof_targets
from comp.report import errors_analysis as ea
from comp.report.plots import fold_figures
from comp.tasks import Task
from comp.train.loop import fit

CASES = {  # kind of write_competition -> (metric, folds trained, extra overrides)
    "binary": ("auc", (0,), []),
    "multilabel": ("auc", (0,), []),
    "regression": ("mae", (0, 1), ["epochs=2"]),
    "ordinal": ("qwk", (0,), ["model.head=regression"]),
    "soft": ("kl_divergence", (0,), []),
}
FIGURES = {"binary": {"confusion", "roc", "calibration"}, "multilabel": {"roc", "calibration"},
           "regression": {"scatter"}, "ordinal": {"confusion", "scatter"}, "soft": {"confusion"}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each task's competition, its folds trained (1 epoch; regression 2 folds of 2 epochs), and the
    overrides that read it."""
    tmp = tmp_path_factory.mktemp("tasks")
    out = {}
    for kind, (metric, folds, extra) in CASES.items():
        over = write_competition(tmp / kind / "data", kind) + FAST + [f"out_dir={tmp / kind / 'runs'}",
                                                                      f"metric={metric}", *extra]
        for k in folds:
            fit(load_config(None, over), k)
        out[kind] = {"over": over, "dir": tmp / kind / "runs", "folds": folds}
    return out


def _oof(run: dict) -> pd.DataFrame:
    return pd.concat([pd.read_csv(run["dir"] / f"fold{k}" / "oof.csv", dtype={"id": str}).assign(fold=k)
                      for k in run["folds"]], ignore_index=True)


def _sklearn_scores(kind: str, oof: pd.DataFrame) -> dict[str, float]:
    """The task's metrics straight from scikit-learn on the OOF columns (not through comp.metrics)."""
    p = oof[[c for c in oof.columns if c.startswith("prob_")]].to_numpy(np.float64)
    if kind == "binary":  # classes "0", "1": the positive is the class whose value is 1
        y = oof["label"].to_numpy(int)
        return {"auc": skm.roc_auc_score(y == 1, p[:, 1]), "accuracy": skm.accuracy_score(y, p.argmax(1)),
                "f1": skm.f1_score(y, p[:, 1] >= 0.5), "log_loss": skm.log_loss(y, p, labels=[0, 1])}
    if kind == "multilabel":
        y = oof[[c for c in oof.columns if c.startswith("target_")]].to_numpy(int)
        return {"auc": np.mean([skm.roc_auc_score(y[:, k], p[:, k]) for k in range(3)]),
                "log_loss": np.mean([skm.log_loss(y[:, k], p[:, k], labels=[0, 1]) for k in range(3)])}
    if kind == "soft":
        y = oof[[c for c in oof.columns if c.startswith("target_")]].to_numpy(np.float64)
        return {"accuracy": skm.accuracy_score(y.argmax(1), p.argmax(1))}
    y, v = oof["label"].to_numpy(np.float64), oof["value"].to_numpy(np.float64)
    scores = {"mae": skm.mean_absolute_error(y, v), "rmse": np.sqrt(skm.mean_squared_error(y, v))}
    if kind == "regression":
        return {**scores, "r2": skm.r2_score(y, v)}
    pred = np.clip(np.rint(v), 0, 3).astype(int)  # an ordinal regression head's grade: the rounded value
    return {**scores, "qwk": skm.cohen_kappa_score(y.astype(int), pred, weights="quadratic", labels=range(4)),
            "accuracy": skm.accuracy_score(y.astype(int), pred)}


@pytest.mark.parametrize("kind", list(CASES))
def test_report_numbers_and_figures_per_task(runs, kind):
    run, metric = runs[kind], CASES[kind][0]
    code, out, err = run_main("report.py", *run["over"])
    assert code == 0, err
    oof = _oof(run)
    want = _sklearn_scores(kind, oof)
    table = pd.read_csv(run["dir"] / "cv.csv", dtype={"fold": str}).set_index("fold")
    assert list(table.index) == [*map(str, run["folds"]), "mean", "oof"]
    for name, value in want.items():  # pooled OOF row: every metric of the task as scikit-learn has it
        assert table.loc["oof", name] == pytest.approx(value, abs=1e-6), name
    for k in run["folds"]:  # per fold, and their mean
        part = _oof(run).query("fold == @k")
        for name, value in _sklearn_scores(kind, part).items():
            assert table.loc[str(k), name] == pytest.approx(value, abs=1e-6), (k, name)
    for name in want:
        assert table.loc["mean", name] == pytest.approx(table.loc[list(map(str, run["folds"])), name].mean())
    n = len(run["folds"])
    direction = "lower" if metric in ("mae", "kl_divergence") else "higher"
    assert f"CV {metric} (out-of-fold, {n} fold{'s' * (n != 1)}): {table.loc['oof', metric]:.4f} ({direction}" in out
    if metric in want:
        assert f": {want[metric]:.4f} (" in out
    if kind == "soft":  # KL divergence of the target shares to the outputs, per row, averaged
        y = oof[[c for c in oof.columns if c.startswith("target_")]].to_numpy(np.float64)
        p = oof_probs(oof)
        kl = np.mean([sum(t * np.log(t / q) for t, q in zip(a, b, strict=True) if t > 0)
                      for a, b in zip(y, p, strict=True)])
        assert table.loc["oof", "kl_divergence"] == pytest.approx(kl, rel=1e-4)
    figures = {f.stem.removeprefix("oof_") for f in run["dir"].glob("oof_*.png")}
    assert figures == FIGURES[kind]
    assert all((run["dir"] / f"oof_{f}.png").stat().st_size > 5000 for f in figures)
    drawn = fold_figures(RunFiles(run["dir"] / "fold0"), metric)  # what comp.train_fold draws after fit
    assert set(drawn) == {"curves", *FIGURES[kind]} and all(p.stat().st_size > 5000 for p in drawn.values())
    if kind in ("multilabel", "regression"):  # no classes: no classification report
        assert "classification report" not in out and "macro avg" not in out
        assert "qwk" not in table.columns and "accuracy" not in table.columns
    else:
        y = oof_targets(oof)
        y = y.argmax(1) if y.ndim == 2 else y.astype(int)
        pred = np.clip(np.rint(oof["value"]), 0, 3) if kind == "ordinal" else oof_probs(oof).argmax(1)
        macro = [line.split() for line in out.splitlines() if line.startswith("macro avg")][0]
        f1 = skm.f1_score(y, pred, average="macro", labels=range(oof_probs(oof).shape[1] if kind != "ordinal"
                                                                       else 4), zero_division=np.nan)
        assert float(macro[4]) == pytest.approx(f1, abs=1e-4)


def test_top_losses_per_task_equal_their_definitions(runs):
    reg = ea.top_losses(_oof(runs["regression"]), Task("regression", ["boneage"], "regression"))
    oof = _oof(runs["regression"])
    err = np.abs(oof["value"] - oof["label"])
    assert reg["abs_error"].tolist() == pytest.approx(sorted(err, reverse=True))
    assert reg.loc[0, "id"] == oof.loc[err.idxmax(), "id"]
    ml = _oof(runs["multilabel"])
    y = ml[[f"target_{c}" for c in ("ett", "ngt", "cvc")]].to_numpy()
    p = oof_probs(ml)
    bce = np.array([[skm.log_loss([y[i, k]], [p[i, k]], labels=[0, 1]) for k in range(3)] for i in range(len(y))])
    top = ea.top_losses(ml, Task("multilabel", ["ett", "ngt", "cvc"], "sigmoid"))
    assert top["loss"].tolist() == pytest.approx(sorted(bce.max(1), reverse=True), rel=1e-6)
    first = ml["id"].tolist().index(top.loc[0, "id"])
    assert top.loc[0, "worst_label"] == ["ett", "ngt", "cvc"][bce[first].argmax()]
    b = _oof(runs["binary"])
    top = ea.top_losses(b, Task("binary", ["0", "1"], "sigmoid"))
    p_true = oof_probs(b)[np.arange(len(b)), b["label"].to_numpy(int)]
    assert top["loss"].tolist() == pytest.approx(sorted(-np.log(p_true), reverse=True), rel=1e-6)
    g = ea.group_metrics(oof.assign(group=oof["id"].str[:3]), Task("regression", ["boneage"], "regression"))
    assert g["n"].sum() == len(oof) and set(g.columns) == {"group", "n", "mae", "rmse", "bias"}
    with pytest.raises(UserError, match="task=regression with a regression head"):
        ea.label_issues(oof, Task("regression", ["boneage"], "regression"))
    with pytest.raises(UserError, match="task=multilabel has none"):
        ea.confused_pairs(ml, Task("multilabel", ["ett", "ngt", "cvc"], "sigmoid"))


@pytest.mark.parametrize("kind", ["regression", "multilabel"])
def test_explain_reviews_tasks_without_classes(runs, kind, tmp_path):
    run = runs[kind]
    folds = f"predict.folds=[{','.join(map(str, run['folds']))}]"
    code, out, err = run_main("explain.py", "--per-class", "1", "-o", str(tmp_path), *run["over"], folds)
    assert code == 0, err[-3000:]
    page = (tmp_path / "review.html").read_text()
    assert (tmp_path / "fold0_errors.png").stat().st_size > 0 and (tmp_path / "fold0_random.png").is_file()
    top = pd.read_csv(tmp_path / "top_losses.csv")
    if kind == "regression":
        assert top["abs_error"].is_monotonic_decreasing and not (tmp_path / "label_issues.csv").exists()
        assert "task=regression with a regression head has no class probabilities" in page
        assert "<h3>largest absolute errors</h3>" in page and "least confident" not in page
        assert not (tmp_path / "fold0_unsure.png").exists()  # a regression has no "correct" to be unsure of
    else:
        assert top["loss"].is_monotonic_decreasing and (tmp_path / "label_issues.csv").is_file()
        assert page.count("<figure>") >= 3  # a card per label at least


def test_compare_picks_the_lowest_of_a_lower_is_better_metric(runs, tmp_path):
    d = runs["regression"]["dir"]
    code, out, err = run_main("report.py", "--compare", str(d), str(d), "--labels", "a", "b", "-o",
                              str(tmp_path / "c.png"))
    assert code == 0, err
    best = np.mean([pd.read_csv(d / f"fold{k}" / "metrics.csv")["mae"].min() for k in (0, 1)])
    oof = _oof(runs["regression"])
    row = out.splitlines()[1].split()
    assert float(row[3]) == pytest.approx(best, abs=1e-4)
    assert float(row[4]) == pytest.approx(skm.mean_absolute_error(oof["label"], oof["value"]), abs=1e-4)
    code, _, err = run_main("report.py", "--compare", str(d), "--metric", "auc", "-o", str(tmp_path / "c.png"))
    assert code == 2 and "has no 'auc' in its metrics.csv" in err
