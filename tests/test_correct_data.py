"""Correctness of the data path against public bug reports (issue 13): independent augmentations,
duplicate images by content, ids unique in any folder layout, no Linux-only call without a fallback,
the version of the libraries that made the folds, and every archive layout (the weights layouts:
test_correct_weights.py)."""

from __future__ import annotations

import io
import itertools
import json
import multiprocessing
import os
import shutil
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import FAST, ROOT
from replicas import build, overrides
from scipy.stats import chisquare

from comp import system
from comp.data import cache
from comp.data.augment import build_transform
from comp.data.competition import load_competition
from comp.data.download import unzip_all
from comp.data.folds import library_versions, load_or_make_folds, split
from comp.data.loader import ImageDataset
from comp.errors import UserError
from comp.experiment import Experiment, load_config

# --- 1. augmentations: independent decisions, a pure function of the sample's seed ------------------

IMG = np.arange(9 * 3, dtype=np.uint8).reshape(3, 3, 3) * 9  # every pixel distinct: each flip is visible
OPS = {"h": lambda a: a[:, ::-1], "v": lambda a: a[::-1], "t": lambda a: a.transpose(1, 0, 2)}


def _outcomes(specs: list[dict], names: str, n: int) -> list[str]:
    """Which of the transforms `names` (applied in that order) fired on each of `n` sample seeds, read
    from the ImageDataset's output, for the pipeline built from `specs` as training builds it."""
    combos = {}
    for k in range(len(names) + 1):
        for subset in itertools.combinations(names, k):
            out = IMG
            for op in subset:
                out = OPS[op](out)
            combos[np.ascontiguousarray(out).tobytes()] = "".join(subset) or "-"
    assert len(combos) == 2 ** len(names)  # every combination gives a different image
    ds = ImageDataset(["x"], None, 3, build_transform(specs, "aug.train"), load=lambda _: IMG.copy())
    seeds = np.random.default_rng(0).integers(0, 2**31 - 1, n)  # as EpochSampler's: large, unrelated ints
    return [combos[ds[(0, int(s))][0].permute(1, 2, 0).numpy().tobytes()] for s in seeds]


def test_two_flips_fire_independently():
    """HorizontalFlip(p=.5) + VerticalFlip(p=.5): each of the four outcomes a quarter of the time. The
    kit once seeded both flips alike: only '-' and 'hv' over 400 samples, never a mirror image."""
    got = _outcomes([{"name": "HorizontalFlip", "p": 0.5}, {"name": "VerticalFlip", "p": 0.5}], "hv", 400)
    counts = [got.count(c) for c in ("-", "h", "v", "hv")]
    assert min(counts) > 50, counts
    assert chisquare(counts).pvalue > 1e-3, counts


def test_three_transforms_fire_independently():
    specs = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "VerticalFlip", "p": 0.5},
             {"name": "Transpose", "p": 0.5}]
    got = _outcomes(specs, "hvt", 800)
    counts = [got.count(c) for c in ("-", "h", "v", "t", "hv", "ht", "vt", "hvt")]
    assert min(counts) > 50, counts
    assert chisquare(counts).pvalue > 1e-3, counts


def test_nested_pipeline_children_are_independent_too():
    """A OneOf inside the pipeline gets its own stream, and so do its children."""
    specs = [{"name": "HorizontalFlip", "p": 0.5},
             {"name": "OneOf", "transforms": [A.VerticalFlip(p=1)], "p": 0.5}]
    got = _outcomes(specs, "hv", 400)
    counts = [got.count(c) for c in ("-", "h", "v", "hv")]
    assert chisquare(counts).pvalue > 1e-3, counts


def test_same_seed_same_output_in_a_fresh_pipeline():
    """Resume: a sample's augmentation depends on its seed alone, not on what the pipeline drew before
    nor on which process (a fresh pipeline) draws it; another seed gives another image."""
    specs = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "Affine", "rotate": [-30, 30], "p": 1.0},
             {"name": "RandomBrightnessContrast", "p": 0.5}]
    img = np.random.default_rng(1).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    first = ImageDataset(["x"], None, 32, build_transform(specs, "aug.train"), load=lambda _: img.copy())
    later = ImageDataset(["x"], None, 32, build_transform(specs, "aug.train"), load=lambda _: img.copy())
    for s in range(20):  # `later` has drawn other samples before
        later[(0, 1000 + s)]
    seeds = [7, 123456789, 2**31 - 2]
    for s in seeds:
        assert np.array_equal(first[(0, s)][0], later[(0, s)][0])
        assert np.array_equal(first[(0, s)][0], first[(0, s)][0])
    outs = {first[(0, s)][0].numpy().tobytes() for s in seeds}
    assert len(outs) == len(seeds)


# --- 13 and 18c. duplicates by content; ids unique in any folder layout -----------------------------


def _folders_cfg(root: Path, out: Path, *extra: str):
    return load_config(ROOT / "configs" / "chest_xray.yaml", [*overrides(root, out, FAST), *extra])


@pytest.fixture(scope="module")
def chest(tmp_path_factory) -> Path:
    return build("chest_xray", tmp_path_factory.mktemp("replica") / "chest_xray")


def test_byte_identical_copy_dropped_but_same_size_other_image_refused(chest, tmp_path):
    """The replica holds its tree twice (as the real zip does): the copies are dropped. A copy that has
    the first one's size but other bytes is another image under the same id: an error naming both."""
    assert len(load_competition(_folders_cfg(chest, tmp_path)).train) == 24  # one of each doubled file
    root = tmp_path / "cx"
    shutil.copytree(chest, root)
    copy = root / "chest_xray" / "chest_xray" / "train" / "NORMAL" / "IM-0115-0001.jpeg"
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other contents (the JPEG's scan data)
    copy.write_bytes(bytes(data))
    assert copy.stat().st_size == (root / "chest_xray" / "train" / "NORMAL" / copy.name).stat().st_size
    with pytest.raises(UserError, match="image id 'IM-0115-0001' appears twice .*different contents") as e:
        load_competition(_folders_cfg(root, tmp_path))
    assert str(copy) in str(e.value) and str(root / "chest_xray" / "train" / "NORMAL" / copy.name) in str(e.value)


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8), value, np.uint8))


def test_class_folders_reusing_file_names_get_unique_ids(chest, tmp_path):
    """`1.png` in each class folder (one counter per class, as many Kaggle datasets number their files):
    every image is kept, under a unique id `<class>/<name>`; labels follow the folders."""
    root = tmp_path / "d"
    for cls, values in (("NORMAL", (10, 20, 30)), ("PNEUMONIA", (200, 210, 220))):
        for k, v in enumerate(values, 1):
            _png(root / "chest_xray" / "train" / cls / f"{k}.png", v)
    _png(root / "chest_xray" / "test" / "NORMAL" / "1.png", 40)
    _png(root / "chest_xray" / "test" / "PNEUMONIA" / "1.png", 230)
    comp = load_competition(_folders_cfg(root, tmp_path, "data.group_pattern=''"))
    t = comp.train.set_index("id")
    assert sorted(t.index) == ["NORMAL/1", "NORMAL/2", "NORMAL/3", "PNEUMONIA/1", "PNEUMONIA/2", "PNEUMONIA/3"]
    assert list(t.loc[["NORMAL/1", "PNEUMONIA/1"], "label"]) == [0, 1]
    assert all(Path(p).parent.name == i.split("/")[0] for i, p in t["path"].items())
    assert sorted(comp.test["id"]) == ["NORMAL/1", "PNEUMONIA/1"] and comp.test["id"].is_unique
    # names unique across classes (the real chest X-ray): ids stay the plain names
    assert "IM-0115-0001" in set(load_competition(_folders_cfg(chest, tmp_path)).train["id"])


def test_unlabelled_folder_with_one_name_twice_is_refused(tmp_path):
    """Test images straight in a folder: `1.png` and `1.jpg` with other contents are two images, one id."""
    root = tmp_path / "d"
    for cls in ("NORMAL", "PNEUMONIA"):
        for k in range(2):
            _png(root / "chest_xray" / "train" / cls / f"{cls}_{k}.png", 50 * k + (100 if cls == "NORMAL" else 0))
    _png(root / "chest_xray" / "test" / "1.png", 1)
    cv2.imwrite(str(root / "chest_xray" / "test" / "1.jpg"), np.full((8, 8), 99, np.uint8))
    with pytest.raises(UserError, match="image id '1' appears twice .*different contents"):
        load_competition(_folders_cfg(root, tmp_path, "data.group_pattern=''"))


# --- 17. StratifiedGroupKFold(shuffle=True) stratifies; folds.json says which libraries made the folds ---


def test_sklearn_floor_is_the_release_that_stratifies_shuffled_group_folds():
    """scikit-learn < 1.8 shuffled StratifiedGroupKFold's groups apart from their labels (PR #32540): one
    image per patient, 20 positives in 100, 5 folds must give 4 positives in every fold, for any seed."""
    assert '"scikit-learn>=1.8",' in (ROOT / "pyproject.toml").read_text()
    major, minor = (int(p) for p in metadata.version("scikit-learn").split(".")[:2])
    assert (major, minor) >= (1, 8)
    y = np.array([1] * 20 + [0] * 80)
    table = pd.DataFrame({"label": y, "group": [f"p{i}" for i in range(100)]})
    for seed in range(4):
        fold = split(table, 5, seed, grouped=True).to_numpy()
        assert [int(y[fold == k].sum()) for k in range(5)] == [4] * 5


def test_folds_json_records_library_versions_and_a_new_version_does_not_refuse(tmp_path, capsys):
    root = build("dr2015", tmp_path / "dr")
    cfg = load_config(ROOT / "configs" / "dr2015.yaml", overrides(root, tmp_path / "runs", FAST))
    train = load_competition(cfg).train
    out = tmp_path / "runs"
    first = load_or_make_folds(cfg, train, Experiment(cfg, out).split)
    made = json.loads((out / "folds.json").read_text())
    assert made["made_with"] == {name: metadata.version(name) for name in ("scikit-learn", "numpy", "pandas", "comp")}
    assert made["made_with"] == library_versions()
    # the same folds made under older libraries: reused as they are, the difference logged
    made["made_with"] = {**made["made_with"], "scikit-learn": "1.7.2", "numpy": "1.26.4"}
    (out / "folds.json").write_text(json.dumps(made))
    csv = (out / "folds.csv").read_text()
    capsys.readouterr()
    again = load_or_make_folds(cfg, train, Experiment(cfg, out).split)
    assert again["fold"].equals(first["fold"]) and (out / "folds.csv").read_text() == csv
    err = capsys.readouterr().err
    assert "scikit-learn 1.7.2 (now " in err and "numpy 1.26.4" in err and "kept as it is" in err
    assert "did not stratify" in err  # dr2015 is grouped by patient: those folds were made by the bug


# --- 16. no Linux-only call without a fallback ------------------------------------------------------


def test_usable_cpus_without_sched_getaffinity(monkeypatch):
    assert system.usable_cpus() >= 1
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    monkeypatch.delattr(os, "process_cpu_count", raising=False)  # Python < 3.13
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert system.usable_cpus() == 3
    monkeypatch.setattr(os, "cpu_count", lambda: None)  # "undeterminable", as the docs allow
    assert system.usable_cpus() == 1


@pytest.mark.slow
def test_cache_build_runs_where_neither_affinity_nor_forkserver_exist(monkeypatch, tmp_path):
    """The image cache build as on Windows: no os.sched_getaffinity, only the spawn start method; its
    default worker count and pool still work, and give the entries a serial build gives."""
    root = build("aptos2019", tmp_path / "aptos")
    cfgs = {k: load_config(ROOT / "configs" / "aptos2019.yaml",
                           [*overrides(root, tmp_path / "runs", FAST), f"images.cache_dir={tmp_path / k}"])
            for k in ("serial", "pool")}
    comp = load_competition(cfgs["serial"])
    paths = comp.train["path"].tolist()[:6]
    assert cache.process_images(cfgs["serial"], comp.root, paths, workers=1) == []
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.delattr(os, "process_cpu_count", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    monkeypatch.setattr(cache, "MIN_PARALLEL", 1)  # a pool even for 6 images
    started = []
    real = system.process_context
    monkeypatch.setattr(cache, "process_context", lambda: started.append(real()) or started[-1])
    assert cache.process_images(cfgs["pool"], comp.root, paths) == []
    assert [c.get_start_method() for c in started] == ["spawn"]

    def entries(k: str) -> dict[str, bytes]:
        folder = cache.cache_folder(cfgs[k])
        return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.suffix in (".png", ".npy")}

    assert len(entries("pool")) == 6 and entries("pool") == entries("serial")


# --- 18b. every archive layout a download ships -----------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_tar_archives_nested_and_a_zip_in_pieces_are_unpacked(tmp_path):
    """A .tar.gz holding a .tgz and a .tar.xz, and a zip split in byte pieces (DR 2015 ships
    train.zip.001 ... .005): all unpacked in place, the archives gone; a .nii.gz image stays."""
    src = tmp_path / "src"
    for name, data in {"train.csv": b"id,label\na,0\n", "train/a.png": b"A" * 100, "test/b.png": b"B" * 50,
                       "extra/c.txt": b"c", "scans/s1.nii.gz": b"\x1f\x8bnot-a-tar"}.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    dl = tmp_path / "dl"
    dl.mkdir()
    with tarfile.open(tmp_path / "train.tgz", "w:gz") as t:
        t.add(src / "train", "train")
    with tarfile.open(tmp_path / "test.tar.xz", "w:xz") as t:
        t.add(src / "test", "test")
    with tarfile.open(dl / "download.tar.gz", "w:gz") as t:
        t.add(src / "train.csv", "train.csv")
        t.add(src / "scans", "scans")
        t.add(tmp_path / "train.tgz", "train.tgz")
        t.add(tmp_path / "test.tar.xz", "test.tar.xz")
    with zipfile.ZipFile(tmp_path / "extra.zip", "w") as z:
        z.write(src / "extra" / "c.txt", "extra/c.txt")
    whole = (tmp_path / "extra.zip").read_bytes()
    for k, i in enumerate(range(0, len(whole), 60), 1):
        (dl / f"extra.zip.{k:03d}").write_bytes(whole[i:i + 60])
    assert len(list(dl.glob("extra.zip.*"))) >= 3
    unzip_all(dl)
    assert _tree(dl) == _tree(src)


@pytest.mark.parametrize("member", ["../escaped.txt", "link", "/tmp/absolute-escape.txt"])
def test_tar_member_outside_the_folder_is_refused(tmp_path, member):
    """Path traversal (CVE-2007-4559): `..`, a symlink out of the folder are refused; an absolute name
    lands inside the folder (its leading slash stripped, as the `data` filter does)."""
    dl = tmp_path / "dl"
    dl.mkdir()
    with tarfile.open(dl / "evil.tar", "w") as t:
        info = tarfile.TarInfo(member)
        if member == "link":  # a symlink out of the folder, then a file written through it
            info.type, info.linkname = tarfile.SYMTYPE, str(tmp_path)
            t.addfile(info)
            info = tarfile.TarInfo("link/escaped.txt")
        info.size = 4
        t.addfile(info, io.BytesIO(b"evil"))
    if member.startswith("/"):
        unzip_all(dl)
        assert _tree(dl) == {"tmp/absolute-escape.txt": b"evil"}
    else:
        with pytest.raises(UserError, match="evil.tar has a member that would land outside"):
            unzip_all(dl)
    assert not (tmp_path / "escaped.txt").exists() and not Path("/tmp/absolute-escape.txt").exists()


def test_corrupt_tar_and_7z_are_clear_errors(tmp_path):
    dl = tmp_path / "dl"
    dl.mkdir()
    (dl / "data.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)
    with pytest.raises(UserError, match="data.tar.gz is corrupt .*run prepare.py again"):
        unzip_all(dl)
    (dl / "data.tar.gz").unlink()
    (dl / "train.7z").write_bytes(b"7z\xbc\xaf\x27\x1c" + bytes(26))
    with pytest.raises(UserError, match=r"train.7z is a .7z archive.*7z x train.7z"):
        unzip_all(dl)
