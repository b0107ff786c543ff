"""comp.data.cache, the pre-resized image cache: keyed by the preprocessing, lossless (the same batches as
decoding), never stale (an image replaced under it is rebuilt), built in parallel as serially; only a failed
decode is the image's fault. A build interrupted: tests/data/test_cache_resume.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import FAST, ROOT, write_tiny_competition
from replicas import build, overrides

from comp.data import cache
from comp.data.augment import build_transform
from comp.data.cache import (
    MANIFEST,
    ImageLoader,
    cache_folder,
    entry_path,
    image_loader,
    process_images,
    read_entry,
)
from comp.data.competition import load_competition
from comp.data.loader import EpochSampler, ImageDataset, make_loader
from comp.data.preprocess import load_preprocessed
from comp.errors import UserError
from comp.experiment import load_config
from comp.pipeline import prepare


def _cfg(name, root, out, *extra):
    return load_config(ROOT / "configs" / f"{name}.yaml", [*overrides(root, out, FAST), *extra])


@pytest.fixture
def aptos(tmp_path):
    root = build("aptos2019", tmp_path / "aptos2019")
    return lambda *extra: _cfg("aptos2019", root, tmp_path / "runs", *extra)


def _entries(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.suffix in (".png", ".npy")}


def test_cache_folder_keyed_by_settings(aptos, tmp_path):
    cfg = aptos()
    folder = cache_folder(cfg)
    assert folder.parent == tmp_path / "cache" and folder.name.startswith("aptos2019-16px-")  # beside data.root
    assert cache_folder(aptos("images.cache_format=npy")) == folder  # entries differ by suffix
    assert cache_folder(aptos("images.preprocess=[crop_circle]")) != folder
    assert cache_folder(aptos("image_size=24")) != folder
    assert cache_folder(aptos(f"images.cache_dir={tmp_path}/elsewhere")).parent == tmp_path / "elsewhere"


def test_rebuilt_when_preprocessing_changes(aptos):
    ben = aptos()
    prepare(ben)
    first = _entries(cache_folder(ben))
    comp = load_competition(ben)
    assert len(first) == len(comp.train) + len(comp.test)
    plain = aptos("images.preprocess=[crop_circle]")
    prepare(plain)
    second = _entries(cache_folder(plain))
    assert second.keys() == first.keys() and all(second[k] != first[k] for k in first)  # every image redone
    assert _entries(cache_folder(ben)) == first  # the other setting's cache is untouched and still valid
    path = comp.train["path"][0]
    assert (image_loader(plain, comp)(path) == load_preprocessed(path, 16, ["crop_circle"])).all()
    assert (image_loader(ben, comp)(path) == load_preprocessed(path, 16, ["crop_circle", "ben_graham"])).all()


@pytest.mark.parametrize("name, fmt", [("aptos2019", "png"), ("chest_xray", "png"), ("cnmc2019", "npy")])
def test_cache_gives_the_same_batches_as_decoding(tmp_path, name, fmt):
    """Lossless entries: the loader from the cache and the one decoding on the fly feed identical
    augmented batches (chest X-ray: grey images stored as one PNG channel)."""
    root = build(name, tmp_path / name)
    cfg = _cfg(name, root, tmp_path / "runs", f"images.cache_format={fmt}")
    prepare(cfg)
    comp = load_competition(cfg)
    cached = image_loader(cfg, comp)
    assert cached.folder == cache_folder(cfg) and all(
        entry_path(cached.folder, comp.root, p, fmt).is_file() for p in comp.train["path"])
    decoded = image_loader(_cfg(name, root, tmp_path / "runs", "images.cache=false"), comp)
    assert decoded.folder is None
    transform = build_transform(cfg.aug.train, "aug.train")
    batches = []
    for load in (cached, decoded):
        ds = ImageDataset(comp.train["path"].tolist(), comp.train["label"].tolist(), 16, transform, load=load)
        loader = make_loader(ds, 4, EpochSampler(len(ds), seed=3, epoch=1), num_workers=0)
        batches.append([x for x, _ in loader])
    for a, b in zip(*batches, strict=True):
        assert a.dtype == torch.uint8 and torch.equal(a, b)
    if name == "chest_xray":  # grey images take one channel on disk
        import cv2

        entry = entry_path(cached.folder, comp.root, comp.train["path"][0], fmt)
        assert cv2.imread(str(entry), cv2.IMREAD_UNCHANGED).ndim == 2


@pytest.mark.slow
def test_parallel_build_matches_serial(tmp_path):
    root = build("dr2015", tmp_path / "dr2015")
    serial = _cfg("dr2015", root, tmp_path / "runs", f"images.cache_dir={tmp_path}/serial")
    parallel = _cfg("dr2015", root, tmp_path / "runs", f"images.cache_dir={tmp_path}/parallel")
    comp = load_competition(serial)
    paths = comp.train["path"].tolist() + comp.test["path"].tolist()
    assert process_images(serial, comp.root, paths, workers=1) == []
    assert process_images(parallel, comp.root, paths, workers=2) == []  # a forkserver pool of 2
    assert _entries(cache_folder(serial)) == _entries(cache_folder(parallel))


def test_loader_without_cache_decodes(aptos, tmp_path):
    cfg = aptos()
    comp = load_competition(cfg)
    load = image_loader(cfg, comp)  # no prepare yet: no cache folder
    assert isinstance(load, ImageLoader) and load.folder is None
    path = comp.train["path"][0]
    assert load(path).shape == (16, 16, 3)
    assert not (tmp_path / "cache").exists()
    assert image_loader(aptos("images.cache=false"), comp).folder is None


def test_bad_cache_settings():
    with pytest.raises(UserError, match="images.cache_format"):
        load_config(None, ["images.cache_format=jpeg"])


def test_replaced_image_is_never_read_stale_and_prepare_rebuilds_it(tmp_path):
    tiny_root = write_tiny_competition(tmp_path / "data")
    cfg = load_config(None, [*FAST, f"data.root={tiny_root}", f"out_dir={tmp_path / 'runs'}", "data.source=competition",
                             "images.cache_format=npy"])
    comp = load_competition(cfg)
    paths = comp.train["path"].tolist()
    assert process_images(cfg, comp.root, paths, workers=1) == []
    folder = cache_folder(cfg)
    assert len(json.loads((folder / MANIFEST).read_text())) == len(paths)
    src = Path(paths[0])
    entry = entry_path(folder, comp.root, src, "npy")
    old = read_entry(entry, "npy")
    before = src.stat()
    new = np.full((24, 24, 3), 255, np.uint8)  # white, where the old one was dark
    cv2.imwrite(str(src), new)
    os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))  # older mtime, as unzip restores
    load = image_loader(cfg, comp)
    assert (load(str(src)) == load_preprocessed(str(src), 16, [])).all() and (load(str(src)) != old).any()
    assert (load(paths[1]) == read_entry(entry_path(folder, comp.root, paths[1], "npy"), "npy")).all()
    stamp1 = entry_path(folder, comp.root, paths[1], "npy").stat().st_mtime_ns
    assert process_images(cfg, comp.root, paths, workers=1) == []  # prepare: only the changed one rebuilt
    assert (read_entry(entry, "npy") == load_preprocessed(str(src), 16, [])).all()
    assert entry_path(folder, comp.root, paths[1], "npy").stat().st_mtime_ns == stamp1
    assert image_loader(cfg, comp).manifest[entry.relative_to(folder).as_posix()][0] == src.stat().st_size
    assert process_images(cfg, comp.root, paths, workers=1, rebuild=True) == []  # --rebuild-cache: every one
    assert entry_path(folder, comp.root, paths[1], "npy").stat().st_mtime_ns > stamp1


def test_only_a_failed_decode_is_a_corrupt_image(tmp_path, monkeypatch):
    root = write_tiny_competition(tmp_path / "data", n_per_class=1, n_test=1)
    img = str(root / "train" / "img_0_000.png")
    assert cache._work((img, None, 16, [], "png", None)) is None

    def step_bug(*_a, **_k):
        raise ValueError("a preprocessing step's bug")

    monkeypatch.setattr(cache, "load_preprocessed", step_bug)
    with pytest.raises(ValueError, match="step's bug"):
        cache._work((img, None, 16, [], "png", None))
    monkeypatch.undo()
    (tmp_path / "cut.png").write_bytes(Path(img).read_bytes()[:40])
    problem = cache._work((str(tmp_path / "cut.png"), None, 16, [], "png", None))
    assert problem is not None and problem.kind == "truncated"
