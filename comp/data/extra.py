"""External training data (`data.extra`): other downloads added to the training part of every fold.

Each entry of `data.extra` is a partial `data` section (root, layout, train_csv, id_column, label_column,
train_images, image_ext, group_pattern, ...: the keys of comp.schema.DataConfig, merged over its defaults,
not over the competition's) plus four keys of its own:
- `name`: how logs and sources.json call it (default `extra<i>`);
- `label_map`: `{from: to}`, the source's label spelt as in its CSV or class folder onto a class of the
  competition (a name or value of `data.classes` / `data.class_values`), e.g. DR 2015's `level` grades
  onto APTOS's `diagnosis` (identity: {}) or `{NORMAL: normal}`; a label it does not map must already be a
  competition class, else the load is refused naming the source and the row (class tasks; other tasks read
  the target columns as they are);
- `weight`: its images' share of the training draws: each image is drawn with probability proportional to
  its source's weight (the competition's images 1), n draws with replacement per epoch, as the weighted
  sampler does (comp.data.loader.epoch_order); all weights 1 = the plain shuffled epoch;
- `stage`: `all` (every stage, and a run without `stages`) | `pretrain` (only the stages before the last
  of `stages`: comp/train/stages.py).

The source is read by comp.data.competition.load_competition itself (the same layouts, checks and error
messages), its test part switched off. The images never reach folds.csv, a validation set or an OOF file:
comp.train.build.fold_data appends them to the training rows of the fold only. An image id that is also
a competition image's id (training or test), or another source's, is refused; an image whose bytes are a
competition training image's is left out with a warning (comp.data.duplicates), and so is an image that
`data.duplicates` (scripts/explain.py's near-copies, reviewed) pairs with a training image.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from comp.data.duplicates import leave_out_copies, listed_extra
from comp.data.targets import class_task
from comp.errors import UserError
from comp.log import log
from comp.schema import Config, DataConfig

OWN_KEYS = ("name", "label_map", "weight", "stage")
STAGES = ("all", "pretrain")
DATA_KEYS = {f.name for f in fields(DataConfig)} - {"extra", "extra_only", "duplicates"}


def _entry(e: Any, i: int) -> dict[str, Any]:
    if not OmegaConf.is_dict(e) and not isinstance(e, dict):
        raise UserError(f"bad value for config key 'data.extra[{i}]': {e!r} is not a mapping of data keys")
    d = OmegaConf.to_container(e, resolve=True) if OmegaConf.is_config(e) else dict(e)
    unknown = sorted(set(d) - DATA_KEYS - set(OWN_KEYS))
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r} in data.extra[{i}]; an entry takes data keys "
                        f"(root, layout, train_csv, ...) and {list(OWN_KEYS)}")
    if d.get("stage", "all") not in STAGES:
        raise UserError(f"bad value for config key 'data.extra[{i}].stage': {d['stage']!r}, expected one of "
                        f"{list(STAGES)}")
    w = d.get("weight", 1.0)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
        raise UserError(f"bad value for config key 'data.extra[{i}].weight': {w!r} must be a number > 0")
    lm = d.get("label_map", {}) or {}
    if not isinstance(lm, dict):
        raise UserError(f"bad value for config key 'data.extra[{i}].label_map': {lm!r} is not a mapping")
    return d


def check_extra(cfg: Any) -> None:
    """Check every entry of `data.extra` (keys, stage, weight, label_map) without reading any file.

    Raises:
        UserError: the first bad entry, naming `data.extra[i]` and its key."""
    for i, e in enumerate(cfg.data.extra):
        _entry(e, i)


def extra_entries(cfg: Any, stage: int | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(index, entry dict) of the `data.extra` entries this run uses: `stage` (default cfg.stage) 0 is the
    final stage or a run without stages (entries with stage=all), i >= 1 an earlier stage (every entry)."""
    stage = int(cfg.stage) if stage is None else stage
    out = []
    for i, e in enumerate(cfg.data.extra):
        d = _entry(e, i)
        if d.get("stage", "all") == "all" or stage > 0:
            out.append((i, d))
        else:
            log(f"data.extra[{i}] ({source_name(i, d)!r}) has stage=pretrain: not used in "
                f"the last stage or a run without stages (only stages before the last)")
    return out


def source_name(i: int, d: dict[str, Any]) -> str:
    return str(d.get("name") or f"extra{i}")


def _csv_row(sub: Any, d: dict[str, Any], image_id: str, path: str) -> str:
    """Where a source's image is defined: `<csv>: row N` (csv layout), else its file."""
    from comp.config import resolve_path
    from comp.data.tables import read_csv

    if sub.data.layout != "csv":
        return f"image {path}"
    csv = resolve_path(sub.data.root) / sub.data.train_csv
    ids = read_csv(csv, [sub.data.id_column])[sub.data.id_column].str.strip()
    hit = np.flatnonzero((ids == image_id).to_numpy())
    return f"{csv}: row {int(hit[0]) + 2}" if len(hit) else f"{csv}: id {image_id!r}"


def load_source(cfg: Any, comp: Any, i: int, d: dict[str, Any]) -> pd.DataFrame:
    """The training table of source `data.extra[i]` in the competition's encoding: id, path, label, group,
    source, weight (and target_<name> columns for tasks reading data.label_columns).

    Raises:
        UserError: anything load_competition refuses for the source (naming its files), or a label the
            label_map leaves outside the competition's classes (naming the source and the row)."""
    from comp.data.competition import _encode_labels, load_competition

    name = source_name(i, d)
    data = {k: v for k, v in d.items() if k not in OWN_KEYS}
    data.update(sample_submission="", test_csv="", test_images=[], exclude=[], limit=int(cfg.data.limit),
                classes=[], class_values=[], solution_csv="", download=False)
    if not class_task(cfg):
        data.setdefault("label_columns", list(cfg.data.label_columns))
    if cfg.task == "multihead":
        data.setdefault("heads", OmegaConf.to_container(cfg.data.heads))
    try:
        sub = OmegaConf.merge(OmegaConf.structured(Config), {"task": cfg.task, "metric": cfg.metric,
                                                             "folds": cfg.folds, "data": data})
    except Exception as e:  # an OmegaConf type error in the entry (a list where a string goes...)
        raise UserError(f"bad value in data.extra[{i}] ({name!r}): {e}".splitlines()[0]) from None
    try:
        src = load_competition(sub, extra=True)
    except UserError as e:
        raise UserError(f"data.extra[{i}] ({name!r}): {e}") from None
    table = src.train.copy()
    if class_task(cfg):
        raw = table["label"].map(lambda k: str(src.classes[int(k)]))
        lm = {str(k): str(v) for k, v in (d.get("label_map") or {}).items()}
        mapped = raw.map(lambda v: lm.get(v, v))

        def where(r: int) -> str:
            return (f"data.extra[{i}] ({name!r}) {_csv_row(sub, d, table['id'].iloc[r], table['path'].iloc[r])} "
                    f"(label {raw.iloc[r]!r}, after label_map)")

        table["label"] = _encode_labels(mapped, list(comp.classes), [str(v) for v in comp.label_values], where)[0]
    table["source"] = name
    table["weight"] = float(d.get("weight", 1.0))
    return table.drop(columns=["row"], errors="ignore").reset_index(drop=True)


def load_extra(cfg: Any, comp: Any, stage: int | None = None) -> pd.DataFrame:
    """Every source this run uses (`extra_entries`), stacked: the rows fold_data appends to each fold's
    training set. An empty table (same columns) without sources.

    Raises:
        UserError: a source load_source refuses, or an image id shared with a competition image or with an
            earlier source (one line naming both images)."""
    seen = {str(i): ("competition training image", p) for i, p in zip(comp.train["id"], comp.train["path"],
                                                                     strict=True)}
    seen.update({str(i): ("competition test image", p) for i, p in zip(comp.test["id"], comp.test["path"],
                                                                      strict=True)})
    tables = []
    for i, d in extra_entries(cfg, stage):
        t = load_source(cfg, comp, i, d)
        for image_id, path in zip(t["id"], t["path"], strict=True):
            if image_id in seen:
                what, other = seen[image_id]
                raise UserError(f"data.extra[{i}] ({source_name(i, d)!r}) image id {image_id!r} ({path}) is also "
                                f"the id of a {what} ({other}); ids must be unique across sources (folds, OOF "
                                f"and the cache are keyed by id): remove or rename one")
            seen[image_id] = (f"data.extra image of {source_name(i, d)!r}", path)
        tables.append(t)
    cols = [*comp.train.columns.drop("row", errors="ignore"), "source", "weight"]
    if tables:
        train_paths = comp.train["path"].astype(str).tolist()
        tables = [leave_out_copies(t, train_paths, f"data.extra {t['source'].iloc[0]!r}")[0] for t in tables]
        tables = [_leave_out_listed(cfg, t, set(comp.train["id"].astype(str))) for t in tables]
    if not tables:
        return pd.DataFrame({c: pd.Series([], dtype=comp.train[c].dtype if c in comp.train else object)
                             for c in cols})
    return pd.concat(tables, ignore_index=True)[cols]


def _leave_out_listed(cfg: Any, table: pd.DataFrame, train_ids: set[str]) -> pd.DataFrame:
    """`table` (one source's rows) without the images data.duplicates pairs with a training image
    (comp.data.duplicates.listed_extra: near-copies found by scripts/explain.py), with a warning."""
    if not len(table):
        return table
    name = str(table["source"].iloc[0])
    listed = listed_extra(cfg, name, train_ids)
    drop = table["id"].astype(str).isin(listed)
    if drop.any():
        log(f"warning: data.extra {name!r}: {int(drop.sum())} image(s) are listed in data.duplicates as copies of "
            f"training images (e.g. {table.loc[drop, 'id'].iloc[0]!r}) and are left out: each would reach the "
            f"validation of the fold holding its original")
    return table[~drop].reset_index(drop=True)


def training_rows(cfg: Any, fold_rows: pd.DataFrame, extra: pd.DataFrame) -> pd.DataFrame:
    """A fold's training table: its competition rows (none with `data.extra_only`) tagged source
    `competition`, weight 1, then every extra row."""
    own = fold_rows.iloc[0:0] if cfg.data.extra_only else fold_rows
    own = own.assign(source="competition", weight=1.0)
    return pd.concat([own, extra], ignore_index=True) if len(extra) else own.reset_index(drop=True)


def source_counts(rows: pd.DataFrame) -> dict[str, int]:
    """Images per source of a training table, competition first."""
    counts = rows["source"].value_counts()
    order = ["competition"] + sorted(s for s in counts.index if s != "competition")
    return {s: int(counts.get(s, 0)) for s in order}


def sample_weights(rows: pd.DataFrame) -> np.ndarray | None:
    """Per-image sampling weights of a training table (its sources' `weight`), None when all are 1."""
    w = rows["weight"].to_numpy(np.float64, copy=True)
    return None if np.all(w == 1.0) else w
