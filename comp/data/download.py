"""Getting the data: the embedded demo competition, or a Kaggle download through the real CLI
(`kaggle competitions download` / `kaggle datasets download`), unzipped, made atomic by a rename.

The demo is scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes), laid out
exactly like a Kaggle download: train.csv (id,label), train/<id>.png, test/<id>.png,
sample_submission.csv, plus solution.csv with the held-out answers Kaggle would keep for the
leaderboard. Nothing is downloaded. With `data.demo_external` a share of the training digits (stratified)
goes to external/<id>.png instead, unlabelled, their answers in external_solution.csv: the "external"
unlabelled images that pseudo-labelling (scripts/pseudo.py --images) and distillation learn from.
"""

from __future__ import annotations

import csv
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from comp import io, kaggle_cli
from comp.config import path_hint, resolve_path
from comp.errors import UserError
from comp.log import log

DEMO_TEST_SHARE = 0.2  # a fifth of the digits is the held-out "leaderboard" test set


def make_demo(root: Path, external_share: float = 0.0) -> None:
    """Write the demo competition under `root` (into a temporary folder, renamed when complete); with
    `external_share` in (0, 1), that share of the training digits as unlabelled external/ images."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8), 0..16 → 0..255
    ids = np.array([f"digit_{i:04d}" for i in range(len(images))])
    tr, te = train_test_split(np.arange(len(images)), test_size=DEMO_TEST_SHARE, stratify=digits.target,
                              random_state=0)
    ex = np.zeros(0, np.int64)
    if external_share > 0:
        if not external_share < 1:
            raise UserError(f"bad value for config key 'data.demo_external': {external_share!r}; a share in [0, 1)")
        tr, ex = train_test_split(tr, test_size=external_share, stratify=digits.target[tr], random_state=1)
    root.parent.mkdir(parents=True, exist_ok=True)
    with io.atomic_dir(root, "the demo competition") as tmp:
        for split, idx in (("train", tr), ("test", te), ("external", ex)):
            if not len(idx):
                continue
            (tmp / split).mkdir(parents=True)
            for i in idx:
                cv2.imwrite(str(tmp / split / f"{ids[i]}.png"), images[i])
        pd.DataFrame({"id": ids[tr], "label": digits.target[tr]}).to_csv(tmp / "train.csv", index=False)
        te = np.sort(te)
        pd.DataFrame({"id": ids[te], "label": 0}).to_csv(tmp / "sample_submission.csv", index=False)
        pd.DataFrame({"id": ids[te], "label": digits.target[te]}).to_csv(tmp / "solution.csv", index=False)
        if len(ex):
            ex = np.sort(ex)
            pd.DataFrame({"id": ids[ex], "label": digits.target[ex]}).to_csv(tmp / "external_solution.csv",
                                                                             index=False)


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


TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")  # what tarfile opens
UNSUPPORTED = (".7z", ".rar")  # py7zr is pure Python but pulls eight compiled codecs: not worth a dependency


def _kind(p: Path) -> str | None:
    """'zip', 'tar', 'parts' (the first volume `x.zip.001` of a zip split in pieces, as DR 2015 ships
    train.zip.001...), 'unsupported', or None for a file that is not an archive (a `.nii.gz` image is a
    gzip, not a tar: left as it is)."""
    name = p.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if name.endswith(".zip.001"):
        return "parts"
    if name.endswith(UNSUPPORTED):
        return "unsupported"
    return None


def _join_parts(first: Path) -> Path:
    """`x.zip.001`, `x.zip.002`, ... (byte pieces of one zip) joined into `x.zip`; the pieces deleted."""
    stem = first.name[: -len(".001")]
    parts = []
    while (part := first.with_name(f"{stem}.{len(parts) + 1:03d}")).is_file():
        parts.append(part)
    whole = first.with_name(stem)
    with open(whole, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    for part in parts:
        part.unlink()
    return whole


def _extract(archive: Path, kind: str) -> None:
    """Unpack `archive` into its own folder. Members cannot land outside it: zipfile drops absolute and
    `..` parts of names; tarfile's `data` filter (PEP 706) strips the leading `/` of absolute names and
    refuses `..` escapes, links that point outside, devices, and set-uid bits."""
    where = archive.parent
    if kind == "zip":
        try:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(where)
        except zipfile.BadZipFile:
            raise UserError(f"downloaded archive {archive.name} is corrupt (not a zip file); "
                            "run prepare.py again") from None
        return
    name = archive.name.lower()
    mode = next((m for ends, m in ((("gz", "tgz"), "r:gz"), (("bz2", "tbz2"), "r:bz2"), (("xz", "txz"), "r:xz"))
                 if name.endswith(ends)), "r:")
    try:
        with tarfile.open(archive, mode) as tf:
            tf.extractall(where, filter="data")
    except tarfile.FilterError as e:  # before ReadError: both are TarErrors
        raise UserError(f"downloaded archive {archive.name} has a member that would land outside "
                        f"{where} or is not a plain file ({e}); not unpacked") from None
    except (tarfile.TarError, EOFError, OSError) as e:  # zlib/lzma errors are OSErrors too
        why = " ".join(str(e).split())  # one line
        raise UserError(f"downloaded archive {archive.name} is corrupt ({type(e).__name__}: {why}); "
                        "run prepare.py again") from None


def unzip_all(folder: Path, depth: int = 3) -> None:
    """Extract every archive under `folder` where it lies and delete it; archives inside archives (Kaggle
    ships train.zip inside the competition zip) too, up to `depth` levels. Archives: .zip, a zip split in
    pieces (`.zip.001`, `.zip.002`, ...), and tar (`.tar`, `.tar.gz`/`.tgz`, `.tar.bz2`, `.tar.xz`).

    Raises:
        UserError: a corrupt archive, a tar member that would escape its folder, or a .7z/.rar archive
            (unpack it yourself, e.g. `7z x`, into data.root and run prepare.py again).
    """
    for _ in range(depth):
        archives = [(p, k) for p in sorted(folder.rglob("*")) if p.is_file() and (k := _kind(p))]
        if not archives:
            return
        for p, kind in archives:
            if kind == "unsupported":
                raise UserError(f"downloaded archive {p.name} is a {p.suffix} archive, which the kit does not "
                                f"unpack: extract it (e.g. `7z x {p.name}`) into {p.parent} and run prepare.py again")
            if kind == "parts":
                p, kind = _join_parts(p), "zip"
            _extract(p, kind)
            p.unlink()


def download_size(cfg: Any) -> int | None:
    """Bytes Kaggle lists for the download (`kaggle competitions files -c <slug> --csv`, or `kaggle datasets
    files`), or None when the CLI cannot tell (no token yet, another output format): best effort."""
    d = cfg.data
    args = ["datasets", "files", d.dataset] if d.source == "dataset" else ["competitions", "files", "-c", d.competition]
    try:
        out = kaggle_cli.run([*args, "--csv"])
    except UserError:
        return None
    sizes = [int(r[1]) for r in csv.reader(out.splitlines()) if len(r) >= 2 and r[1].strip().isdigit()]
    return sum(sizes) if sizes else None


def ensure_data(cfg: Any, download: bool = False) -> Path:
    """`data.root`, made first when it is absent or empty: the demo is built; Kaggle data is downloaded
    only when asked (`download`, i.e. prepare.py --download, or `data.download: true`), so a typo in
    data.root never starts gigabytes into a wrong folder.

    Raises:
        UserError: data.root missing and no download asked (the absolute path looked at and the command),
            or the download failing (kaggle_download).
    """
    root = resolve_path(cfg.data.root)
    if root.is_dir() and any(root.iterdir()):
        return root
    io.check_dir(root, "data.root")  # a file in the way or a read-only folder: before any download
    if cfg.data.source == "demo":
        make_demo(root, float(cfg.data.demo_external))
        return root
    if not (download or cfg.data.download):
        state = "is empty" if root.is_dir() else "does not exist"
        raise UserError(f"data.root {state}: {root}{path_hint(cfg.data.root)}; point data.root at the download, "
                        f"or fetch it from Kaggle with: python scripts/prepare.py --config <this config> --download")
    slug = {"competition": cfg.data.competition, "dataset": cfg.data.dataset}.get(cfg.data.source)
    if slug:  # an empty or unknown one is refused by kaggle_download before anything runs
        size = download_size(cfg)
        if size is not None:
            log(f"download: {size / 1e9:.2f} GB into {root}")
    kaggle_download(cfg, root)
    return root
