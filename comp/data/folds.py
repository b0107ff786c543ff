"""Assign K folds once and reuse them: `<out_dir>/folds.csv` (id, label, group, fold).

Stratified by label, and grouped by patient when the config names a group, so the two eyes of one
patient (DR 2015) or the images of one subject (C-NMC) never sit on both sides of a split. Every later
run reads the same file; a changed dataset or fold setting is refused instead of silently re-split.
The settings the split was made with (n_folds, seed, grouping, data.exclude, smoke mode's data.limit) are
kept beside it in `folds.json`; a folds.csv without one (written by hand, e.g. a competition's official
split) is taken as it is.

Copies of one image are kept in one fold (comp.data.duplicates.split_groups): identical training images
(the same pixels as the kit loads them) and the pairs listed in `data.duplicates` (scripts/explain.py's
near-copies, reviewed) join their groups before the split; folds.json's `copies` says how many and which.
An id on several rows of the labels CSV is one image (data.dedupe_ids, data.label_rows): folds.json keeps
the choice (`label_rows`) and `several_rows` (ids with several rows, their rows, ids whose rows disagreed).
folds.csv's `group` stays the patient; the joined groups only decide the split.

`folds.json` also records the versions of the libraries that made the split (`made_with`: scikit-learn,
numpy, pandas, the kit): another version may split the same data differently, and scikit-learn < 1.8
did not stratify StratifiedGroupKFold(shuffle=True) at all (scikit-learn PR #32540, 1.8.0 changelog),
hence the floor in pyproject.toml. A different version is no reason to refuse an existing split (every
run of an experiment must share one); it is logged.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from comp import io
from comp.data.duplicates import read_pairs, split_groups
from comp.errors import UserError
from comp.log import log

SPLIT_LIBRARIES = ("scikit-learn", "numpy", "pandas", "comp")  # the distributions whose version can change a split
FIXED_SGKF = (1, 8)  # scikit-learn >= 1.8 stratifies StratifiedGroupKFold(shuffle=True) (PR #32540)


def check_split(train: pd.DataFrame, n_folds: int, grouped: bool) -> None:
    """Raise `UserError` when `train` cannot be split into `n_folds` stratified (grouped) folds."""
    if len(train) < n_folds:
        raise UserError(f"folds.n_folds={n_folds} but there are only {len(train)} training image(s); "
                        f"lower folds.n_folds")
    smallest = int(train["label"].value_counts().min()) if len(train) else 0
    if _kind(train) == "class" and smallest < n_folds:
        raise UserError(f"folds.n_folds={n_folds} but the rarest class has only {smallest} image(s); "
                        f"lower folds.n_folds")
    n_groups = int(train["group"].nunique())
    if grouped and n_groups < n_folds:
        raise UserError(f"folds.n_folds={n_folds} but the data has only {n_groups} patient(s) (data.group_pattern / "
                        f"data.group_column); "
                        f"lower folds.n_folds")


def _kind(train: pd.DataFrame) -> str:
    """class (integer labels) | value (regression: float labels) | rows (multi-label: target_ columns)."""
    if train["label"].dtype.kind == "f":
        return "value"
    return "rows" if _text_label(train) and any(c.startswith("target_") for c in train.columns) else "class"


def _text_label(train: pd.DataFrame) -> bool:
    """Multi-label rows "0,1,0" are text: object dtype in pandas 2, the `str` dtype in pandas 3."""
    return not pd.api.types.is_numeric_dtype(train["label"])


def strata(train: pd.DataFrame, n_folds: int) -> pd.Series:
    """What the split stratifies on: the class, or a regression target's quantile bin (up to 10 bins,
    each holding at least n_folds images), so every fold spans the target's range."""
    if _kind(train) != "value":
        return train["label"]
    bins = max(1, min(10, len(train) // (2 * n_folds)))
    return pd.qcut(train["label"].rank(method="first"), bins, labels=False)


def _multilabel(train: pd.DataFrame, n_folds: int, seed: int, grouped: bool) -> list[np.ndarray]:
    """Validation row indices of each fold, stratified over every label at once by iterative
    stratification (Sechidis et al. 2011, the iterative-stratification package's MultilabelStratifiedKFold).
    Grouped: the groups are split, each carrying the union (max) of its images' labels, so a patient's
    images stay together (an approximation: a group counts once per label, whatever its size)."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    y = train[[c for c in train.columns if c.startswith("target_")]].to_numpy()
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    if not grouped:
        return [v for _, v in splitter.split(np.zeros(len(y)), y)]
    codes, groups = pd.factorize(train["group"])
    per_group = pd.DataFrame(y).groupby(codes).max().to_numpy()
    return [np.flatnonzero(np.isin(codes, v)) for _, v in splitter.split(np.zeros(len(groups)), per_group)]


def split(train: pd.DataFrame, n_folds: int, seed: int, grouped: bool) -> pd.Series:
    """Fold number (0..n_folds-1) for each row of `train` (columns label, group; target_* for multi-label):
    StratifiedGroupKFold / StratifiedKFold on the class or binned value (`strata`), iterative
    stratification for multi-label targets (`_multilabel`)."""
    check_split(train, n_folds, grouped)
    fold = pd.Series(-1, index=train.index, dtype=int)
    if _kind(train) == "rows":
        parts = [(None, v) for v in _multilabel(train, n_folds, seed, grouped)]
    elif grouped:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        parts = splitter.split(train, strata(train, n_folds), groups=train["group"])
    else:
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        parts = splitter.split(train, strata(train, n_folds))
    for k, (_, valid_idx) in enumerate(parts):
        fold.iloc[valid_idx] = k
    return fold


@dataclass(frozen=True)
class SplitFiles:
    """Where an experiment keeps its split (comp.experiment.Experiment.split names them): `csv` (id, label,
    group, fold), whose existence marks a finished split, and `meta` (what made it: settings, versions)."""

    csv: Path
    meta: Path


def settings(cfg: Any) -> dict[str, Any]:
    """What decides the split (kept in folds.json, with the library versions that made it); `exclude`
    (data.exclude) only when set, as in the folds.json of runs made before the key."""
    grouped = bool(cfg.folds.grouped and (cfg.data.group_pattern or cfg.data.group_column
                                            or cfg.data.layout == "siim_covid"))  # siim_covid: by study
    out = {"n_folds": int(cfg.folds.n_folds), "seed": int(cfg.folds.seed), "grouped": grouped,
           "group_pattern": cfg.data.group_pattern if grouped else ""}
    if grouped and cfg.data.group_column:
        out["group_column"] = cfg.data.group_column
    exclude = cfg.data.exclude
    exclude = [str(v) for v in exclude] if OmegaConf.is_list(exclude) else exclude
    out = {**out, "exclude": exclude} if exclude else out
    out = {**out, "duplicates": str(cfg.data.duplicates)} if cfg.data.duplicates else out
    out = {**out, "label_rows": str(cfg.data.label_rows)} if cfg.data.label_rows != "refuse" else out
    return {**out, "limit": int(cfg.data.limit)} if cfg.data.limit else out  # only a smoke run says so


def library_versions() -> dict[str, str]:
    """{distribution: installed version} of SPLIT_LIBRARIES ("unknown" for one not installed as a
    distribution, e.g. the kit run from a checkout without `pip install -e .`)."""
    out = {}
    for name in SPLIT_LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "unknown"
    return out


def _release(version: str) -> tuple[int, ...]:
    """(major, minor) of a version string like '1.7.2' or '1.8.dev0'; () when it is not one."""
    parts = []
    for p in version.split(".")[:2]:
        if not p.isdigit():
            break
        parts.append(int(p))
    return tuple(parts)


def _note_versions(files: SplitFiles, made: dict[str, Any], grouped: bool) -> None:
    """Log (never refuse) how the libraries that made the split differ from those installed now."""
    path = files.csv
    then = made.get("made_with")
    if not isinstance(then, dict):
        return  # written before versions were recorded
    now = library_versions()
    changed = [f"{k} {then.get(k)} (now {v})" for k, v in now.items() if then.get(k) not in (None, v)]
    if changed:
        log(f"folds: {path} was made with {', '.join(changed)}; kept as it is (every run of this experiment "
            f"uses the same folds)")
    sk = _release(str(then.get("scikit-learn", "")))
    if grouped and sk and sk < FIXED_SGKF:
        log(f"folds: {path} was made by scikit-learn {then['scikit-learn']}, whose StratifiedGroupKFold(shuffle="
            f"True) did not stratify (fixed in 1.8); delete it (and {files.meta.name}) to re-split them stratified")


def _check(files: SplitFiles, folds: pd.DataFrame, train: pd.DataFrame, want: dict[str, Any]) -> None:
    """Refuse folds.csv when the data or the settings differ from those it was made with."""
    path, meta_path = files.csv, files.meta
    redo = f"delete it (and {meta_path.name}) or use another out_dir to re-split"
    made = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if made is not None and made.get("exclude", []) != want.get("exclude", []):
        raise UserError(f"{path} was made with data.exclude={made.get('exclude', [])!r}, the config now says "
                        f"{want.get('exclude', [])!r}; {redo}")
    if made is not None and made.get("duplicates", "") != want.get("duplicates", ""):
        raise UserError(f"{path} was made with data.duplicates={made.get('duplicates', '')!r}, the config now says "
                        f"{want.get('duplicates', '')!r}; {redo}")
    if made is not None and made.get("label_rows", "refuse") != want.get("label_rows", "refuse"):
        raise UserError(f"{path} was made with data.label_rows={made.get('label_rows', 'refuse')!r}, the config now "
                        f"says {want.get('label_rows', 'refuse')!r} (the targets of ids on several rows); {redo}")
    if made is not None and made.get("limit", 0) != want.get("limit", 0):  # a smoke run's split (data.limit)
        raise UserError(f"{path} was made with data.limit={made.get('limit', 0)!r} (0 = every image), the config "
                        f"now says {want.get('limit', 0)!r}; give the smoke run its own out_dir, or {redo}")
    if len(folds) != len(train) or set(folds["id"]) != set(train["id"]):
        only_f = sorted(set(folds["id"]) - set(train["id"]))[:1]
        only_t = sorted(set(train["id"]) - set(folds["id"]))[:1]
        which = (f"e.g. {only_f[0]!r} is in it but not in the data" if only_f else
                 f"e.g. {only_t[0]!r} is in the data but not in it")
        raise UserError(f"{path} was made from a different set of images ({len(folds)} rows, data has "
                        f"{len(train)}; {which}); {redo}")
    merged = train[["id", "label", "group"]].merge(folds[["id", "label", "group"]], on="id", suffixes=("", "_f"))
    changed = merged["label"] != merged["label_f"]
    if changed.any():
        raise UserError(f"{path}: the label of {merged.loc[changed, 'id'].iloc[0]!r} changed since the folds "
                        f"were made; {redo}")
    if folds["fold"].nunique() != want["n_folds"]:
        raise UserError(f"{path} has {folds['fold'].nunique()} folds but folds.n_folds={want['n_folds']}; {redo}")
    if made is None:
        return  # a hand-made split: trusted as it is
    for key in ("n_folds", "seed", "grouped", "group_pattern", "group_column"):
        if made.get(key) != want.get(key):
            name = {"n_folds": "folds.n_folds", "seed": "folds.seed", "grouped": "folds.grouped",
                    "group_pattern": "data.group_pattern", "group_column": "data.group_column"}[key]
            raise UserError(f"{path} was made with {name}={made.get(key)!r}, the config now says {want.get(key)!r}; "
                            f"{redo}")
    if want["grouped"] and (merged["group"] != merged["group_f"]).any():
        bad = merged.loc[merged["group"] != merged["group_f"], "id"].iloc[0]
        raise UserError(f"{path}: the patient of {bad!r} changed since the folds were made; {redo}")
    if "copies" not in made:
        log(f"folds: {path} was made before identical training images were kept in one fold; kept as it is "
            f"(delete it and {meta_path.name} to re-split with copies together)")
    _note_versions(files, made, bool(made.get("grouped")))


def _grouped(train: pd.DataFrame, want: dict[str, Any]) -> bool:
    """Grouped when configured and the pattern joins images (one that joins none: plain StratifiedKFold)."""
    return bool(want["grouped"] and train["group"].nunique() < len(train))


def check_folds(cfg: Any, train: pd.DataFrame, files: SplitFiles) -> None:
    """Before the slow work (the image cache): fail now if folds.csv will have to be made and cannot be."""
    if not files.csv.exists():
        check_split(train, int(cfg.folds.n_folds), _grouped(train, settings(cfg)))
        if cfg.data.duplicates:
            read_pairs(cfg.data.duplicates)  # a missing or malformed list fails now, not after the cache


def _loader(cfg: Any) -> Callable[[str], np.ndarray]:
    """The kit's image loader (comp.data.cache.image_loader: the cache entries when prepare built them)."""
    from comp.config import resolve_path
    from comp.data.cache import image_loader

    return image_loader(cfg, SimpleNamespace(root=resolve_path(cfg.data.root)))  # it reads only .root


def load_or_make_folds(cfg: Any, train: pd.DataFrame, files: SplitFiles,
                       load: Callable[[str], np.ndarray] | None = None,
                       several_rows: dict[str, int] | None = None) -> pd.DataFrame:
    """The fold table for this experiment: read from `files.csv` (folds.csv) when it exists (and still
    matches the data and settings), else made and written atomically (`files.meta` first, then the csv,
    whose existence marks a finished split). A new split keeps copies together: each training image is
    read once with `load` (default: the kit's loader for `cfg`, the cache when prepare built it) to find
    identical ones (comp.data.duplicates.split_groups), and data.duplicates' pairs are joined.
    `several_rows` (Competition.several_rows: ids of the labels CSV on several rows, joined by
    data.label_rows) is kept in a new folds.json beside data.label_rows.

    Raises:
        UserError: folds.csv exists but was made from other images, labels or fold settings; a bad
            data.duplicates file.
    """
    path = files.csv
    want = settings(cfg)
    if path.exists():
        text_label = _text_label(train)  # multi-label rows "0,1,0" stay text
        folds = pd.read_csv(path, dtype={"id": str, "group": str, **({"label": str} if text_label else {})},
                            keep_default_na=False)
        _check(files, folds, train, want)
        return train.merge(folds[["id", "fold"]], on="id")
    # a MIL row's many images are not compared (its patient column keeps copies of a study together)
    joined, copies = split_groups(cfg, train, None if cfg.mil.source != "none" else load or _loader(cfg))
    if copies["groups_joined"]:  # copies on both sides of a patient split, or of a split without groups
        fold = split(train.assign(group=joined), want["n_folds"], want["seed"], True)
    else:
        fold = split(train, want["n_folds"], want["seed"], _grouped(train, want))
    out = train.assign(fold=fold)
    path.parent.mkdir(parents=True, exist_ok=True)
    made = {**want, "copies": copies, "made_with": library_versions()}
    if several_rows:
        made = {**made, "label_rows": str(cfg.data.label_rows), "several_rows": dict(several_rows)}
    io.write_json(files.meta, made)
    io.write_csv(path, out[["id", "label", "group", "fold"]])
    return out
