"""Byte-identical image files between two sets of paths: a leak check for data that joins the training part
of every fold (comp.data.extra's external sources, comp.teacher.pseudo's pseudo-labelled images).

Why it matters: an external or test image that is a copy of competition training image X is trained on by
the fold that validates on X, with X's label (an external source's own label, or a pseudo-label from
models that trained on X): that fold's validation score is then optimistic. Copies are common in medical
downloads (APTOS 2019's test set repeats some of its training images; public fundus and chest X-ray
datasets are re-published inside one another). Ids and paths are checked elsewhere; this finds the same
bytes under another name. Re-encoded or resized copies are not found (their bytes differ).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence

import pandas as pd

from comp.io import sha256_file
from comp.log import log


def byte_duplicates(candidates: Sequence[str], reference: Sequence[str]) -> dict[str, str]:
    """{candidate path: a reference path whose file has the same bytes}, for the candidates that have one.

    Files are first grouped by size (one `os.stat` each); only candidates whose size a reference file shares
    are hashed (sha256), with those reference files, so a set of distinct JPEGs costs a stat per file and
    a few hashes. A missing file is skipped (the loaders report it where it is read).

    Args:
        candidates: image paths that would join the training part of every fold.
        reference: the competition's training image paths.
    """
    by_size: dict[int, list[str]] = defaultdict(list)
    for p in reference:
        try:
            by_size[os.stat(p).st_size].append(str(p))
        except OSError:
            continue
    digests: dict[str, str] = {}  # path -> sha256, each file hashed at most once

    def digest(p: str) -> str:
        if p not in digests:
            digests[p] = sha256_file(p)
        return digests[p]

    found = {}
    for c in map(str, candidates):
        try:
            same_size = by_size.get(os.stat(c).st_size)
        except OSError:
            continue
        if not same_size:
            continue
        d = digest(c)
        match = next((r for r in same_size if digest(r) == d), None)
        if match is not None:
            found[c] = match
    return found


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
