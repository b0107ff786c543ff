"""Error analysis on the out-of-fold predictions of every fold, and the data's own problems.

Tables (pandas DataFrames, written as CSV by `write_tables`):
- `top_losses`: every OOF image by its cross-entropy, worst first;
- `confused_pairs`: (truth, prediction) pairs of the OOF confusion matrix off its diagonal, most frequent first;
- `group_metrics`: per patient (the `group` column of folds.csv): images, errors, accuracy, mean loss;
- `label_issues`: likely label errors by confident learning (Northcutt, Jiang & Chuang, "Confident Learning:
  Estimating Uncertainty in Dataset Labels", JAIR 2021) with cleanlab's `find_label_issues`, the authors'
  maintained implementation. It needs out-of-sample probabilities, which the OOF are by construction;
- `duplicates`: exact and near-duplicate images within and across train and test, by perceptual hash
  (imagehash's pHash, 64 bits), with both labels side by side: APTOS 2019 had near-copies graded differently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from comp.errors import UserError
from comp.io import write_csv
from comp.log import progress
from comp.train.oof import oof_probs

EPS = 1e-7  # probability floor of the log loss (scikit-learn's log_loss clips likewise)


def _named(labels: np.ndarray, classes: list[str]) -> list[str]:
    return [classes[int(i)] for i in labels]


def top_losses(oof: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Every OOF row with its loss -log p(true class), worst first.

    Args:
        oof: id, label (int 0..C-1), prob_<class> x C, and optionally fold, group.
    Returns:
        id, fold, group (when present), label, pred (class names), p_label, p_pred, loss; sorted by loss,
        largest first (ties keep the OOF order).
    """
    p, y = oof_probs(oof).astype(np.float64), oof["label"].to_numpy(dtype=int)
    pred = p.argmax(1)
    p_label = p[np.arange(len(y)), y]
    out = oof[[c for c in ("id", "fold", "group") if c in oof.columns]].copy()
    out["label"], out["pred"] = _named(y, classes), _named(pred, classes)
    out["p_label"], out["p_pred"] = p_label, p.max(1)
    out["loss"] = -np.log(np.clip(p_label, EPS, 1.0))
    return out.sort_values("loss", ascending=False, kind="stable").reset_index(drop=True)


def confused_pairs(oof: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """The off-diagonal cells of the OOF confusion matrix (argmax predictions) that hold any image.

    Returns:
        label, pred, count, share (count / images of that label); most frequent first, then by share.
    """
    y, pred = oof["label"].to_numpy(dtype=int), oof_probs(oof).astype(np.float64).argmax(1)
    c = len(classes)
    counts = np.bincount(y * c + pred, minlength=c * c).reshape(c, c)
    rows = [{"label": classes[t], "pred": classes[q], "count": int(counts[t, q]),
             "share": counts[t, q] / counts[t].sum()}
            for t in range(c) for q in range(c) if t != q and counts[t, q] > 0]
    table = pd.DataFrame(rows, columns=["label", "pred", "count", "share"])
    return table.sort_values(["count", "share"], ascending=False, kind="stable").reset_index(drop=True)


def group_metrics(oof: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Per group (patient): images, errors, accuracy and mean log loss, worst accuracy first.

    Args:
        oof: as for `top_losses`, with a `group` column (folds.csv's).
    Returns:
        group, n, errors, accuracy, log_loss, labels (the classes present, `|`-joined).
    """
    if "group" not in oof.columns:
        raise UserError("the OOF predictions have no group column (folds.csv's); retrain with this kit")
    losses = top_losses(oof, classes)
    losses["wrong"] = losses["label"] != losses["pred"]
    g = losses.groupby("group", sort=False)
    table = pd.DataFrame({"n": g.size(), "errors": g["wrong"].sum().astype(int), "log_loss": g["loss"].mean(),
                          "labels": g["label"].agg(lambda s: "|".join(sorted(set(s))))})
    table["accuracy"] = 1 - table["errors"] / table["n"]
    table = table.reset_index()[["group", "n", "errors", "accuracy", "log_loss", "labels"]]
    return table.sort_values(["accuracy", "log_loss"], ascending=[True, False], kind="stable").reset_index(drop=True)


def label_issues(oof: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Likely label errors: cleanlab's `find_label_issues` (confident learning, prune_by_noise_rate) on
    the OOF probabilities, most suspicious first (lowest self-confidence p(given label)).

    Returns:
        id, fold (when present), label (given), suggested (the argmax class), p_label, p_suggested.
    """
    from cleanlab.filter import find_label_issues

    p, y = oof_probs(oof).astype(np.float64), oof["label"].to_numpy(dtype=int)
    cols = ["id", "fold", "label", "suggested", "p_label", "p_suggested"]
    if len(np.unique(y)) < 2 or len(y) < len(classes):
        return pd.DataFrame(columns=cols)
    p = p / p.sum(1, keepdims=True)  # cleanlab checks each row sums to 1; float32 CSV round-trips drift
    idx = find_label_issues(y, p, return_indices_ranked_by="self_confidence", n_jobs=1)
    sub = oof.iloc[idx]
    out = pd.DataFrame({"id": sub["id"].to_numpy()})
    if "fold" in oof.columns:
        out["fold"] = sub["fold"].to_numpy()
    out["label"], out["suggested"] = _named(y[idx], classes), _named(p[idx].argmax(1), classes)
    out["p_label"], out["p_suggested"] = p[idx, y[idx]], p[idx].max(1)
    return out


def phash_bits(images: Iterable[np.ndarray]) -> np.ndarray:
    """(N,) uint64 pHash of each (H, W, 3) uint8 image (imagehash.phash: 8x8 DCT signs, 64 bits)."""
    import imagehash
    from PIL import Image

    images = list(images)
    out = []
    with progress(len(images), "hash images") as bar:  # drawn on a terminal only (comp.log)
        for img in images:
            out.append(np.packbits(imagehash.phash(Image.fromarray(img)).hash.flatten()).view(">u8")[0])
            bar.update(1)
    return np.array(out, dtype=np.uint64)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits of each uint64."""
    return np.unpackbits(x.astype(">u8").view(np.uint8).reshape(-1, 8), axis=1).sum(1)


def near_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """(i, j, Hamming distance) for i < j with distance <= max_distance, without comparing all N^2 pairs:
    the 64 bits are cut into max_distance + 1 bands, and by the pigeonhole principle two hashes within
    max_distance bits agree exactly on at least one band, so only hashes sharing a band are compared."""
    n_bands = max_distance + 1
    if n_bands > 64:
        raise UserError(f"max_distance={max_distance}: at most 63 of the 64 hash bits")
    edges = np.linspace(0, 64, n_bands + 1).astype(int)
    pairs: dict[tuple[int, int], int] = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        band = (hashes >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
        order = np.argsort(band, kind="stable")
        starts = np.flatnonzero(np.r_[True, band[order][1:] != band[order][:-1], True])
        for a, b in zip(starts[:-1], starts[1:], strict=True):
            members = np.sort(order[a:b])
            if len(members) < 2:
                continue
            i, j = np.triu_indices(len(members), 1)
            d = _popcount(hashes[members[i]] ^ hashes[members[j]])
            for ii, jj, dd in zip(members[i][d <= max_distance], members[j][d <= max_distance],
                                  d[d <= max_distance], strict=True):
                pairs[(int(ii), int(jj))] = int(dd)
    return sorted((i, j, d) for (i, j), d in pairs.items())


def find_duplicates(items: pd.DataFrame, load: Callable[[str], np.ndarray], classes: list[str],
                    max_distance: int = 4) -> pd.DataFrame:
    """Exact and near-duplicate images among `items` (train and test together).

    Args:
        items: id, path, set (train | test), label (int, or -1 when unknown: an unlabelled test image).
        load: `load(path) -> (H, W, 3) uint8` (the kit's image loader: the cache when there is one).
        max_distance: largest pHash Hamming distance (of 64 bits) called a near duplicate. A resized and
            JPEG-recompressed copy of a photograph lands at 0-2 (tests/test_explain.py), unrelated images
            near 32.
    Returns:
        id_a, set_a, label_a, id_b, set_b, label_b, distance, kind (identical: the same pixels as loaded;
        near), conflict (both labelled and the labels differ); conflicts first, then by distance.
    """
    cols = ["id_a", "set_a", "label_a", "id_b", "set_b", "label_b", "distance", "kind", "conflict"]
    paths, labels = items["path"].tolist(), items["label"].to_numpy(dtype=int)
    hashes = phash_bits(load(p) for p in paths)  # a generator: one image in memory at a time
    rows = []
    for i, j, d in near_pairs(hashes, max_distance):
        same = d == 0 and np.array_equal(load(paths[i]), load(paths[j]))
        la, lb = labels[i], labels[j]
        rows.append({"id_a": items["id"].iloc[i], "set_a": items["set"].iloc[i],
                     "label_a": classes[la] if la >= 0 else "", "id_b": items["id"].iloc[j],
                     "set_b": items["set"].iloc[j], "label_b": classes[lb] if lb >= 0 else "",
                     "distance": d, "kind": "identical" if same else "near",
                     "conflict": bool(la >= 0 and lb >= 0 and la != lb)})
    table = pd.DataFrame(rows, columns=cols)
    return table.sort_values(["conflict", "distance"], ascending=[False, True], kind="stable").reset_index(drop=True)


def duplicate_items(train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """The `items` table of `find_duplicates` from a competition's train and test tables."""
    tr = train[["id", "path", "label"]].assign(set="train")
    te = test.assign(label=test["label"] if "label" in test.columns else -1)[["id", "path", "label"]]
    return pd.concat([tr, te.assign(set="test")], ignore_index=True)


def analyse(oof: pd.DataFrame, classes: list[str], items: pd.DataFrame | None = None,
            load: Callable[[str], np.ndarray] | None = None) -> dict[str, pd.DataFrame]:
    """Every table of this module, by name; `duplicates` only when `items` and `load` are given."""
    tables = {"top_losses": top_losses(oof, classes), "confused_pairs": confused_pairs(oof, classes),
              "group_metrics": group_metrics(oof, classes), "label_issues": label_issues(oof, classes)}
    if items is not None and load is not None:
        tables["duplicates"] = find_duplicates(items, load, classes)
    return tables


def write_tables(tables: dict[str, pd.DataFrame], out: Path) -> list[Path]:
    """Each table as `<out>/<name>.csv`, atomically; returns the paths."""
    return [write_csv(out / f"{name}.csv", df) for name, df in tables.items()]
