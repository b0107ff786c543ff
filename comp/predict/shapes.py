"""Where each output goes in the sample submission: its row column, the column or long row of each output
(comp.predict.submission's module doc lists the shapes), and the ids a submission covers."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp.data.checks import long_example, long_hint, long_labels, long_outputs, long_rows
from comp.data.competition import Competition
from comp.errors import UserError
from comp.likelihood import SCALE_LOSSES


def read_exact(path: Path, what: str = "submission") -> pd.DataFrame:
    """A CSV as strings, header and fields exactly as written (a UTF-8 BOM and CRLF line ends are
    accepted, as Kaggle accepts them; blank lines are skipped).

    Raises:
        UserError: missing, not UTF-8, no header, or a line with more or fewer fields than the header.
    """
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [(i, r) for i, r in enumerate(csv.reader(f), start=1) if r]
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text") from None
    except csv.Error as e:
        raise UserError(f"{what} {path} is not a readable CSV: {e}") from None
    if not rows:
        raise UserError(f"{what} {path} is empty (no header)")
    header = rows[0][1]
    for line, r in rows[1:]:
        if len(r) != len(header):
            raise UserError(f"{what} {path} line {line} has {len(r)} field(s), the header has {len(header)}")
    df = pd.DataFrame([r for _, r in rows[1:]], columns=header, dtype=str)
    df.attrs["lines"] = [line for line, _ in rows[1:]]  # file line of each row, for messages
    return df


def sample_frame(cfg: Any, comp: Competition) -> pd.DataFrame:
    """The sample submission as strings, or an `id,label` frame over the test images when the data has
    none (folder datasets like chest X-ray)."""
    if cfg.data.sample_submission:
        path = comp.root / cfg.data.sample_submission
        sample = read_exact(path, "sample submission")
        if cfg.predict.shape == "long":
            return sample
        ids = set(comp.test["id"].astype(str))
        if cfg.data.id_column not in sample.columns or not sample[cfg.data.id_column].str.strip().isin(ids).any():
            example = long_example(sample.iloc[:, 0], ids, [str(c) for c in comp.classes], cfg.predict.long_separator)
            if example:
                raise UserError(long_hint(path, example))
        if cfg.data.id_column not in sample.columns:
            raise UserError(f"sample submission {comp.root / cfg.data.sample_submission} has no column "
                            f"{cfg.data.id_column!r} (data.id_column); its header is {list(sample.columns)}")
        return sample
    if cfg.predict.shape == "long":
        raise UserError("predict.shape=long needs data.sample_submission: its rows name each id and label")
    return pd.DataFrame({cfg.data.id_column: comp.test["id"].astype(str), cfg.data.label_column: ""})


def row_column(cfg: Any, sample: pd.DataFrame) -> str:
    """The sample's column naming its rows: data.id_column, or with predict.shape=long its first column."""
    return sample.columns[0] if cfg.predict.shape == "long" else cfg.data.id_column


def class_columns(comp: Competition, columns: list[str], id_col: str, subset: bool = False
                  ) -> list[tuple[str, int]] | None:
    """(sample column, output index) of each probability column, in output order, when the sample has one
    per class named by the class values (e.g. 0..4) or by the class names, or with `subset`
    (data.label_columns tasks) one for some of the labels; else None."""
    cols = [c for c in columns if c != id_col]
    for names in ([str(v) for v in comp.label_values], [str(c) for c in comp.classes]):
        if len(cols) == len(names) > 1 and set(cols) == set(names):
            return [(c, k) for k, c in enumerate(names)]
    names = [str(c) for c in comp.classes]
    if subset and cols and set(cols) < set(names) and len(set(cols)) == len(cols):
        return sorted(((c, names.index(c)) for c in cols), key=lambda ck: ck[1])
    return None


def long_index(cfg: Any, comp: Competition, df: pd.DataFrame, what: str = "sample submission"
               ) -> tuple[list[int], list[int]]:
    """predict.shape=long: the test row (`comp.test` index) and the label (comp.data.checks.long_labels: an
    output, or a task=multihead target) of each row of `df`."""
    labels = long_labels(cfg) if cfg.task == "multihead" else [str(c) for c in comp.classes]
    return long_rows(df.iloc[:, 0], comp.test["id"].astype(str).tolist(), labels, cfg.predict.long_separator, what)


def long_cells(cfg: Any, comp: Competition, df: pd.DataFrame, what: str = "sample submission"
               ) -> tuple[np.ndarray, list[np.ndarray]]:
    """predict.shape=long: the test row of each row of `df` and, per value column after its row id, the
    output index each row's cell holds (one column: the label's output; task=multihead: the row's target's
    output of that class, comp.data.checks.long_outputs)."""
    rows, labels = long_index(cfg, comp, df, what)
    table = long_outputs(cfg, list(df.columns), what)
    return np.asarray(rows, dtype=np.int64), [table[labels, v] for v in range(table.shape[1])]


def submitted_outputs(cfg: Any, comp: Competition, sample: pd.DataFrame) -> list[int]:
    """The output indices the sample asks for, in output order: all of them, unless a subset of the labels
    (wide) or the labels its long rows name."""
    mode = output_mode(cfg, comp, sample)
    if mode == "long":
        return sorted(set(np.concatenate(long_cells(cfg, comp, sample)[1]).tolist()))
    if mode == "class_probs":
        return [k for _, k in class_columns(comp, list(sample.columns), cfg.data.id_column, True)]
    return list(range(comp.num_classes))


def output_mode(cfg: Any, comp: Competition, sample: pd.DataFrame) -> str:
    """`label`, `class_probs`, `binary_prob`, `value`, `value_sigma` (a value with its uncertainty: the sample's
    two value columns) or `long`: what this competition's submission holds (module doc)."""
    if cfg.predict.shape == "long":
        long_labels(cfg)
        long_outputs(cfg, list(sample.columns), "the sample submission")
        return "long"
    cols = [c for c in sample.columns if c != cfg.data.id_column]
    names = [str(v) for v in comp.label_values]
    want = cfg.predict.output
    several = bool(cfg.data.label_columns) or cfg.task == "multihead"  # a column per output; a subset may be asked
    if class_columns(comp, list(sample.columns), cfg.data.id_column, several):
        if want == "label":
            raise UserError(f"predict.output=label but the sample submission has one column per class {cols}")
        return "class_probs"
    if cfg.task == "regression" and cfg.train.loss in SCALE_LOSSES and len(cols) == 2:
        return "value_sigma"  # a value and its sigma in the sample's two columns, in that order (OSIC: FVC, Confidence)
    known = [str(c) for c in comp.classes]
    if several and any(c in known for c in cols):
        unknown = [c for c in cols if c not in known]
        what = "output (data.heads" if cfg.task == "multihead" else "label (data.label_columns"
        raise UserError(f"sample submission column {unknown[0]!r} is not a trained {what} "
                        f"{known})" if unknown else f"the sample submission repeats a label column: {cols}")
    if len(cols) != 1:
        raise UserError(f"the sample submission's columns {cols} are neither one value column nor one column "
                        f"per class {names or list(comp.classes)}; check data.id_column and data.classes"
                        f"{' / data.label_columns' if cfg.data.label_columns else ''}")
    if cfg.task == "regression":
        return "value"
    if cfg.task in ("multilabel", "multihead") or cfg.data.label_columns:
        raise UserError(f"the sample submission has one value column {cols} but task={cfg.task} predicts "
                        f"{list(comp.classes)}; the sample needs one column per label")
    scored_on_probs = cfg.metric in ("auc", "pauc", "pf1", "log_loss")  # else hard labels (accuracy, f1, ...)
    if want == "prob" or (want == "auto" and scored_on_probs):
        if len(names) != 2:
            raise UserError(f"predict.output={want} with one value column needs two classes, the data has {names}")
        return "binary_prob"
    return "label"


def sample_order(sample: pd.DataFrame, id_col: str, comp: Competition) -> np.ndarray:
    """Index into `comp.test` of each sample row."""
    pos = pd.Series(np.arange(len(comp.test)), index=comp.test["id"].astype(str))
    order = sample[id_col].str.strip().map(pos)
    if order.isna().any():
        raise UserError(f"sample submission id {sample[id_col][order.isna()].iloc[0]!r} has no test image")
    return order.astype(int).to_numpy()


def frame_ids(cfg: Any, comp: Competition, df: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """The ids a validated submission covers, in its row order (with predict.shape=long each id once, where
    its first row stands), and the `comp.test` index of each."""
    if cfg.predict.shape == "long":
        rows = list(dict.fromkeys(long_index(cfg, comp, df, "submission")[0]))
        return comp.test["id"].astype(str).iloc[rows].tolist(), np.asarray(rows, dtype=int)
    return df[cfg.data.id_column].tolist(), sample_order(df, cfg.data.id_column, comp)
