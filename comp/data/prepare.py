"""scripts/prepare.py's work: data present, every image checked (and cached), folds written.

All the problems of a download are reported at once, by kind (missing, empty, truncated, corrupt),
in one `error:` line naming the files, with the complete list in a CSV the caller names (the experiment's
image_problems.csv); the folds are written only when every image can be used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from comp import io
from comp.config import resolve_path
from comp.data.cache import cache_folder, image_loader, process_images
from comp.data.competition import Problem, load_competition
from comp.data.download import ensure_data
from comp.data.extra import load_extra
from comp.data.folds import SplitFiles, check_folds, load_or_make_folds
from comp.data.preprocess import check_steps
from comp.errors import UserError
from comp.log import log

KINDS = {"missing": "no image file", "empty": "empty (0 bytes)", "truncated": "truncated", "corrupt": "corrupt",
         "unsupported": "unsupported"}  # unsupported: a DICOM syntax without decoder, or several frames
SHOWN = 10  # files named per kind on the error line; the rest are in image_problems.csv
DETAILED = 1  # a kind with this many files at most gives each one's reason (the DICOM element, the decoder's
# message) on the line too; missing and unsupported files always do


def problems_message(problems: list[Problem], total: int, root: Path, report: Path | None) -> str:
    """One line: the count of each kind, then the files of each (relative to data.root), with the reason of
    each where there are few (DETAILED)."""

    def rel(p: str) -> str:
        try:
            return str(Path(p).relative_to(root))
        except ValueError:
            return p

    counts = {k: [q for q in problems if q.kind == k] for k in KINDS}
    head = ", ".join(f"{len(v)} {KINDS[k]}" for k, v in counts.items() if v)
    parts = []
    for k, items in counts.items():
        if items:
            told = k in ("missing", "unsupported") or len(items) <= DETAILED  # why each file cannot be used
            names = ", ".join(rel(q.path) + (f" [{q.detail}]" if told and q.detail else "") for q in items[:SHOWN])
            more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
            parts.append(f"{KINDS[k]}: {names}{more}")
    where = f"; full list in {report}" if report is not None else ""
    return f"{len(problems)} of {total} images cannot be used ({head}) under {root}: {'; '.join(parts)}{where}"


def _target_summary(cfg: Any, comp: Any) -> str:
    """What the training targets hold, for prepare's summary line: images per class, positives per label
    (multi-label), the range and mean of a regression target, the classes of the largest share (soft)."""
    if cfg.task == "regression":
        v = comp.train["label"].astype(float)
        return f"with {cfg.data.label_column} from {v.min():.4g} to {v.max():.4g} (mean {v.mean():.4g})"
    if cfg.task == "multilabel":
        pos = comp.targets(comp.train).sum(0).astype(int).tolist()
        return f"with {comp.num_classes} labels, positives per label {dict(zip(comp.classes, pos, strict=True))}"
    if cfg.task == "multihead":  # labelled rows per class of each target
        from comp.tasks import head_specs

        n, start, parts = comp.targets(comp.train).sum(0).astype(int), 0, []
        for target, classes in head_specs(cfg):
            parts.append(f"{target} {dict(zip(classes, n[start:start + len(classes)].tolist(), strict=True))}")
            start += len(classes)
        return f"with {len(parts)} targets: " + "; ".join(parts)
    per_class = comp.train["label"].value_counts().sort_index().tolist()
    return f"in {comp.num_classes} classes {per_class}"


def pseudo_paths(cfg: Any) -> list[str]:
    """The images of `data.pseudo` ([] when unset), for the cache; the file's rules (its record, no training
    image, the split) are checked when a fold trains (comp.teacher.pseudo_rows).

    Raises:
        UserError: the file is missing or has no `path` column."""
    if not cfg.data.pseudo:
        return []
    path = resolve_path(cfg.data.pseudo)
    if not path.is_file():
        raise UserError(f"data.pseudo {str(path)!r} does not exist; make it with scripts/pseudo.py")
    df = pd.read_csv(path, dtype=str)
    if "path" not in df.columns:
        raise UserError(f"data.pseudo {str(path)!r} has no 'path' column; make it with scripts/pseudo.py")
    return df["path"].tolist()


def prepare(cfg: Any, split: SplitFiles, problems_csv: Path, workers: int | None = None, download: bool = False,
            rebuild_cache: bool = False) -> None:
    """Get data.root (the demo built; a Kaggle download only with `download` or data.download), check the
    CSVs, the sample submission and every image (data.extra's and data.pseudo's too; building the cache
    when `images.cache`: entries of changed sources, or all with `rebuild_cache`, rebuilt), write the folds
    (`split`, the experiment's folds.csv and folds.json) and, when images cannot be used, their list
    (`problems_csv`).

    Raises:
        UserError: data.root missing without a download asked, bad config, CSV or sample submission, or
            any unusable image (all of them listed in one message).
    """
    check_steps(cfg.images.preprocess)
    io.check_dir(split.csv.parent, "out_dir")  # before a download or hours of caching
    if cfg.images.cache:
        io.check_dir(cache_folder(cfg), "images.cache_dir")
    root = ensure_data(cfg, download)
    comp = load_competition(cfg, strict=False, check_sample=True)
    split.csv.parent.mkdir(parents=True, exist_ok=True)  # an unusable out_dir or fold setting fails now, not after
    if not comp.problems:  # hours of caching (with ids missing their image, their listing comes first)
        check_folds(cfg, comp.train, split)
    extra = load_extra(cfg, comp, stage=1) if not comp.problems else None  # every source, pretrain ones too
    paths = comp.train["path"].tolist() + comp.test["path"].tolist()
    paths += extra["path"].tolist() if extra is not None else []
    paths += pseudo_paths(cfg)  # trained on every epoch like the rest: decoded once, into the cache
    if cfg.mil.source != "none":  # rows of many images: each source decoded once (comp.data.mil_cache)
        from comp.data.mil_cache import process_rows

        problems = comp.problems + process_rows(cfg, comp.root, paths, workers, rebuild_cache)
    else:
        problems = comp.problems + process_images(cfg, comp.root, paths, workers, rebuild_cache)
    if problems:
        report = problems_csv
        try:
            io.write_csv(report, pd.DataFrame([vars(q) for q in problems]))
        except UserError:  # the list could not be written: the error line below still names every kind
            report = None
        total = len(paths) + sum(q.kind == "missing" for q in comp.problems)
        raise UserError(problems_message(problems, total, comp.root, report))
    folds = load_or_make_folds(cfg, comp.train, split, image_loader(cfg, comp) if cfg.mil.source == "none" else None,
                               comp.several_rows)
    counts = folds.groupby("fold").size().tolist()
    if comp.several_rows:
        n = comp.several_rows
        log(f"{cfg.data.train_csv}: {n['ids']} id(s) on several rows ({n['rows']} rows) read as one image each, "
            f"{n['disagreeing']} with different labels (data.label_rows={cfg.data.label_rows}; folds.json)")
    smoke = f" (smoke mode: data.limit={cfg.data.limit})" if cfg.data.limit else ""
    what = "images" if cfg.mil.source == "none" else f"rows ({cfg.mil.source} of many images, docs/mil.md)"
    log(f"{root}: {len(comp.train)} training {what}{smoke} {_target_summary(cfg, comp)}, "
        f"{len(comp.test)} test {what.split()[0]}; folds {counts} ({split.csv})")
    if extra is not None and len(extra):
        log(f"data.extra: {extra['source'].value_counts(sort=False).to_dict()} training images (every fold's "
            f"training part only; cached beside the competition's)")
    if cfg.images.cache and cfg.mil.source != "none":
        from comp.data.mil_cache import mil_folder

        log(f"cache: {mil_folder(cfg)} (an npy array per series, view or image's tiles, {cfg.image_size}px)")
    elif cfg.images.cache:
        log(f"cache: {cache_folder(cfg)} ({cfg.images.cache_format}, {cfg.image_size}px)")
