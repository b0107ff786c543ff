"""HDF5 image stores (comp/data/hdf5.py, ISIC 2024): an image in `<store>/<key>` decoded by the same decoders as
its file would be, its problems (a missing key, a truncated or foreign store, bytes that are no image) one
error line naming the store and the id, the cache keyed by the store's stamp, and a handle per process, so
DataLoader workers forked from a parent that has the store open each read through their own."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import FAST, ROOT, one_error, run_main
from replicas import _lesion, isic2024, jpeg_bytes, write_store

from comp.data import hdf5
from comp.data.cache import cache_folder, image_loader, read_manifest
from comp.data.competition import load_competition
from comp.data.image_base import ImageError
from comp.data.images import read_raster
from comp.data.readers import load_image, read_image
from comp.experiment import load_config


@pytest.fixture(scope="module")
def replica(tmp_path_factory) -> Path:
    return isic2024(tmp_path_factory.mktemp("isic2024") / "isic2024")


def _copy(replica: Path, tmp_path: Path) -> Path:
    root = tmp_path / "isic2024"
    shutil.copytree(replica, root)
    return root


def _overrides(root: Path, tmp_path: Path) -> list[str]:
    return [*FAST, "batch_size=4", "model.pretrained=null", f"data.root={root}", f"out_dir={tmp_path / 'runs'}",
            f"images.cache_dir={tmp_path / 'cache'}"]


def _prepare(root: Path, tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    return run_main("prepare.py", "--config", str(ROOT / "configs" / "isic2024.yaml"), *_overrides(root, tmp_path),
                    *extra)


def test_member_pixels_equal_the_file(tmp_path):
    """A JPEG and a PNG read from a store (fixed-length bytes and opaque np.void, as h5py writes either) give
    the very pixels of the same bytes read as a file, at full size and with the reduced JPEG decode."""
    import cv2

    rng = np.random.default_rng(0)
    rgb = _lesion(rng, 96, 80, 3)
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    blobs = {"ISIC_1": jpeg_bytes(rgb), "ISIC_2": jpeg_bytes(rgb), "ISIC_3": png.tobytes()}
    store = tmp_path / "train-image.hdf5"
    write_store(store, blobs, opaque=("ISIC_2",))
    for key, data in blobs.items():
        f = tmp_path / f"{key}{'.png' if key == 'ISIC_3' else '.jpg'}"
        f.write_bytes(data)
        for target in (None, 40):
            assert np.array_equal(read_image(store / key, target=target), read_raster(f, target)), (key, target)
    assert load_image(str(store / "ISIC_1"), 32).shape == (32, 32, 3)


@pytest.mark.parametrize("case", ["missing key", "not an image", "a group", "dicom bytes"])
def test_bad_member_is_one_image_error(tmp_path, case):
    """A key the store lacks, bytes no decoder takes, a group where an image should be, and DICOM bytes (not
    read from a store): an ImageError naming the store and the id."""
    import h5py

    store = tmp_path / "train-image.hdf5"
    write_store(store, {"ISIC_1": jpeg_bytes(np.full((16, 16, 3), 99, np.uint8)),
                        "ISIC_bad": b"not an image at all", "ISIC_dcm": b"\0" * 128 + b"DICM" + b"\0" * 64})
    with h5py.File(store, "a") as f:
        f.create_group("ISIC_grp")
    key = {"missing key": "ISIC_9", "not an image": "ISIC_bad", "a group": "ISIC_grp", "dicom bytes": "ISIC_dcm"}[case]
    with pytest.raises(ImageError) as e:
        read_image(store / key)
    assert str(store) in str(e.value) and key in str(e.value)
    assert e.value.kind == {"missing key": "missing", "dicom bytes": "unsupported"}.get(case, "corrupt")


def test_truncated_or_foreign_store(tmp_path):
    """A store cut short (a download stopped midway) is 'truncated', a file that is not HDF5 'corrupt', a
    store that is not there 'missing': each naming the store."""
    store = tmp_path / "train-image.hdf5"
    write_store(store, {f"ISIC_{i}": jpeg_bytes(np.full((32, 32, 3), i, np.uint8)) for i in range(20)})
    data = store.read_bytes()
    store.write_bytes(data[:len(data) // 2])
    with pytest.raises(ImageError) as e:
        read_image(store / "ISIC_3")
    assert e.value.kind == "truncated" and str(store) in str(e.value)
    store.write_bytes(b"PK\x03\x04 a zip, not HDF5" * 10)
    with pytest.raises(ImageError) as e:
        read_image(store / "ISIC_3")
    assert e.value.kind == "corrupt" and str(store) in str(e.value)
    with pytest.raises(ImageError) as e:
        read_image(tmp_path / "test-image.hdf5" / "ISIC_3")
    assert e.value.kind == "missing" and "test-image.hdf5" in str(e.value)


def test_prepare_reads_stores_into_the_cache(replica, tmp_path):
    """prepare.py on the ISIC 2024 replica: the ids are found in the stores, every image cached once under
    the store's name (`train-image.hdf5/<id>.npy`), the manifest stamping each with the store's size and
    mtime; the loader then reads the entries, and a rewritten store sends it back to the source."""
    root = _copy(replica, tmp_path)
    code, _, err = _prepare(root, tmp_path)
    assert code == 0, err[-3000:]
    cfg = load_config(ROOT / "configs" / "isic2024.yaml", _overrides(root, tmp_path))
    comp = load_competition(cfg)
    assert all(p.startswith(str(root / "train-image.hdf5") + "/") for p in comp.train["path"])
    folder = cache_folder(cfg)
    manifest = read_manifest(folder)
    assert len(manifest) == len(comp.train) + len(comp.test) == 31
    store = root / "train-image.hdf5"
    assert manifest[f"train-image.hdf5/{comp.train['id'].iloc[0]}.npy"] == hdf5.stamp(store)
    load = image_loader(cfg, comp)
    first = comp.train["path"].iloc[0]
    assert np.array_equal(load(first), np.load(folder / f"train-image.hdf5/{comp.train['id'].iloc[0]}.npy"))
    os.utime(store, ns=(store.stat().st_atime_ns, store.stat().st_mtime_ns + 10**9))  # the store replaced
    assert not load.warned
    load(first)
    assert load.warned  # decoded from the store, not the stale entry


def test_prepare_names_a_missing_id_and_a_truncated_store(replica, tmp_path):
    """An id of the metadata CSV the store lacks: one error line naming the store and the id (the complete
    list in image_problems.csv). A truncated store: one error line naming the file."""
    root = _copy(replica, tmp_path)
    meta = pd.read_csv(root / "train-metadata.csv", dtype=str)
    meta.loc[3, "isic_id"] = "ISIC_0000000"
    meta.to_csv(root / "train-metadata.csv", index=False)
    one_error(*_prepare(root, tmp_path)[::2], "ISIC_0000000", "train-image.hdf5", "no image file")

    root = _copy(replica, tmp_path / "b")
    store = root / "train-image.hdf5"
    store.write_bytes(store.read_bytes()[:store.stat().st_size // 3])
    one_error(*_prepare(root, tmp_path / "b")[::2], str(store), "truncated")


class _Reads(torch.utils.data.Dataset):
    """Reads an image from the store and says whether the handle that read it is this process's own."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = read_image(self.paths[i])
        store = str(Path(self.paths[i]).parent)
        return torch.from_numpy(img.copy()), os.getpid(), hdf5._handles[store][0] == os.getpid()


def test_workers_open_their_own_handle(replica, tmp_path):
    """The parent holds the store open (it read an image); two forked DataLoader workers read every image
    through handles of their own (an HDF5 handle does not survive a fork), with the parent's pixels."""
    store = replica / "train-image.hdf5"
    paths = [str(store / k) for k in hdf5.keys(store)]
    expected = [read_image(p) for p in paths]  # the parent's handle is open now
    assert hdf5._handles[str(store)][0] == os.getpid()
    loader = torch.utils.data.DataLoader(_Reads(paths), batch_size=None, num_workers=2,
                                         multiprocessing_context="fork")
    pids = set()
    for (img, pid, own), want in zip(loader, expected, strict=True):
        assert own and pid != os.getpid()
        assert np.array_equal(img.numpy(), want)
        pids.add(int(pid))
    assert len(pids) == 2


def test_test_store_scanned_without_a_csv(replica, tmp_path):
    """With neither a test CSV nor a sample, the test ids are the test store's keys."""
    root = _copy(replica, tmp_path)
    (root / "sample_submission.csv").unlink()
    cfg = load_config(ROOT / "configs" / "isic2024.yaml",
                      [*_overrides(root, tmp_path), 'data.test_csv=""', 'data.sample_submission=""'])
    comp = load_competition(cfg)
    assert sorted(comp.test["id"]) == sorted(hdf5.keys(root / "test-image.hdf5"))
    assert read_image(comp.test["path"].iloc[0]).shape[2] == 3
    json.dumps(list(comp.test["path"]))  # plain strings, as every table's paths


def test_byte_copies_across_stores_and_files(tmp_path):
    """data.extra's copies of training images are found when either side sits in a store: the stored bytes
    are sized and hashed as a file's are; a missing key is skipped (the loaders report it where read)."""
    from comp.data.duplicates import byte_duplicates

    a, b = jpeg_bytes(np.full((16, 16, 3), 10, np.uint8)), jpeg_bytes(np.full((16, 16, 3), 200, np.uint8))
    write_store(tmp_path / "extra.hdf5", {"E_1": a, "E_2": b})
    (tmp_path / "T_1.jpg").write_bytes(a)
    write_store(tmp_path / "train.hdf5", {"T_2": b})
    extra = [str(tmp_path / "extra.hdf5" / k) for k in ("E_1", "E_2", "E_9")]
    found = byte_duplicates(extra, [str(tmp_path / "T_1.jpg"), str(tmp_path / "train.hdf5" / "T_2")])
    assert found == {extra[0]: str(tmp_path / "T_1.jpg"), extra[1]: str(tmp_path / "train.hdf5" / "T_2")}
