"""Copies of training images, found before they leak across the split.

Two checks, one reason (a copy of training image X on the other side of a split is predicted by a model
that trained on X, and the CV score is optimistic without a word):

1. Inside the competition's training set (`split_groups`, called by comp.data.folds when it makes the
   split): images with the same pixels are put in one group before the split, joined with the patient
   groups (connected components: transitive), with a warning naming a few pairs and the counts in
   folds.json. SIIM-ISIC 2020 repeated photographs under other image names and patient ids (Kaggle
   discussion 165526; the winners built leak-free folds by hand). "The same pixels" means the same array
   as the kit loads it (`load`: decoded, preprocessed and resized, read from the cache prepare built), so
   a copy with other bytes (another PNG encoder, a DICOM with other header values, as SIIM's copies had
   other patient ids) is found too, and hashing reads each cache entry once instead of decoding twice.
   Flat images (one colour: blank, black, white) are not joined: they are not copies of one photograph,
   and hundreds of blank slides joined into one group would unbalance the folds.
   Near-copies (resized, re-encoded) are for scripts/explain.py's perceptual-hash search
   (comp.report.errors_analysis.find_duplicates): its duplicates.csv, reviewed, is fed back with
   `data.duplicates`; a listed pair of training images is joined like an identical one, and a listed
   data.extra image paired with a training image is left out of every fold (comp.data.extra).

2. Between two sets of paths (`byte_duplicates`, `leave_out_copies`): for data that joins the training part
of every fold (comp.data.extra's external sources, comp.teacher.pseudo's pseudo-labelled images).

Why it matters: an external or test image that is a copy of competition training image X is trained on by
the fold that validates on X, with X's label (an external source's own label, or a pseudo-label from
models that trained on X): that fold's validation score is then optimistic. Copies are common in medical
downloads (APTOS 2019's test set repeats some of its training images; public fundus and chest X-ray
datasets are re-published inside one another). Ids and paths are checked elsewhere; this finds the same
bytes under another name. Re-encoded or resized copies are not found (their bytes differ).
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from comp.data import readers
from comp.data.image_base import ImageError, split_window
from comp.errors import UserError
from comp.io import sha256_file
from comp.log import log, progress

SHOWN_PAIRS = 5  # pairs named on the warning line; all of them are in folds.json
MIN_THREADED = 64  # fewer images than this are hashed in this thread
PAIR_COLUMNS = ("id_a", "id_b")  # what data.duplicates needs (explain.py's duplicates.csv: with set_a, set_b)


def byte_duplicates(candidates: Sequence[str], reference: Sequence[str]) -> dict[str, str]:
    """{candidate path: a reference path whose file has the same bytes}, for the candidates that have one.

    Files are first grouped by size (one `os.stat` each); only candidates whose size a reference file shares
    are hashed (sha256), with those reference files, so a set of distinct JPEGs costs a stat per file and
    a few hashes. A missing file is skipped (the loaders report it where it is read). A window of a recording
    or a volume's slice (`<file>#<offset>`) is its file's bytes at that offset.

    Args:
        candidates: image paths that would join the training part of every fold.
        reference: the competition's training image paths.
    """
    by_size: dict[int, list[str]] = defaultdict(list)
    for p in reference:
        try:
            by_size[_size(p)].append(str(p))
        except OSError:
            continue
    digests: dict[str, str] = {}  # path -> sha256, each file hashed at most once

    def digest(p: str) -> str:
        if p not in digests:
            digests[p] = _sha256(p)
        return digests[p]

    found = {}
    for c in map(str, candidates):
        try:
            same_size = by_size.get(_size(c))
        except OSError:
            continue
        if not same_size:
            continue
        d = digest(c)
        match = next((r for r in same_size if digest(r) == d), None)
        if match is not None:
            found[c] = match
    return found


def _size(path: str) -> int:
    """The byte size of an image: its file's (one stat; a window or slice `<file>#<offset>`, its file's), or
    for an image in an HDF5 store its stored bytes'.

    Raises:
        OSError: unreadable (a store's missing key or broken file too: the loaders report it where read)."""
    if readers.container_of(path) is None:
        return os.stat(split_window(path)[0]).st_size
    try:
        return len(readers.image_bytes(path))
    except ImageError as e:
        raise OSError(str(e)) from None


def _sha256(path: str) -> str:
    """The sha256 of an image's bytes (`_size`'s bytes); for a window or slice `<file>#<offset>` its file's,
    with the offset after it: the same window of a byte-identical file is a copy, another window is not."""
    if readers.container_of(path) is None:
        file, offset = split_window(path)
        return sha256_file(file) + ("" if offset is None else f"#{offset:g}")
    return hashlib.sha256(readers.image_bytes(path)).hexdigest()


def leave_out_copies(table: pd.DataFrame, train_paths: list[str], what: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """`table` (rows with a `path`) without its byte-identical copies of training images (`byte_duplicates`),
    and {copy: original}; a warning line names `what` (e.g. "data.extra 'dr'"), how many and one pair."""
    copies = byte_duplicates(table["path"].astype(str).tolist(), train_paths)
    if not copies:
        return table, copies
    first = next(iter(copies.items()))
    log(f"warning: {what}: {len(copies)} image(s) are byte-identical copies of training images (e.g. {first[0]} = "
        f"{first[1]}) and are left out: each would reach the validation of the fold holding its original")
    return table[~table["path"].astype(str).isin(copies)].reset_index(drop=True), copies


# --- copies inside the training set, joined before the split ----------------------------------------------

def pixel_digest(img: np.ndarray) -> str | None:
    """A digest of an image array's shape and pixels (blake2b, 128 bits), or None for a flat image (one
    value everywhere: blank, black, white, one grey), which is not taken for a copy of anything."""
    a = np.ascontiguousarray(img)
    if a.size == 0 or a.min() == a.max():
        return None
    h = hashlib.blake2b(digest_size=16)
    h.update(repr((a.shape, a.dtype.str)).encode())
    h.update(a.data)
    return h.hexdigest()


def identical_sets(ids: Sequence[str], paths: Sequence[str], load: Callable[[str], np.ndarray],
                   workers: int | None = None) -> list[list[str]]:
    """Sets (2 or more ids, in the order given) of images whose `load(path)` arrays are equal, flat images
    excepted (`pixel_digest`), and images that cannot be read (an ImageError: left to the loaders that read
    them for training, as `byte_duplicates` leaves a missing file). Each image is loaded once, in `workers`
    threads (default: the usable cores; the kit's loader reads a cache entry or decodes with OpenCV/NumPy,
    which release the GIL). Ctrl-C cancels what is queued: only the images being read finish."""
    from comp.data.image_base import ImageError
    from comp.system import usable_cpus

    def digest(p: str) -> str | None:
        try:
            return pixel_digest(load(p))
        except ImageError:  # missing or broken: reported where it is read for training (prepare lists all)
            return None

    paths = [str(p) for p in paths]
    n = usable_cpus() if workers is None else workers
    bar = progress(len(paths), "hash images")
    digests: list[str | None] = []
    try:
        if n <= 1 or len(paths) < MIN_THREADED:
            for p in paths:
                digests.append(digest(p))
                bar.update(1)
        else:
            pool = ThreadPoolExecutor(n, thread_name_prefix="hash")
            try:
                for d in pool.map(digest, paths):
                    digests.append(d)
                    bar.update(1)
            except BaseException:  # Ctrl-C or an unreadable image: drop the queue, do not wait for it
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
    finally:
        bar.close()
    by_digest: dict[str, list[str]] = defaultdict(list)
    for i, d in zip(ids, digests, strict=True):
        if d is not None:
            by_digest[d].append(str(i))
    return [v for v in by_digest.values() if len(v) > 1]


def read_pairs(path_value: str) -> pd.DataFrame:
    """The pairs of `data.duplicates`: id_a, set_a, id_b, set_b (set `train` where the CSV has no set
    column). The file is scripts/explain.py's duplicates.csv (rows deleted after review), or any CSV with
    columns id_a and id_b.

    Raises:
        UserError: the file is missing, unreadable or lacks id_a / id_b (naming data.duplicates)."""
    from comp.config import resolve_path
    from comp.data.tables import read_csv

    path = resolve_path(path_value)
    if not path.is_file():
        raise UserError(f"data.duplicates {str(path)!r} does not exist (a CSV of image pairs, e.g. "
                        f"scripts/explain.py's duplicates.csv)")
    try:
        df = read_csv(path, list(PAIR_COLUMNS))
    except UserError as e:
        raise UserError(f"data.duplicates: {e}") from None
    out = pd.DataFrame({"id_a": df["id_a"].str.strip(), "id_b": df["id_b"].str.strip()})
    for side in ("a", "b"):
        col = f"set_{side}"
        out[col] = df[col].str.strip().replace("", "train") if col in df.columns else "train"
    return out[["id_a", "set_a", "id_b", "set_b"]]


def listed_extra(cfg: Any, source: str, train_ids: set[str]) -> set[str]:
    """Ids of data.extra source `source` that `data.duplicates` pairs with a training image (set
    `extra:<source>`, as scripts/explain.py writes it): copies to leave out of every fold."""
    if not cfg.data.duplicates:
        return set()
    pairs = read_pairs(cfg.data.duplicates)
    out: set[str] = set()
    for a, b in (("a", "b"), ("b", "a")):
        hit = (pairs[f"set_{a}"] == f"extra:{source}") & (pairs[f"set_{b}"] == "train") & pairs[f"id_{b}"].isin(
            train_ids)
        out |= set(pairs.loc[hit, f"id_{a}"])
    return out


def join_groups(ids: pd.Series, groups: pd.Series, pairs: Sequence[tuple[str, str]]) -> pd.Series:
    """Each image's group after joining the groups of every pair of ids: the connected components of the
    graph whose nodes are the groups and whose edges are the pairs (scipy.sparse.csgraph, so a chain
    a=b, b=c puts a, b and c in one group). A joined group is named by its first member group (in the
    order of `groups`), so groups that join nothing keep their names. Ids not in `ids` are ignored."""
    codes, names = pd.factorize(groups.astype(str))
    where = dict(zip(ids.astype(str), codes, strict=True))
    edges = [(where[a], where[b]) for a, b in pairs if a in where and b in where]
    if not edges:
        return groups.astype(str)
    u, v = np.array(edges).T
    graph = coo_matrix((np.ones(len(u)), (u, v)), shape=(len(names), len(names)))
    _, comp = connected_components(graph, directed=False)
    first = pd.Series(np.arange(len(names))).groupby(comp).transform("min").to_numpy()  # component -> 1st group
    return pd.Series(names[first[codes]], index=groups.index, dtype=object).astype(str)


def split_groups(cfg: Any, train: pd.DataFrame, load: Callable[[str], np.ndarray] | None
                 ) -> tuple[pd.Series, dict[str, Any]]:
    """The groups the split keeps whole: `train["group"]` (patients, or each image its own) joined over
    identical images (`identical_sets` with `load`; skipped when `load` is None) and over the training
    pairs of `data.duplicates`; and the record for folds.json (`copies`: counts and the sets joined).
    A warning names the first pairs when anything is joined.

    Raises:
        UserError: data.duplicates unreadable (`read_pairs`)."""
    ids = train["id"].astype(str)
    sets = identical_sets(ids.tolist(), train["path"].astype(str).tolist(), load) if load is not None else []
    pairs = [(s[0], other) for s in sets for other in s[1:]]
    record: dict[str, Any] = {"identical_images": sum(len(s) for s in sets), "identical": sets}
    listed: list[tuple[str, str]] = []
    if cfg.data.duplicates:
        table = read_pairs(cfg.data.duplicates)
        both = table[(table["set_a"] == "train") & (table["set_b"] == "train")]
        known = set(ids)
        ok = both["id_a"].isin(known) & both["id_b"].isin(known)
        listed = list(zip(both.loc[ok, "id_a"], both.loc[ok, "id_b"], strict=True))
        if (~ok).any():
            log(f"data.duplicates: {int((~ok).sum())} pair(s) of training images name an id not among them (e.g. "
                f"{both.loc[~ok, 'id_a'].iloc[0]!r} = {both.loc[~ok, 'id_b'].iloc[0]!r}: data.exclude, data.limit, "
                f"or another dataset's list); skipped")
        record.update(listed_pairs=len(listed), listed_other=int(len(table) - len(both)))
    joined = join_groups(ids, train["group"], pairs + listed)
    record["groups_joined"] = int(train["group"].astype(str).nunique() - joined.nunique())
    if pairs or listed:
        every = pairs + listed
        shown = ", ".join(f"{a!r} = {b!r}" for a, b in every[:SHOWN_PAIRS])
        more = f" and {len(every) - SHOWN_PAIRS} more" if len(every) > SHOWN_PAIRS else ""
        what = [f"{len(pairs)} pair(s) of identical training images (the same pixels as loaded)"] if pairs else []
        what += [f"{len(listed)} pair(s) listed in data.duplicates"] if listed else []
        log(f"warning: folds: {' and '.join(what)}: {shown}{more}; each copy is kept in its original's fold "
            f"({record['groups_joined']} group(s) joined; all listed in folds.json 'copies')")
    return joined, record
