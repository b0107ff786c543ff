"""Stacking with metadata (`scripts/stack.py`): a gradient-boosted tree model over the image models'
out-of-fold outputs, the competition's tabular columns and each image's features relative to its patient
(comp.ensemble.stack_data), as ISIC 2024's winners stacked trees over CNN OOF predictions.

Model: scikit-learn's HistGradientBoostingClassifier / Regressor (LightGBM's histogram algorithm, with
native missing values and categorical splits), chosen over LightGBM / XGBoost because scikit-learn is
already a dependency of the kit and the level-2 table is small (one row per training image, tens of
columns), where their speed does not matter. Classes (binary, multiclass, ordinal softmax): one classifier
over the class indices; multi-label: one classifier per label; a regression head (regression, ordinal
regression): the regressor on the value. Soft (distribution) targets and a value with its uncertainty
(train.loss laplace | gaussian_nll) are not stacked.

Leak-free: the image models' folds are kept (the OOF files' `fold`); the level-2 model of fold k is fitted
on the other folds' OOF rows only and predicts fold k's, so the stack's OOF and its CV are as honest as the
image models'. Test rows: the image models' test outputs (predict_test, or --save-probs files), through
every fold's level-2 model, averaged.

Writes, in `out`: `fold<K>/oof.csv` (the kit's OOF format: blendable and scored like any experiment),
`folds.csv` (the experiments' own, so blending can check the folds), `test_probs.csv` (as --save-probs),
`submission.csv` (validated by comp.predict.submission) and `stack.json` (CVs, features, settings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from comp import io
from comp.config import resolve_path
from comp.data.competition import load_competition
from comp.data.tables import read_csv
from comp.ensemble.stack_data import level2_table, tabular
from comp.errors import UserError
from comp.experiment import Experiment
from comp.experiment.oof import oof_targets, oof_task, prob_columns, prob_frame, row_level, write_oof
from comp.log import log
from comp.metrics import score
from comp.predict.submission import decoded_submission, frame_ids, score_holdout, to_csv_text
from comp.tasks import Task

DEFAULTS = {"max_iter": 200, "learning_rate": 0.05, "min_samples_leaf": 20}  # scikit-learn's, fewer, slower steps


def _model(regressor: bool, params: dict[str, Any], seed: int) -> Any:
    cls = HistGradientBoostingRegressor if regressor else HistGradientBoostingClassifier
    return cls(categorical_features="from_dtype", random_state=seed, **{**DEFAULTS, **params})


def fit_predict(task: Task, x: pd.DataFrame, y: np.ndarray, tests: list[pd.DataFrame], params: dict[str, Any],
                seed: int = 0) -> list[np.ndarray]:
    """Fit the level-2 model of `task` on (x, y) and return its (n_i, task.num_outputs) outputs on each frame
    of `tests`: class probabilities over all of task.names (a class absent from `y` gets 0), each label's
    probability (multi-label), or the value (a regression head)."""
    if task.head == "regression":
        m = _model(True, params, seed).fit(x, np.asarray(y, np.float64).reshape(len(y), -1)[:, 0])
        return [m.predict(t)[:, None] for t in tests]
    if task.kind == "multilabel":
        outs = [np.zeros((len(t), y.shape[1])) for t in tests]
        for j in range(y.shape[1]):
            yj = np.asarray(y[:, j]).astype(int)
            if len(np.unique(yj)) < 2:  # a label constant in these rows: that constant
                for o in outs:
                    o[:, j] = yj[0]
                continue
            m = _model(False, params, seed).fit(x, yj)
            for o, t in zip(outs, tests, strict=True):
                o[:, j] = m.predict_proba(t)[:, list(m.classes_).index(1)]
        return outs
    y = np.asarray(y).astype(int)
    outs = [np.zeros((len(t), len(task.names))) for t in tests]
    if len(np.unique(y)) < 2:
        for o in outs:
            o[:, y[0]] = 1.0
        return outs
    m = _model(False, params, seed).fit(x, y)
    for o, t in zip(outs, tests, strict=True):
        o[:, m.classes_] = m.predict_proba(t)
    return outs


def fit_folds(task: Task, x: pd.DataFrame, y: np.ndarray, folds: np.ndarray, x_test: pd.DataFrame | None,
              params: dict[str, Any], seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Cross-fitted level-2 outputs: (N, K) OOF, row i predicted by the model fitted on the rows of the other
    folds than folds[i], and the (N_test, K) mean of those models' test outputs (None without `x_test`)."""
    oof = np.zeros((len(x), task.num_outputs))
    test_sum = None
    ks = sorted(np.unique(folds))
    for k in ks:
        held = folds == k
        if held.all():
            raise UserError(f"stacking needs OOF rows of two folds or more; only fold {k} has an oof.csv")
        tests = [x[held].reset_index(drop=True)] + ([x_test] if x_test is not None else [])
        outs = fit_predict(task, x[~held].reset_index(drop=True), y[~held], tests, params, seed)
        oof[held] = outs[0]
        if x_test is not None:
            test_sum = outs[1] if test_sum is None else test_sum + outs[1]
    return oof, None if test_sum is None else test_sum / len(ks)


def _align(base: pd.DataFrame, other: pd.DataFrame, where: Path, first: Path) -> pd.DataFrame:
    """`other` (an OOF frame) in `base`'s row order, refused unless it holds the same images in the same
    folds."""
    o = other.drop_duplicates("id").set_index("id").reindex(base["id"])
    if o["fold"].isna().any() or len(other) != len(base) or (o["fold"].to_numpy() != base["fold"].to_numpy()).any():
        raise UserError(f"{where} and {first} were not trained on the same folds (their OOF images or folds "
                        f"differ); stack experiments that share one folds.csv")
    return o.reset_index()


def _test_outputs(cfg: Any, comp: Any, dirs: list[Path], test_probs: list[str], task: Task) -> list[pd.DataFrame]:
    """Each experiment's test outputs in `comp.test` order: its --save-probs CSV, or predicted now with the
    config's folds (the config's own out_dir only)."""
    if test_probs:
        if len(test_probs) != len(dirs):
            raise UserError(f"--test-probs: {len(test_probs)} file(s) for {len(dirs)} experiment(s); give one "
                            f"per --oof folder, in the same order")
        frames = []
        for p in test_probs:
            df = read_csv(Path(p), ["id"]).set_index("id")
            missing = ~comp.test["id"].astype(str).isin(df.index)
            if missing.any():
                raise UserError(f"--test-probs {p}: test image {comp.test['id'][missing].iloc[0]!r} has no row")
            frames.append(df.loc[comp.test["id"].astype(str), prob_columns(df)].astype(float).reset_index(drop=True))
        return frames
    if dirs != [resolve_path(cfg.out_dir)]:
        raise UserError("--test-probs: name each experiment's test outputs (scripts/predict.py --save-probs "
                        "P.csv); only the config's own out_dir is predicted here")
    from comp.predict.predict import predict_test

    return [prob_frame(comp.test["id"].astype(str).tolist(), predict_test(Experiment(cfg), comp), task)
            .drop(columns="id")]


def _test_groups(cfg: Any, comp: Any) -> np.ndarray:
    if not cfg.data.test_csv:
        raise UserError("group features of test images need data.test_csv with data.group_column "
                        f"{cfg.data.group_column!r}; or stack without them (--no-group-features)")
    df = read_csv(comp.root / cfg.data.test_csv, [cfg.data.id_column, cfg.data.group_column])
    by_id = dict(zip(df[cfg.data.id_column].str.strip(), df[cfg.data.group_column].str.strip(), strict=False))
    return comp.test["id"].astype(str).map(by_id).fillna(comp.test["id"].astype(str)).to_numpy()


def stack(cfg: Any, out: str | Path, oof_dirs: list[str] | None = None, test_probs: list[str] | None = None,
          columns: list[str] | None = None, groups: bool = True, params: dict[str, Any] | None = None,
          force: bool = False) -> dict[str, Any]:
    """Stack the experiments `oof_dirs` (default the config's out_dir) with the tabular `columns` (default
    data.tabular_columns) and group features (data.group_column), write everything to `out` (module doc),
    and return the summary saved in stack.json (`cv_images`: each experiment's CV; `cv_stack`: the stack's,
    honest; `held_out`: the submission's score when the answers are known).

    Raises:
        UserError: no OOF, experiments on different folds, soft targets, a missing column, image or file, an
            existing `out` without `force`.
    """
    out = io.check_dir(resolve_path(out), "--out")
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"--out {out} already holds files (a stack or another experiment); pass --force to "
                        f"replace them, or name another folder")
    dirs = [resolve_path(d) for d in (oof_dirs or [cfg.out_dir])]
    columns = list(columns if columns is not None else cfg.data.tabular_columns)
    params = {k: v for k, v in (params or {}).items() if v is not None}
    oofs = [Experiment(cfg, d).oof() for d in dirs]  # each folder's OOF files, with the config's fold count
    base = oofs[0]
    oofs = [base] + [_align(base, o, d, dirs[0]) for o, d in zip(oofs[1:], dirs[1:], strict=True)]
    task = oof_task(cfg, base)
    if task.soft:
        raise UserError("stacking soft (distribution) targets is not supported; stack a class or value task")
    if task.scale:
        raise UserError(f"stacking a value with its uncertainty (train.loss={task.loss_name}: value, sigma) is not "
                        f"supported: the level-2 trees predict no sigma; blend it (scripts/blend.py, method mean "
                        f"or weighted), or fit the tabular columns with it (scripts/tabular.py)")
    comp = load_competition(cfg)
    groups = groups and bool(cfg.data.group_column)
    train_ids = base["id"].astype(str)
    by_group = dict(zip(comp.train["id"].astype(str), comp.train["group"].astype(str), strict=True))
    g_train = train_ids.map(by_group).fillna(train_ids).to_numpy() if groups else None
    has_test = len(comp.test) > 0
    tab_train, tab_test = tabular(cfg, comp.root, columns, train_ids, comp.test["id"].astype(str) if has_test else None)
    x = level2_table(oofs, task, g_train, tab_train)
    x_test = None
    if has_test:
        tests = _test_outputs(cfg, comp, dirs, list(test_probs or []), task)
        x_test = level2_table(tests, task, _test_groups(cfg, comp) if groups else None, tab_test)
    y, folds = oof_targets(base), base["fold"].to_numpy()
    log(f"stack: {len(dirs)} experiment(s), {x.shape[1]} features ({', '.join(x.columns)}), "
        f"{len(np.unique(folds))} folds")
    oof, test_out = fit_folds(task, x, y, folds, x_test, params, int(cfg.seed))
    if np.allclose(oof, oof[:1]):
        leaf = {**DEFAULTS, **params}.get("min_samples_leaf")
        log(f"warning: the stack predicts one constant for every row: its trees found no split with "
            f"min_samples_leaf={leaf} on {len(y)} rows; lower --min-samples-leaf")
    how, pos, mt = cfg.predict.aggregate, task.positive, cfg.pauc_min_tpr
    rows = base["row"].astype(str).tolist() if "row" in base.columns else None
    frame = prob_frame(train_ids.tolist(), oof, task, y, rows).assign(fold=folds)
    summary: dict[str, Any] = {
        "metric": cfg.metric, "experiments": [str(d) for d in dirs], "columns": columns, "group_features": groups,
        "features": list(x.columns), "params": {**DEFAULTS, **params},
        "cv_images": [score(cfg.metric, *row_level(o, how, pos), task=task, min_tpr=mt) for o in oofs],
        "cv_stack": score(cfg.metric, *row_level(frame, how, pos), task=task, min_tpr=mt), "held_out": None}
    own = Experiment(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    for k in np.unique(folds):
        part = frame[folds == k]
        write_oof(own.fold(k).oof, part["id"].tolist(), oof_targets(part), oof[folds == k], task,
                  part["row"].tolist() if rows is not None else None)
    first = Experiment(cfg, dirs[0])
    if first.split.csv.is_file():
        io.write_bytes(own.split.csv, first.split.csv.read_bytes())
    from omegaconf import OmegaConf

    conf = OmegaConf.to_container(cfg, resolve=True)
    conf["out_dir"] = str(out)  # the stack is an experiment of its own: report.py / blend.py read this config
    io.write_text(own.file("config"), OmegaConf.to_yaml(conf), what="stack")
    if test_out is not None:
        summary["held_out"] = _submit(cfg, comp, test_out, task, own)
    io.write_json(own.file("stack"), summary)
    return summary


def _submit(cfg: Any, comp: Any, probs: np.ndarray, task: Task, own: Experiment) -> float | None:
    """The stack's validated submission and test outputs (comp.test order in, the sample's order out);
    returns the held-out score when the answers are known."""
    rcfg, comp, probs, df = decoded_submission(cfg, comp, probs, None)
    ids, order = frame_ids(rcfg, comp, df)
    io.write_text(own.file("submission"), to_csv_text(df))
    io.write_csv(own.file("test_probs"), prob_frame(ids, probs[order], task))
    return score_holdout(rcfg, comp, df)
