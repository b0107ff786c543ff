"""Getting the data: the embedded demo competition, or a Kaggle download through the real CLI.

The demo is scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes), laid out
exactly like a Kaggle download: train.csv (id,label), train/<id>.png, test/<id>.png,
sample_submission.csv, plus solution.csv with the held-out answers Kaggle would keep for the
leaderboard. Nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from comp.config import resolve_path
from comp.errors import UserError

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
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for split, idx in (("train", tr), ("test", te)):
        (tmp / split).mkdir(parents=True)
        for i in idx:
            cv2.imwrite(str(tmp / split / f"{ids[i]}.png"), images[i])
    pd.DataFrame({"id": ids[tr], "label": digits.target[tr]}).to_csv(tmp / "train.csv", index=False)
    te = np.sort(te)
    pd.DataFrame({"id": ids[te], "label": 0}).to_csv(tmp / "sample_submission.csv", index=False)
    pd.DataFrame({"id": ids[te], "label": digits.target[te]}).to_csv(tmp / "solution.csv", index=False)
    root.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, root)


def kaggle_download(cfg: Any, root: Path) -> None:
    """`kaggle competitions download -c <slug>` (or `kaggle datasets download <owner/name>`) into `root`,
    then unzip. Needs the Kaggle CLI and credentials (~/.kaggle/kaggle.json or KAGGLE_USERNAME/KEY)."""
    d = cfg.data
    if d.source == "dataset":
        if not d.dataset:
            raise UserError("data.source=dataset needs data.dataset (owner/name of the Kaggle dataset)")
        cmd = ["kaggle", "datasets", "download", d.dataset, "-p", str(root)]
    else:
        if not d.competition:
            raise UserError("data.competition is empty: name the Kaggle competition to download")
        cmd = ["kaggle", "competitions", "download", "-c", d.competition, "-p", str(root)]
    exe = shutil.which("kaggle")
    if exe is None:
        raise UserError("the kaggle CLI is not installed or not on PATH (pip install kaggle)")
    root.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True)
    if res.returncode != 0:
        msg = (res.stderr.strip() or res.stdout.strip() or f"exit code {res.returncode}").splitlines()
        raise UserError(f"{' '.join(cmd)} failed: {msg[-1] if msg else ''}")
    for z in sorted(root.glob("*.zip")):
        with zipfile.ZipFile(z) as zf:
            zf.extractall(root)
        z.unlink()


def ensure_data(cfg: Any) -> Path:
    """`data.root`, made first when it is absent: the demo is built, Kaggle data downloaded."""
    root = resolve_path(cfg, cfg.data.root)
    if root.is_dir() and any(root.iterdir()):
        return root
    if cfg.data.source == "demo":
        make_demo(root)
    else:
        kaggle_download(cfg, root)
    return root
