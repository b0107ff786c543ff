"""Downloads where one competition row is many images, for the config starter (comp.data.inspect, issue 27):
the `mil:` keys of the MIL design (docs/config.md, section mil) and the row's id, labels, task and metric.

- series / study: a CSV column with one row per value names folders (zero-padded where the folders are:
  brain tumour's BraTS21ID 2 -> train/00002/) that hold a series' DICOM files (RSNA 2022:
  train_images/<StudyInstanceUID>/<n>.dcm) or series sub-folders (brain tumour's FLAIR, T1w, T1wCE, T2w;
  RSNA 2023 / 2024: <patient_id or study_id>/<series_id>/). The labels CSV is the one the sample names most
  columns of (its value columns, or in a long sample `<id>_<column>` row ids): train.csv, not RSNA 2022's
  train_bounding_boxes.csv nor RSNA 2024's train_label_coordinates.csv. Series named by UIDs take their
  names from a CSV of series descriptions (RSNA 2024's train_series_descriptions.csv), else every series;
- views (`refine`): the csv layout's images sit in one folder per patient (RSNA mammography's
  train_images/<patient_id>/<image_id>.dcm) and the sample's id is a test CSV's columns joined by "_"
  (prediction_id = patient_id _ laterality): the rows sharing those columns make one MIL row;
- tiles (`refine`): the csv layout's images have thumbnails (UBC-OCEAN's train_thumbnails/<id>_thumbnail.png)
  or the CSV gives widths of slides (10,000+ px): each image is cut into tiles.
The metric is the competition's where the sample's header names one the kit has (KNOWN_SAMPLES).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from comp.data.guess import TEST_RX, Guess, _metric, _read, _rel

# The sample submission's header (or its value columns) -> the competition, its metric in the kit, and what
# of its score the kit's metric leaves out. The weighted scores are in comp.study_metrics.
KNOWN_SAMPLES = {
    ("BraTS21ID", "MGMT_value"): ("RSNA-MICCAI 2021 brain tumour", "auc", "AUC of MGMT_value"),
    ("row_id", "fractured"): ("RSNA 2022 cervical spine", "rsna2022_cervical", "the hosts' weighted multi-label "
                              "log loss (comp.study_metrics.cervical_spine_score)"),
    ("row_id", "normal_mild", "moderate", "severe"): (
        "RSNA 2024 lumbar spine", "rsna2024_lumbar", "a log loss weighted 1/2/4 by severity with an "
        "any_severe_spinal term (comp.study_metrics.lumbar_spine_score)"),
    ("prediction_id", "cancer"): ("RSNA Screening Mammography 2023", "pf1", "probabilistic F1 per breast"),
    ("bowel_healthy", "bowel_injury"): ("RSNA 2023 abdominal trauma", "rsna2023_trauma", "sample-weighted log "
                                        "losses of five targets and any_injury (comp.study_metrics)"),
}
SHIPPED = {"RSNA-MICCAI 2021 brain tumour": "rsna2021_brain_tumor", "RSNA 2022 cervical spine":
           "rsna2022_cervical_spine", "RSNA 2024 lumbar spine": "rsna2024_lumbar_spine",
           "RSNA Screening Mammography 2023": "rsna2023_mammography", "RSNA 2023 abdominal trauma":
           "rsna2023_abdominal_trauma", "UBC-OCEAN 2023": "ubc_ocean"}  # the recipes in configs/
SLIDE_PX = 10_000  # a CSV width or height above this: whole-slide images (UBC-OCEAN's reach 100,000 px)
MULTIHEAD = "task: multihead (one softmax head per target, each with its own classes; docs/tasks.md)"


def known_metric(sample: pd.DataFrame | None, df: pd.DataFrame, guess: Guess) -> None:
    """`metric` from the sample's header when it is one of KNOWN_SAMPLES' (or UBC-OCEAN's: image_id,label with
    is_tma in the training CSV: balanced accuracy), with the competition named in the reason."""
    if sample is None:
        return
    cols = tuple(sample.columns)
    found = KNOWN_SAMPLES.get(cols) or KNOWN_SAMPLES.get(cols[1:3])
    if found is None and cols == ("image_id", "label") and "is_tma" in df.columns:
        found = ("UBC-OCEAN 2023", "balanced_accuracy", "balanced accuracy over the subtypes")
    if found:
        name, metric, what = found
        if metric.startswith("rsna") and guess.values.get("task") != ("multilabel" if "2022" in metric else
                                                                       "multihead"):
            return  # the competition's score needs the task it was written for
        guess.set("metric", metric, f"the sample's header is {name}'s, scored by {what} (check the Evaluation page)")
        guess.notes.append(f"a recipe for {name} ships as configs/{SHIPPED[name]}.yaml (docs/configs.md): its model, "
                           f"windows, 2.5D slices and pooling; the values below are the general defaults")


def _slices(found: dict[str, Path], images: dict[Path, list[Path]], children: dict[Path, list[Path]],
            level: str) -> bool:
    """Whether the folders hold slices: file names (1.dcm, Image-1.dcm) repeated across the rows' folders, not
    names of their own (a class folder's images; the bag test of download_kinds._refuse_bags)."""
    owners: dict[str, set[Path]] = {}
    for d in found.values():
        for folder in ([d] if level == "series" else children.get(d, [])):
            for p in images.get(folder, []):
                owners.setdefault(p.name, set()).add(d)
    return bool(owners) and sum(len(o) > 1 for o in owners.values()) > len(owners) // 2


def _digits(name: str) -> int | None:
    return int(name) if name.isdigit() else None


def _match(values: list[str], names: dict[str, list[Path]]) -> tuple[dict[str, Path], int]:
    """Folders of `names` each value names, exactly or zero-padded (2 -> 00002), and the padded width (0: none)."""
    padded = {_digits(n): n for n in names if n.isdigit() and len(n) > 1 and n.startswith("0")}
    found, width = {}, 0
    for v in values:
        if v in names:
            found[v] = names[v][0]
        elif v.isdigit() and int(v) in padded and padded[int(v)] != v:
            found[v], width = names[padded[int(v)]][0], len(padded[int(v)])
    return found, width


def _named_by_sample(df: pd.DataFrame, sample: pd.DataFrame | None) -> tuple[list[str], bool]:
    """The columns of `df` the sample names: its value columns (wide), else the `<label>` of row ids
    `<id>_<label>` (long, RSNA 2022 / 2024), in `df`'s order; and whether the sample is long."""
    if sample is None:
        return [], False
    wide = [c for c in sample.columns[1:] if c in df.columns]
    if wide:
        return wide, False
    ids = [str(v) for v in sample.iloc[:2000, 0]]
    long = [c for c in df.columns if sum(i.endswith(f"_{c}") for i in ids) >= max(1, len(ids) // (2 * len(df.columns)))]
    return long, bool(long)


def series_layout(root: Path, csvs: list[Path], sample: pd.DataFrame | None, images: dict[Path, list[Path]],
                  guess: Guess) -> bool:
    """Fill the keys of a series or study layout (the module docstring); False when no CSV column with one row
    per value names folders of series or of series folders."""
    levels: dict[str, dict[str, list[Path]]] = {"series": {}, "study": {}}  # folder name -> the folders
    children: dict[Path, list[Path]] = {}  # a study folder -> its series folders
    for d in images:
        if d.is_dir() and not TEST_RX.search(_rel(d, root)):
            levels["series"].setdefault(d.name, []).append(d)
            if d.parent != root:
                levels["study"].setdefault(d.parent.name, []).append(d.parent)
                children.setdefault(d.parent, []).append(d)
    best = None
    for path in csvs:
        df = _read(path)
        named, long = _named_by_sample(df, sample)
        for col in df.columns:
            values = list(dict.fromkeys(str(v).strip() for v in df[col].head(2000)))
            if len(values) < 2 or df[col].duplicated().any():
                continue
            for level, names in levels.items():
                found, width = _match(values, names)
                if len(found) >= max(2, len(values) // 2) and _slices(found, images, children, level):
                    score = (len(named), col == (sample.columns[0] if sample is not None else ""),
                             "train" in path.name.lower(), level == "study")
                    if best is None or score > best[0]:
                        best = (score, path, df, col, level, found, width, named, long)
    if best is None:
        return False
    _, path, df, col, level, found, width, named, long = best
    id_dirs = list(found.values())
    parents = sorted({d.parent for d in id_dirs})
    guess.set("data.layout", "csv", f"{path.name}'s {col!r} names a folder of images per row (e.g. "
              f"{_rel(id_dirs[0], root)}/): one row, many images (mil.source)")
    guess.set("data.train_csv", _rel(path, root), "the CSV with one row per folder" + (
        f" and the {len(named)} label column{'s' if len(named) > 1 else ''} the sample names" if named else ""))
    guess.set("data.id_column", col, f"its values name the folders under {', '.join(_rel(p, root) for p in parents)}/")
    guess.set("data.train_images", [_rel(p, root) for p in parents], "the folders holding one folder per row")
    tests = sorted({(d.parent if level == "series" else d.parent.parent) for d in images
                    if d.is_dir() and TEST_RX.search(_rel(d, root))})
    tests = [t for t in tests if root in t.parents and TEST_RX.search(_rel(t, root))]  # not the root or above
    guess.set("data.test_images", [_rel(t, root) for t in tests] or ["test"],
              "the test folders holding one folder per row" if tests else "none found: point it at the test images")
    exts = Counter(p.suffix for d in images if d.is_dir() for p in images[d] if not TEST_RX.search(_rel(d, root)))
    guess.set("data.image_ext", exts.most_common(1)[0][0], f"the extension of the training images {dict(exts)}")
    guess.set("mil.source", level, "each row's folder holds the files of one series" if level == "series" else
              "each row's folder holds series sub-folders (a study)")
    guess.set("mil.folder", f"{{{col}:0{width}d}}" if width else "{id}",
              f"the folders are the ids zero-padded to {width} digits ({_example(found)})" if width else
              "each folder is named by the row's id")
    if level == "study":
        _series_names(root, csvs, id_dirs, children, guess)
    _labels(path.name, df, col, named, long, sample, guess)
    return True


def _example(found: dict[str, Path]) -> str:
    v, d = next(iter(found.items()))
    return f"{v} -> {d.name}"


def _series_names(root: Path, csvs: list[Path], id_dirs: list[Path], children: dict[Path, list[Path]],
                  guess: Guess) -> None:
    """mil.series: sub-folder names the studies share (FLAIR, T1w...), else the descriptions a CSV gives the
    series folders (RSNA 2024), else every series."""
    subs = [{d.name for d in children.get(s, [])} for s in id_dirs]
    counts = Counter(n for s in subs for n in s)
    shared = sorted(n for n, k in counts.items() if k >= max(2, len(subs) // 2))
    if shared:
        guess.set("mil.series", shared, f"the series sub-folders the studies share, read in this order "
                  f"({sum(len(s) == len(shared) for s in subs)} of {len(subs)} studies have all of them); not classes")
        return
    series_ids = set(counts)
    for path in csvs:
        df = _read(path)
        head = df.head(2000)
        named = [c for c in df.columns if sum(str(v) in series_ids for v in head[c]) >= max(1, len(head) // 2)]
        desc = [c for c in df.columns if "description" in c.lower()]
        if named and desc and df[desc[0]].nunique() <= 20:
            series = list(dict.fromkeys(df[desc[0]].astype(str)))
            guess.set("mil.series", series, f"{path.name} describes each series folder ({named[0]!r}) by "
                      f"{desc[0]!r}: these are matched to the files' SeriesDescription")
            return
    guess.set("mil.series", [], "the series folders are named by UIDs, none shared across studies: every series "
              "of a row is read (a patient scanned twice gives both)")


def _labels(csv: str, df: pd.DataFrame, col: str, named: list[str], long: bool, sample: pd.DataFrame | None,
            guess: Guess) -> None:
    """The label keys, task, metric and output of a series or study layout's CSV."""
    if not named:
        rest = [c for c in df.columns if c != col]
        named = [min(rest, key=lambda c: df[c].nunique())] if rest else []
    if not named:
        return
    fractional = sample is not None and any(
        "." in str(v) for c in sample.columns[1:] for v in sample[c].head(50))
    binary = all(set(df[c].astype(str)) <= {"0", "1"} for c in named)
    if len(named) == 1:
        guess.set("data.label_column", named[0], "the sample submission's value column")
        _metric(df[named[0]].astype(str).tolist(), guess)
        if binary and df[named[0]].nunique() == 2:
            guess.set("task", "binary", "two classes, 0 and 1")
            if fractional:
                guess.set("metric", "auc", "the sample holds probabilities (e.g. 0.5): ranked by AUC")
    elif binary:
        guess.set("data.label_columns", named, f"the {len(named)} 0/1 columns of {csv} the sample names")
        guess.set("task", "multilabel", "0/1 columns: one sigmoid each")
        guess.set("metric", "log_loss", "the sample holds a probability per label")
        _one_hot_groups(df, named, guess)
    else:
        classes = [_slug(c) for c in _classes(df, named, sample)]
        guess.set("data.heads", {c: classes for c in named}, f"{len(named)} label columns, each holding one of "
                  f"{classes} (spelt as the sample's columns): a head each")
        guess.set("task", "multihead", MULTIHEAD)
        guess.set("metric", "log_loss", "the sample holds a probability per class (the mean of the heads' log losses)")
    if long:
        guess.set("predict.shape", "long", f"the sample's rows are <id>_<label> ({sample.iloc[0, 0]})")
    if fractional or long or len(named) > 1:
        guess.set("predict.output", "prob", "the sample holds probabilities")
    known_metric(sample, df, guess)


def _slug(v: str) -> str:
    """A class as the sample's columns spell it: Normal/Mild -> normal_mild."""
    return "".join(ch if ch.isalnum() else "_" for ch in v.lower())


def _classes(df: pd.DataFrame, named: list[str], sample: pd.DataFrame | None) -> list[str]:
    """The values of the label columns (blanks left out), ordered as the sample's value columns name them
    (Normal/Mild -> normal_mild), else sorted."""
    values = sorted({str(v) for c in named for v in df[c] if str(v).strip()})
    order = [str(c) for c in sample.columns[1:]] if sample is not None else []

    def key(v: str) -> tuple:
        slug = _slug(v)
        return (order.index(slug) if slug in order else len(order), v)

    return sorted(values, key=key)


def _one_hot_groups(df: pd.DataFrame, named: list[str], guess: Guess) -> None:
    """A NOTE when the label columns are one-hot groups by prefix (RSNA 2023: bowel_healthy / bowel_injury,
    kidney_healthy / _low / _high): targets with their own classes, for the multi-head task."""
    groups: dict[str, list[str]] = {}
    for c in named:
        groups.setdefault(c.rpartition("_")[0], []).append(c)
    if len(groups) < 2 or any(len(g) < 2 for g in groups.values()):
        return
    if all((df[g].astype(int).sum(axis=1) == 1).all() for g in groups.values()):
        shown = ", ".join(f"{p} ({len(g)})" for p, g in groups.items())
        guess.unset("data.label_columns", "data.label_column")
        guess.set("data.heads", {p: [c[len(p) + 1:] for c in g] for p, g in groups.items()},
                  f"the {len(named)} label columns are {len(groups)} targets, one-hot each: {shown}")
        guess.set("task", "multihead", MULTIHEAD)


def refine(root: Path, sample: pd.DataFrame | None, csvs: list[Path], images: dict[Path, list[Path]],
           guess: Guess) -> None:
    """After the csv layout: views (images per patient folder, the sample's id joined from a test CSV's
    columns) or tiles (thumbnails, slide widths) as `mil.source`; the competition's metric by its sample."""
    train_csv = root / guess.values["data.train_csv"]
    df = _read(train_csv)
    if sample is not None and sample.columns[0] not in df.columns:
        sid = sample.columns[0]
        for path in csvs:
            test = _read(path)
            if sid not in test.columns or not TEST_RX.search(path.name):
                continue
            parts = _join_of(test, sid, [c for c in df.columns if c in test.columns])
            if parts:
                guess.set("mil.source", "views", f"the sample's {sid!r} is {' _ '.join(parts)} in {path.name}: "
                          f"the images sharing them make one row")
                guess.set("mil.join", parts, f"joined by '_' they make {sid} (e.g. {test[sid].iloc[0]})")
                guess.set("data.submission_id_column", sid, "the sample's id column, one row per MIL row")
                guess.set("data.submission_id_parts", parts, f"{train_csv.name} lacks {sid}: made from these")
                break
    known_metric(sample, df, guess)
    if guess.values.get("metric") == "pf1":
        guess.set("task", "binary", "pf1 scores P(positive) of two classes")
    widths = [c for c in ("image_width", "image_height", "width", "height") if c in df.columns]
    big = [c for c in widths if pd.to_numeric(df[c], errors="coerce").max() > SLIDE_PX]
    ids = set(df[guess.values["data.id_column"]].astype(str))
    thumbs = [d for d in images if "thumbnail" in d.name.lower()
              and sum(p.stem.lower().removesuffix("_thumbnail") in ids for p in images[d]) >= 1]
    if big or thumbs:
        why = (f"{train_csv.name}'s {big[0]} reaches {pd.to_numeric(df[big[0]]).max():.0f} px" if big else
               f"{_rel(thumbs[0], root)}/ holds thumbnails of the training images")
        guess.set("mil.source", "tiles", f"{why}: whole-slide images, each cut into tiles")
        guess.set("mil.pool", "attention", "the tiles' features pooled by gated attention (Ilse et al. 2018)")


def _join_of(test: pd.DataFrame, sid: str, columns: list[str]) -> list[str]:
    """The fewest of `columns` (two at most, in the CSV's order) whose values joined by '_' give `sid`."""
    want = test[sid].astype(str)
    for a in columns:
        if (test[a].astype(str) == want).all():
            return [a]
    for i, a in enumerate(columns):
        for b in columns[i + 1:]:
            if (test[a].astype(str) + "_" + test[b].astype(str) == want).all():
                return [a, b]
    return []
