"""Getting the data: the embedded demo competition, or a Kaggle download through the real CLI
(`kaggle competitions download` / `kaggle datasets download`), unzipped, made atomic by a rename.

The demo is scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes), laid out
exactly like a Kaggle download: train.csv (id,label), train/<id>.png, test/<id>.png,
sample_submission.csv, plus solution.csv with the held-out answers Kaggle would keep for the
leaderboard. Nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from comp import io, kaggle_cli
from comp.config import resolve_path
from comp.errors import UserError
from comp.log import log

DEMO_TEST_SHARE = 0.2  # a fifth of the digits is the held-out "leaderboard" test set


def make_demo(root: Path) -> None:
    """Write the demo competition under `root` (into a temporary folder, renamed when complete)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8), 0..16 → 0..255
    ids = np.array([f"digit_{i:04d}" for i in range(len(images))])
    tr, te = train_test_split(np.arange(len(images)), test_size=DEMO_TEST_SHARE, stratify=digits.target,
                              random_state=0)
    root.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_dir(root, "the demo competition") as tmp:
        for split, idx in (("train", tr), ("test", te)):
            (tmp / split).mkdir(parents=True)
            for i in idx:
                cv2.imwrite(str(tmp / split / f"{ids[i]}.png"), images[i])
        pd.DataFrame({"id": ids[tr], "label": digits.target[tr]}).to_csv(tmp / "train.csv", index=False)
        te = np.sort(te)
        pd.DataFrame({"id": ids[te], "label": 0}).to_csv(tmp / "sample_submission.csv", index=False)
        pd.DataFrame({"id": ids[te], "label": digits.target[te]}).to_csv(tmp / "solution.csv", index=False)


def kaggle_download(cfg: Any, root: Path) -> None:
    """`kaggle competitions download -c <slug>` (or `kaggle datasets download <owner/name>`), unzipped,
    then renamed to `root`. Everything happens in a temporary folder beside `root`, so a failed or
    interrupted download leaves nothing half-made: `root` appears complete or not at all.

    Raises:
        UserError: no slug configured, the CLI missing or failing (its message, credentials included,
            in one line), a corrupt archive, or a download with no files.
    """
    d = cfg.data
    if d.source == "dataset":
        if not d.dataset:
            raise UserError("data.source=dataset needs data.dataset (owner/name of the Kaggle dataset)")
        args = ["datasets", "download", d.dataset]
    elif d.source == "competition":
        if not d.competition:
            raise UserError("data.competition is empty: name the Kaggle competition to download")
        args = ["competitions", "download", "-c", d.competition]
    else:
        raise UserError(f"bad value for config key 'data.source': {d.source!r}; choose competition, dataset or demo")
    kaggle_cli.executable()  # fail before making anything when there is no CLI
    root.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_dir(root, "the download folder") as tmp:  # ensure_data only downloads into an empty root
        log(f"downloading: {kaggle_cli.describe(args)} into {root}")
        kaggle_cli.run([*args, "-p", str(tmp)], stream=True)
        unzip_all(tmp)
        if not any(tmp.iterdir()):
            raise UserError(f"{kaggle_cli.describe(args)} downloaded no files")


def unzip_all(folder: Path, depth: int = 3) -> None:
    """Extract every .zip under `folder` where it lies and delete it; archives inside archives (Kaggle
    ships train.zip inside the competition zip) too, up to `depth` levels."""
    for _ in range(depth):
        archives = sorted(folder.rglob("*.zip"))
        if not archives:
            return
        for z in archives:
            try:
                with zipfile.ZipFile(z) as zf:
                    zf.extractall(z.parent)  # zipfile drops absolute and ".." parts of member names
            except zipfile.BadZipFile:
                raise UserError(f"downloaded archive {z.name} is corrupt (not a zip file); "
                                "run prepare.py again") from None
            z.unlink()


def ensure_data(cfg: Any) -> Path:
    """`data.root`, made first when it is absent: the demo is built, Kaggle data downloaded."""
    root = resolve_path(cfg.data.root)
    if root.is_dir() and any(root.iterdir()):
        return root
    io.check_dir(root, "data.root")  # a file in the way or a read-only folder: before any download
    if cfg.data.source == "demo":
        make_demo(root)
    else:
        kaggle_download(cfg, root)
    return root
