"""The submission: the sample submission's header, row order, id spelling and value encoding, validated
before anything is written or submitted.

What a row holds follows the sample (predict.output=auto):
- `label`: one value column, the competition's value of the predicted class (an integer grade or a class
  name, as in its train CSV), decoded with the kappa cut-points for metric=qwk (comp.predict.thresholds);
- `class_probs`: one column per class, named by its value or its name: each class's probability;
- `binary_prob`: one value column holding P(positive class) of a two-class competition scored by AUC (or
  any task=binary), the positive class being `data.positive_class` (default: the class whose value is 1 /
  True-like, else the second class; comp.metrics.positive_index), wherever it stands in the class order;
- `value`: one number per row (task=regression), any finite number; `value_sigma`: two (train.loss laplace |
  gaussian_nll), the value and its sigma in the sample's two value columns (OSIC's FVC, Confidence).
Multi-label and soft-target competitions name one column per label or class: `class_probs`. A sample
naming only some of data.label_columns (a subset: RANZCR's 11 findings, 9 of them asked for) is written
from those outputs; training keeps every label, and the labels left out are logged. A sample column that
is not a trained label is an error naming it.
With predict.shape=long (RSNA 2022-2024) the sample has one row per id and label, `<id>_<label>` in its
first column (e.g. `1.2.826.0.1.3680043.8.498.10_C1`, `..._patient_overall`), one value in its second:
mode `long`, the values taken from the same per-label outputs. A long sample read as wide is refused
saying so (comp.data.checks.long_hint).
Files are read with the csv module, not pandas, so that what is checked is what Kaggle reads: the exact
header, every field as written, a row with a missing or extra field.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from comp.data.competition import Competition, read_csv
from comp.data.targets import class_task, head_columns, read_targets
from comp.errors import UserError
from comp.experiment import Experiment
from comp.experiment.oof import aggregate
from comp.log import log
from comp.metrics import positive_index, score
from comp.predict.checks import NAN_WORDS, validate  # noqa: F401  (imported from here since the start)
from comp.predict.shapes import (  # noqa: F401  (read_exact, sample_order, class_columns: imported from here)
    class_columns,
    frame_ids,
    long_cells,
    long_index,
    output_mode,
    read_exact,
    row_column,
    sample_frame,
    sample_order,
    submitted_outputs,
)
from comp.tasks import Task, make_task


def positive(cfg: Any, comp: Competition) -> int:
    """The index of the positive class (`data.positive_class`, see comp.metrics.positive_index).

    Raises:
        UserError: data.positive_class names no class of the competition.
    """
    return positive_index(cfg.data.positive_class, comp.classes, comp.label_values)


def build(cfg: Any, comp: Competition, probs: np.ndarray, labels: np.ndarray | None = None,
          sample: pd.DataFrame | None = None) -> pd.DataFrame:
    """The submission for test probabilities `probs` (N_test, C) in `comp.test` order: the sample's
    header, rows and id spelling, its values filled in. `labels` (class indices) override the argmax,
    e.g. when kappa cut-points decoded them. `sample`: the rows to fill (default the sample submission,
    `sample_frame`); the served predictor (comp.submit.serve) passes one item's rows."""
    sample = sample_frame(cfg, comp) if sample is None else sample
    id_col = cfg.data.id_column
    mode = output_mode(cfg, comp, sample)
    out = sample.copy()
    if mode == "long":  # one row per id x label: the value of that label's output (multihead: a class per column)
        rows, outputs = long_cells(cfg, comp, sample)
        for col, k in zip(sample.columns[1:], outputs, strict=True):
            out[col] = probs[rows, k]
        return out
    order = sample_order(sample, id_col, comp)
    if mode == "class_probs":
        for col, c in class_columns(comp, list(sample.columns), id_col, True):
            out[col] = probs[order, c]
        return out
    col = next(c for c in sample.columns if c != id_col)
    if mode == "binary_prob":
        pos = positive(cfg, comp)
        tuned = labels is not None and cfg.task == "binary"  # a decision threshold tuned on OOF: 0/1 values
        out[col] = (labels[order] == pos).astype(int) if tuned else probs[order, pos]
        return out
    if mode == "value":
        out[col] = probs[order, 0]
        return out
    if mode == "value_sigma":  # the value, then its sigma (comp.likelihood)
        value_col, sigma_col = [c for c in sample.columns if c != id_col]
        out[value_col], out[sigma_col] = probs[order, 0], probs[order, 1]
        return out
    pred = (labels if labels is not None else comp_task(cfg, comp).decode(probs))[order]
    out[col] = [str(comp.label_values[i]) for i in pred]
    return out


def check(cfg: Any, comp: Competition, df: pd.DataFrame, sample: pd.DataFrame | None = None) -> None:
    """Validate `df` against this competition's sample submission (`sample`: already read; default
    `sample_frame`) and value encoding."""
    sample = sample_frame(cfg, comp) if sample is None else sample
    mode = output_mode(cfg, comp, sample)
    if mode == "long":  # the values: numbers for regression targets, else probabilities
        mode = "value" if cfg.task == "regression" else "long"
    mode = "value" if mode == "value_sigma" else mode
    validate(df, sample, row_column(cfg, sample), mode, list(comp.label_values))


def to_csv_text(df: pd.DataFrame) -> str:
    """The CSV as Kaggle takes it: the header, one row per line, LF line ends, no index."""
    buf = io.StringIO()
    df.to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def submission_probs(cfg: Any, comp: Competition, df: pd.DataFrame) -> np.ndarray:
    """(N, K) probabilities a validated submission stands for (one-hot for labels), in its row order (long:
    in `frame_ids` order); K = the submitted outputs (`submitted_outputs`)."""
    sample = sample_frame(cfg, comp)
    mode = output_mode(cfg, comp, sample)
    id_col = cfg.data.id_column
    if mode == "long":
        rows, outputs = long_cells(cfg, comp, df, "submission")
        wide = pd.concat([pd.DataFrame({"row": rows, "k": k, "v": df[col].astype(float).to_numpy()})
                          for col, k in zip(df.columns[1:], outputs, strict=True)])
        wide = wide.pivot(index="row", columns="k", values="v")
        return wide.loc[list(dict.fromkeys(rows)), submitted_outputs(cfg, comp, sample)].to_numpy()
    if mode == "class_probs":
        cols = class_columns(comp, list(df.columns), id_col, True)
        return df[[c for c, _ in cols]].astype(float).to_numpy()
    col = next(c for c in df.columns if c != id_col)
    if mode == "value":
        return df[[col]].astype(float).to_numpy()
    if mode == "value_sigma":
        return df[[c for c in df.columns if c != id_col]].astype(float).to_numpy()
    if mode == "binary_prob":
        p = df[col].astype(float).to_numpy()
        pos = positive(cfg, comp)
        return np.stack([p, 1 - p] if pos == 0 else [1 - p, p], axis=1)
    index = {str(v): i for i, v in enumerate(comp.label_values)}
    grades = df[col].astype(str).map(index).to_numpy().astype(int)
    if cfg.model.head == "regression":  # an ordinal regression head's outputs are the grade itself
        return grades[:, None].astype(np.float64)
    return np.eye(comp.num_classes)[grades]


def score_holdout(cfg: Any, comp: Competition, df: pd.DataFrame) -> float | None:
    """The competition metric of a validated submission against held-out answers (`data.solution_csv`, or
    the labels of a labelled test folder), as the leaderboard would compute it; None when unknown."""
    id_col = cfg.data.id_column
    index = {str(v): i for i, v in enumerate(comp.label_values)}
    task = comp_task(cfg, comp)
    if cfg.data.solution_csv and not class_task(cfg):
        path = comp.root / cfg.data.solution_csv
        sol = read_csv(path, [id_col, *([] if cfg.task == "multihead" else
                                        list(cfg.data.label_columns) or [cfg.data.label_column])])
        if cfg.task == "multihead":
            head_columns(cfg, list(sol.columns), path)  # a missing target's columns, named
        t, _ = read_targets(cfg, sol, path)
        cols = [c for c in t.columns if c.startswith("target_")] or ["label"]
        if len(cols) > 1:  # the labels the sample asks for (a subset of data.label_columns)
            cols = [cols[k] for k in submitted_outputs(cfg, comp, sample_frame(cfg, comp))]
        truth = t[cols].set_axis(sol[id_col].str.strip())
    elif cfg.data.solution_csv:
        sol = read_csv(comp.root / cfg.data.solution_csv, [id_col, cfg.data.label_column])
        raw = sol.set_index(sol[id_col].str.strip())[cfg.data.label_column].astype(str).str.strip()
        truth = raw.map(index)
        if truth.isna().any():
            bad = raw[truth.isna()].iloc[0]
            raise UserError(f"{comp.root / cfg.data.solution_csv}: label {bad!r} is not one of {list(index)}")
    elif "label" in comp.test.columns:
        truth = pd.Series(comp.test["label"].to_numpy(), index=comp.test["id"].astype(str))
    else:
        return None
    ids, _ = frame_ids(cfg, comp, df)
    probs = pd.DataFrame(submission_probs(cfg, comp, df), index=pd.Index(ids).astype(str).str.strip())
    probs = probs.reindex(truth.index)
    if probs.isna().any().any():
        raise UserError("the held-out answers name ids the submission lacks; check data.solution_csv")
    y = truth.to_numpy()
    y = y[:, 0] if y.ndim == 2 and y.shape[1] == 1 else y
    return score(cfg.metric, y if not task.has_classes or task.soft else y.astype(int), probs.to_numpy(),
                 task=task, min_tpr=cfg.pauc_min_tpr)


def row_view(cfg: Any, comp: Competition) -> tuple[Any, Competition]:
    """The config and competition as the submission sees them: with data.submission_id_column, one test
    row per submission row (in first-seen order, `row_config`), else both as they are. A test row the
    sample does not list is logged (its images are predicted for nothing)."""
    if "row" not in comp.test.columns:
        return cfg, comp
    rows = list(dict.fromkeys(comp.test["row"].astype(str)))
    out = row_config(cfg)
    view = replace(comp, test=pd.DataFrame({"id": rows, "path": ""}))
    if cfg.data.sample_submission:
        listed = set(sample_frame(out, view)[out.data.id_column].str.strip())
        extra = [r for r in rows if r not in listed]
        if extra:
            log(f"warning: {len(extra)} submission row(s) of data.test_csv are not in the sample submission, "
                f"e.g. {extra[0]!r}; their images are left out")
    return out, view


def decoded_submission(cfg: Any, images: Competition, probs: np.ndarray, decoding: dict[str, Any] | None
                       ) -> tuple[Any, Competition, np.ndarray, pd.DataFrame]:
    """The validated submission for per-image outputs `probs` (N_test, K) in `images.test` order: images
    aggregated into their submission rows (data.submission_id_column, predict.aggregate), decoded with
    `decoding` (comp.predict.thresholds; a binary `probs` decision keeps the probabilities), built and
    checked. Returns the row-level config and competition, the row-level outputs and the frame; the one
    path of make_submission, blends and stacks. data.layout=siim_covid: the study and image rows of
    comp.predict.siim_covid.submission, the competition's test being those rows."""
    from comp.predict import thresholds

    if cfg.data.layout == "siim_covid":  # study and image rows of PredictionStrings (comp.predict.siim_covid)
        from comp.predict import siim_covid

        df, rows = siim_covid.submission(cfg, images, probs)
        return cfg, replace(images, test=pd.DataFrame({"id": df[df.columns[0]].str.strip(), "path": ""})), rows, df
    rcfg, comp = row_view(cfg, images)
    if "row" in images.test.columns:
        _, _, probs = aggregate(images.test["row"].to_numpy(), None, probs, cfg.predict.aggregate,
                                comp_task(rcfg, comp).positive)
    keep = decoding is not None and decoding["method"] != "probs"  # pF1 without a tuned threshold: as they are
    sample = sample_frame(rcfg, comp)  # read once for building, checking and the outputs it asks for
    df = build(rcfg, comp, probs, thresholds.labels(probs, decoding) if keep else None, sample=sample)
    check(rcfg, comp, df, sample)
    asked = submitted_outputs(rcfg, comp, sample)
    if len(asked) < comp.num_classes:
        left = [str(c) for k, c in enumerate(comp.classes) if k not in asked]
        log(f"submission: {len(left)} trained label(s) are not in the sample submission and not submitted: "
            f"{', '.join(left)}")
    return rcfg, comp, probs, df


def row_config(cfg: Any) -> Any:
    """The config as the submission sees it: with data.submission_id_column set, its rows are keyed by that
    column (data.id_column names the images), so the sample, the submission and the held-out answers are
    read by it; else `cfg` itself."""
    if not cfg.data.submission_id_column:
        return cfg
    from omegaconf import OmegaConf

    out = cfg.copy()
    OmegaConf.set_readonly(out, False)
    out.data.id_column = cfg.data.submission_id_column
    OmegaConf.set_readonly(out, True)
    return out


def comp_task(cfg: Any, comp: Competition) -> Task:
    """The config's task over the competition's output names (binary: its positive class)."""
    return make_task(cfg, comp.classes, positive(cfg, comp) if comp.num_classes == 2 else 1)


@dataclass
class Submission:
    frame: pd.DataFrame  # validated, in the sample's order
    text: str  # the CSV
    ids: list[str]  # the frame's ids (the sample's spelling; predict.shape=long: each id once, frame_ids)
    probs: np.ndarray  # (N, K) ensemble outputs of `ids`, every trained output
    classes: list[str]
    task: Task
    score: float | None  # held-out score when the answers are known


def make_submission(exp: Experiment | Any, comp: Competition | None = None) -> Submission:
    """The prediction entry point: the experiment's (`exp`, or a config to make one of) submission, in two
    named steps: the decoding fit on the out-of-fold predictions (comp.predict.thresholds.fit_decoding: qwk
    cut-points, a binary decision threshold, or none), then every trained fold x TTA view over the test set
    (comp.predict.predict.predict_test); then built and validated against the sample submission.

    Raises:
        UserError: a sample that fits no encoding, a bad data.positive_class, no trained fold, folds that
            disagree or do not match the config, a bad test image (predict.on_bad_image=fail).
    """
    from comp.data.competition import load_competition
    from comp.predict import thresholds
    from comp.predict.predict import predict_test

    exp = Experiment.of(exp)
    cfg = exp.cfg
    images = comp or load_competition(cfg)
    rcfg = row_config(cfg)  # the sample is keyed by the submission's rows (data.submission_id_column)
    if cfg.data.layout != "siim_covid":  # (its study and image rows are checked by prepare: check_sample)
        output_mode(rcfg, images, sample_frame(rcfg, images))  # a sample that fits no encoding fails before inference
    positive(rcfg, images)  # so does a data.positive_class that is not a class
    decoding = thresholds.fit_decoding(exp, images.num_classes, images)
    probs = predict_test(exp, images)
    cfg, comp, probs, df = decoded_submission(cfg, images, probs, decoding)
    ids, order = frame_ids(cfg, comp, df)
    return Submission(frame=df, text=to_csv_text(df), ids=ids, probs=probs[order],
                      classes=list(comp.classes), task=comp_task(cfg, comp), score=score_holdout(cfg, comp, df))
