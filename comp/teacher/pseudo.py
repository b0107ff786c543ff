"""Making pseudo-labels (scripts/pseudo.py): an experiment's fold ensemble (or a saved `--save-probs` CSV of
it, or of a blend) labels test images and/or unlabelled external images; a confidence rule keeps the sure
ones; the rows are written as a CSV that `data.pseudo` reads (comp.teacher.pseudo_rows), with a record
`<csv>.json` of which experiment, split and checkpoints made it and the CSV's own sha256.

Confidence of a row: softmax heads the top probability; binary the larger of p and 1 - p; multi-label the
least sure label's; a regression head has none (every row is kept, `--min-confidence` must be 0).
Hard labels: the argmax class (multi-label: each label's p >= 0.5 as 0/1 rows; regression: the value);
soft labels: the outputs as they are (`prob_<name>` columns, or `value`).
Images whose bytes are a training image's (a copy under another name, or the file itself) are left out with
a warning and listed in the record (`left_out_copies`; comp.data.duplicates).
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from comp import io
from comp.config import resolve_path
from comp.data.competition import IMAGE_EXTS, Competition, unique_ids
from comp.data.duplicates import leave_out_copies
from comp.data.layouts import store_keys
from comp.data.readers import store_of
from comp.errors import UserError
from comp.experiment import Experiment
from comp.experiment.model import FoldModel
from comp.experiment.oof import oof_probs, prob_frame
from comp.log import log
from comp.predict.predict import predict_test
from comp.tasks import Task
from comp.teacher.pseudo_rows import folds_sha256, record_path


def confidence(task: Task, out: np.ndarray) -> np.ndarray:
    """(N,) confidence of (N, K) outputs (module doc); ones for a regression head."""
    if task.head == "regression":
        return np.ones(len(out))
    if task.head == "multihead":  # the least sure head's top probability
        return np.min([out[:, s].max(1) for s in task.slices()], axis=0)
    if task.head == "softmax" or task.kind == "binary":
        return out.max(1)
    return np.maximum(out, 1 - out).min(1)


def label_rows(task: Task, ids: list[str], paths: list[str], out: np.ndarray, min_confidence: float,
               soft: bool) -> pd.DataFrame:
    """The kept rows as the pseudo CSV holds them: id, path, then `label` (hard classes), or the outputs'
    columns (`prob_<name>`, soft or 0/1 labels; `value`).

    Raises:
        UserError: a confidence threshold outside [0, 1], or one above 0 for a regression head."""
    if not 0.0 <= min_confidence <= 1.0:
        raise UserError(f"--min-confidence {min_confidence!r}: a probability in [0, 1]")
    if task.head == "regression" and min_confidence > 0:
        raise UserError("--min-confidence: a regression head's outputs carry no confidence; leave it at 0")
    conf = confidence(task, out)
    keep = conf >= min_confidence
    out = out[keep]
    if soft or task.head == "regression":
        df = prob_frame(list(np.asarray(ids)[keep]), out, task)
    elif task.kind == "multilabel":
        df = prob_frame(list(np.asarray(ids)[keep]), (out >= 0.5).astype(np.float32), task)
    elif task.head == "multihead":  # each head's argmax as its one-hot row
        hard = np.zeros_like(out, dtype=np.float32)
        for s in task.slices():
            hard[np.arange(len(out)), s.start + out[:, s].argmax(1)] = 1.0
        df = prob_frame(list(np.asarray(ids)[keep]), hard, task)
    else:
        df = pd.DataFrame({"id": list(np.asarray(ids)[keep]), "label": out.argmax(1)})
    df.insert(1, "path", list(np.asarray(paths)[keep]))
    df.attrs["top_confidence"] = float(conf.max()) if len(conf) else None  # for make_pseudo's message
    return df


def external_images(folders: list[str]) -> pd.DataFrame:
    """id, path of every image file under `folders` (recursively), or in an HDF5 image store named there
    (`<store>/<key>`, comp.data.hdf5). The id is the file name without its
    extension, or where names repeat (subfolders, two folders, two formats) the shortest unique tail of its
    path from the folder's name on (comp.data.competition.unique_ids).

    Raises:
        UserError: a missing folder, or no image in them; a store that cannot be opened (ImageError)."""
    rows = []
    for f in folders:
        d = resolve_path(f)
        if d.is_file() and store_of(d) is not None:  # an HDF5 image store: its keys are the images
            rows += [(Path(d.name) / k, str(d / k)) for k in store_keys(d)]
            continue
        if not d.is_dir():
            raise UserError(f"--images {f!r}: no such folder or HDF5 image store ({d})")
        rows += [(p.relative_to(d.parent), str(p)) for p in sorted(d.rglob("*"))
                 if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
    if not rows:
        raise UserError(f"--images {folders}: no image files ({', '.join(sorted(IMAGE_EXTS))}) found")
    ids = unique_ids([r for r, _ in rows], f"--images {folders}")  # nested folders may repeat a file name
    return pd.DataFrame({"id": ids, "path": [p for _, p in rows]})


def teacher_task(models: list[FoldModel]) -> Task:
    """The task of the experiment's first fold model."""
    if not models[0].meta.get("task"):
        raise UserError(f"{models[0].path} records no task (an older kit made it); retrain it")
    return models[0].task


def predict_rows(exp: Experiment, comp: Competition, table: pd.DataFrame, models: list[FoldModel]) -> np.ndarray:
    """The experiment's fold × TTA ensemble outputs over the images of `table` (id, path)."""
    return predict_test(exp, dataclasses.replace(comp, test=table.reset_index(drop=True)), models=models)


def make_pseudo(exp: Experiment | Any, comp: Competition, out: Path, min_confidence: float, soft: bool, test: bool,
                images: list[str], probs: str | None) -> pd.DataFrame:
    """Write the pseudo-label CSV `out` and its record from the experiment `exp` (the teacher, or its config);
    returns the rows.

    Sources: `probs` (a --save-probs CSV over the test images, e.g. of a blend), else the experiment's
    ensemble over the test images when `test`; plus its ensemble over the external `images` folders.

    Raises:
        UserError: no source, an untrained experiment, a probs file that does not fit the test set or the
            task, or a threshold `label_rows` refuses."""
    exp = Experiment.of(exp)
    cfg = exp.cfg
    if not (test or images or probs):
        raise UserError("scripts/pseudo.py: name a source: --test, --probs FILE or --images FOLDER")
    if out.suffix != ".csv":
        raise UserError(f"--out {str(out)!r}: name a .csv file")
    models = exp.load_models(comp.classes)  # every fold trained, else a UserError naming the missing one
    checkpoints = [m.path for m in models]
    split = exp.split.csv
    if not split.is_file():
        raise UserError(f"{exp.dir} has no {split.name}; train the experiment first")
    task = teacher_task(models)
    mil = cfg.mil.source != "none"
    if mil and images:  # a MIL row is a folder of series, a breast's views or a slide's tiles, not one image
        raise UserError(f"--images: external images are single images, but mil.source={cfg.mil.source} rows are "
                        f"many each; pseudo-label the test rows (--test or --probs)")
    parts, sources = [], []
    if probs:
        df = pd.read_csv(resolve_path(probs), dtype={"id": str})
        cols = task.output_columns()
        if [c for c in df.columns if c != "id"] != cols:
            raise UserError(f"--probs {probs!r} has columns {list(df.columns)}; this task's outputs are {cols}")
        where = comp.test.assign(id=comp.test["id"].astype(str)).set_index("id")["path"]
        missing = df.loc[~df["id"].isin(where.index), "id"]
        if len(missing):
            raise UserError(f"--probs {probs!r}: id {missing.iloc[0]!r} is not a test image of {cfg.data.root}")
        parts.append(label_rows(task, df["id"].tolist(), where.loc[df["id"]].tolist(), oof_probs(df),
                                min_confidence, soft))
        sources.append({"probs": str(resolve_path(probs)), "sha256": io.sha256_file(resolve_path(probs))})
    elif test:
        table = comp.test[["id", "path"]].astype(str)
        parts.append(label_rows(task, table["id"].tolist(), table["path"].tolist(),
                                predict_rows(exp, comp, table, models), min_confidence, soft))
        sources.append("test")
    if images:
        table = external_images(images)
        parts.append(label_rows(task, table["id"].tolist(), table["path"].tolist(),
                                predict_rows(exp, comp, table, models), min_confidence, soft))
        sources.append({"images": [str(resolve_path(f)) for f in images]})
    rows = pd.concat(parts, ignore_index=True)
    if mil:  # the byte comparison is of single image files; a MIL row's path is a folder or a view's key
        copies: dict[str, str] = {}
        log(f"pseudo-labels: mil.source={cfg.mil.source}: test rows are not compared with the training rows' "
            f"bytes (single images only)")
    else:
        rows, copies = leave_out_copies(rows, comp.train["path"].astype(str).tolist(), "pseudo-labels")
    rows["id"] = rows["id"].astype(str)
    named = rows[rows["id"].isin(set(comp.train["id"].astype(str)))]
    if len(named):  # another file under a training image's name: folds, the cache and OOF are keyed by id
        i, name = named.index[0], str(named["id"].iloc[0])
        raise UserError(f"pseudo-labels: {rows.at[i, 'path']} has the id {name!r} of the training image "
                        f"{comp.train.loc[comp.train['id'].astype(str) == name, 'path'].iloc[0]}; "
                        f"rename it (ids are file names without the extension and must be unique)")
    twice = rows[rows["id"].duplicated(keep=False)]
    if len(twice):
        raise UserError(f"pseudo-labels: {twice['path'].iloc[0]} and {twice['path'].iloc[1]} share the id "
                        f"{str(twice['id'].iloc[0])!r}; rename one (ids must be unique)")
    if not len(rows) and copies:
        raise UserError(f"pseudo-labels: every image is a copy of a training image (e.g. "
                        f"{' = '.join(next(iter(copies.items())))}); nothing is left to pseudo-label")
    if not len(rows):
        tops = [p.attrs["top_confidence"] for p in parts if p.attrs.get("top_confidence") is not None]
        raise UserError(f"pseudo-labels: no row reaches --min-confidence {min_confidence} (the highest confidence "
                        f"is {max(tops):.4f}); lower it" if tops else "pseudo-labels: no image to label")
    io.write_csv(out, rows, what="--out")
    record = {"made": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "out_dirs": [str(exp.dir)], "config_hash": models[0].meta.get("config_hash"),
              "folds_sha256": folds_sha256(pd.read_csv(split, dtype={"id": str})),
              "checkpoints": {str(p): io.sha256_file(p) for p in checkpoints},
              "sources": sources, "min_confidence": min_confidence, "labels": "soft" if soft else "hard",
              "rows": len(rows), "left_out_copies": dict(sorted(copies.items())), "csv_sha256": io.sha256_file(out)}
    io.write_json(record_path(out), record)
    log(f"pseudo-labels: {len(rows)} row(s) kept at confidence >= {min_confidence} -> {out} "
        f"(record {record_path(out).name})")
    return rows
