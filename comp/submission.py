"""The submission frame: the sample submission's header, row order, id spelling and label encoding,
validated before anything is written or submitted."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.competition import Competition, read_csv
from comp.errors import UserError
from comp.metrics import METRICS


def sample_frame(cfg: Any, comp: Competition) -> pd.DataFrame:
    """The sample submission, or an `id,label` frame over the test images when the data has none
    (datasets like chest X-ray)."""
    if cfg.data.sample_submission:
        return read_csv(comp.root / cfg.data.sample_submission, [cfg.data.id_column])
    return pd.DataFrame({cfg.data.id_column: comp.test["id"].astype(str), cfg.data.label_column: ""})


def build(cfg: Any, comp: Competition, probs: np.ndarray, labels: np.ndarray | None = None) -> pd.DataFrame:
    """The submission for test probabilities `probs` (N_test, C) in `comp.test` order. `labels` (class
    indices) overrides argmax, e.g. when kappa thresholds decoded them. When the sample has one column
    per class, probabilities are written; otherwise the competition's value of each predicted class."""
    sample = sample_frame(cfg, comp)
    id_col = cfg.data.id_column
    pos = pd.Series(np.arange(len(comp.test)), index=comp.test["id"].astype(str))
    order = sample[id_col].str.strip().map(pos)
    if order.isna().any():
        raise UserError(f"sample submission id {sample[id_col][order.isna()].iloc[0]!r} has no test image")
    order = order.astype(int).to_numpy()
    out = sample.copy()
    prob_cols = [c for c in sample.columns if c != id_col]
    if len(prob_cols) == len(comp.classes) > 1 and set(prob_cols) == {str(c) for c in comp.label_values}:
        for c, value in enumerate(comp.label_values):
            out[str(value)] = probs[order, c]
        return out
    pred = (labels if labels is not None else probs.argmax(1))[order]
    label_col = cfg.data.label_column if cfg.data.label_column in sample.columns else prob_cols[0]
    out[label_col] = [comp.label_values[i] for i in pred]
    return out


def validate(df: pd.DataFrame, sample: pd.DataFrame, id_col: str, allowed: list[Any] | None) -> None:
    """Refuse a submission Kaggle would reject: header not the sample's, an id missing, duplicated or
    extra, a NaN, a label outside `allowed` (None: probability columns in [0, 1]).

    Raises:
        UserError: naming the first problem found.
    """
    if list(df.columns) != list(sample.columns):
        raise UserError(f"submission header {list(df.columns)} is not the sample's {list(sample.columns)}")
    ids = df[id_col].astype(str).str.strip()
    want = sample[id_col].astype(str).str.strip()
    dup = ids[ids.duplicated()]
    if len(dup):
        raise UserError(f"submission id {dup.iloc[0]!r} appears more than once")
    missing = sorted(set(want) - set(ids))
    if missing:
        raise UserError(f"submission lacks {len(missing)} test id(s), e.g. {missing[0]!r}")
    extra = sorted(set(ids) - set(want))
    if extra:
        raise UserError(f"submission has {len(extra)} id(s) not in the sample submission, e.g. {extra[0]!r}")
    for col in df.columns:
        if col == id_col:
            continue
        values = df[col]
        blank = values.isna() | (values.astype(str).str.strip().isin(["", "nan", "NaN"]))
        if blank.any():
            raise UserError(f"submission row {int(np.flatnonzero(blank.to_numpy())[0]) + 2} has no value in {col!r}")
        if allowed is not None:
            ok = values.astype(str).str.strip().isin({str(a) for a in allowed})
            if not ok.all():
                i = int(np.flatnonzero(~ok.to_numpy())[0])
                raise UserError(f"submission row {i + 2}: {col}={values.iloc[i]!r} is not one of {list(allowed)}")
        else:
            num = pd.to_numeric(values, errors="coerce")
            bad = num.isna() | (num < 0) | (num > 1)
            if bad.any():
                i = int(np.flatnonzero(bad.to_numpy())[0])
                raise UserError(f"submission row {i + 2}: {col}={values.iloc[i]!r} is not a probability in [0, 1]")


def check(cfg: Any, comp: Competition, df: pd.DataFrame) -> None:
    """Validate `df` against this competition's sample submission and label encoding."""
    sample = sample_frame(cfg, comp)
    prob_mode = len(sample.columns) - 1 == len(comp.classes) > 1
    validate(df, sample, cfg.data.id_column, None if prob_mode else list(comp.label_values))


def to_csv_text(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    df.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def read_submission(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UserError(f"submission file not found: {path}")
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except Exception as e:
        raise UserError(f"cannot read submission {path}: {str(e).splitlines()[0]}") from None


def score_holdout(cfg: Any, comp: Competition, df: pd.DataFrame) -> float | None:
    """The competition metric of a submission against held-out answers (`data.solution_csv`, or the
    labels of a labelled test folder), as the leaderboard would compute it; None when unknown."""
    id_col = cfg.data.id_column
    index = {str(v): i for i, v in enumerate(comp.label_values)}
    if cfg.data.solution_csv:
        sol = read_csv(comp.root / cfg.data.solution_csv, [id_col, cfg.data.label_column])
        truth = sol.set_index(sol[id_col].str.strip())[cfg.data.label_column].astype(str).str.strip().map(index)
    elif "label" in comp.test.columns:
        truth = pd.Series(comp.test["label"].to_numpy(), index=comp.test["id"].astype(str))
    else:
        return None
    label_col = cfg.data.label_column if cfg.data.label_column in df.columns else df.columns[1]
    pred = df.set_index(df[id_col].astype(str).str.strip())[label_col].astype(str).str.strip().map(index)
    pred = pred.reindex(truth.index)
    y, p = truth.to_numpy().astype(int), pred.fillna(0).to_numpy().astype(int)
    onehot = np.eye(len(comp.classes))[p]
    return METRICS[cfg.metric](y, onehot)


def make_submission(cfg: Any) -> tuple[str, float | None]:
    """Predict the test set with every trained fold and TTA, build and validate the submission; returns
    the CSV text and its held-out score when the answers are known."""
    from comp.competition import load_competition
    from comp.predict import predict_test

    comp = load_competition(cfg)
    probs = predict_test(cfg, comp)
    df = build(cfg, comp, probs)
    check(cfg, comp, df)
    return to_csv_text(df), score_holdout(cfg, comp, df)
