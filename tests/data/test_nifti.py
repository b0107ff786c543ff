"""comp.data.nifti: an axial slice of a NIfTI volume (`<vol>.nii.gz#<k>`) read as an image through the reader
table, the cache and prepare: reoriented to RAS+ and shown radiologically, scl_slope/scl_inter applied, min-max
or a DICOM window; and the bad inputs (a cut file, no slice, a slice past the volume, 4D, NaN voxels).

The volumes are written with nibabel from an array laid out in RAS+ by hand (`ras`), stored in another axis
order with flipped axes, so the expected pixels do not come from nibabel's reorientation."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from helpers import FAST, one_error, run_main

from comp.data.cache import cache_folder, image_loader
from comp.data.competition import load_competition
from comp.data.dicom import WINDOWS, DicomOptions, apply_window
from comp.data.image_base import ImageError, stretch, window_path
from comp.data.nifti import axial_slice
from comp.data.readers import load_image, read_image, reader_for
from comp.experiment import load_config

X, Y, Z = 7, 5, 4  # voxels to the patient's right, anterior, superior
SLOPE, INTER = 2.0, -1024.0  # CT stored as in many scanners' exports: HU = 2 * stored - 1024


def ras(seed: int = 0) -> np.ndarray:
    """Stored values (X, Y, Z) int16 in RAS+ order, each voxel distinct; the right-anterior column of every slice
    is the brightest, so the radiological display puts it top-left."""
    v = np.random.default_rng(seed).permutation(X * Y * Z).reshape(X, Y, Z).astype(np.int16) + 400
    v[X - 1, Y - 1, :] = 2000
    return v


def write(path: Path, data: np.ndarray | None = None, nifti2: bool = False) -> Path:
    """`data` (RAS+, default ras()) stored with file axes (inferior<-superior, left<-right, anterior): file[i, j, l]
    = data[X-1-j, l, Z-1-i], with the affine that says so (2.5 mm slices, 0.8 mm in plane, an offset origin), and
    HU scaling in the header."""
    data = ras() if data is None else data
    stored = np.ascontiguousarray(np.transpose(data[::-1, :, ::-1], (2, 0, 1)))  # (Z, X, Y)
    affine = np.array([[0.0, -0.8, 0.0, 90.0],   # file j: to the patient's left (-R)
                       [0.0, 0.0, 0.8, -120.0],  # file l: anterior
                       [-2.5, 0.0, 0.0, 60.0],   # file i: inferior (-S)
                       [0.0, 0.0, 0.0, 1.0]])
    img = (nib.Nifti2Image if nifti2 else nib.Nifti1Image)(stored, affine)
    img.header.set_slope_inter(SLOPE, INTER)
    nib.save(img, path)
    return path


def shown(data: np.ndarray, k: int) -> np.ndarray:
    """Axial slice k of a RAS+ array in HU as a radiologist sees it: rows anterior to posterior, columns the
    patient's right to left."""
    return (SLOPE * data[:, :, k].astype(np.float64) + INTER)[::-1, ::-1].T


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii"])
def test_axial_slices_reoriented_and_shown_radiologically(tmp_path, name):
    f = write(tmp_path / name)
    assert reader_for(f).name == "nifti"
    for k in range(Z):
        hu = shown(ras(), k)
        assert np.array_equal(axial_slice(f, k), hu)
        img = read_image(window_path(str(f), k))
        assert img.shape == (Y, X, 3) and img.dtype == np.uint8
        assert np.array_equal(img[:, :, 0], stretch(hu, hu.min(), hu.max())) and (img[..., 0] == img[..., 2]).all()
        assert img[0, 0, 0] == 255  # the patient's right-anterior corner, top-left


def test_dicom_windows_apply_to_hounsfield_units(tmp_path):
    """images.dicom_windows: after scl_slope/scl_inter, DICOM's LINEAR window per channel."""
    f = write(tmp_path / "v.nii.gz")
    hu = shown(ras(), 2)
    img = read_image(f"{f}#2", dicom=DicomOptions((WINDOWS["brain"], None, (300.0, 1500.0))))
    assert np.array_equal(img[..., 0], apply_window(hu, *WINDOWS["brain"]))
    assert np.array_equal(img[..., 1], stretch(hu, hu.min(), hu.max()))  # `file`: the slice's own range
    assert np.array_equal(img[..., 2], apply_window(hu, 300.0, 1500.0))


def test_a_2d_image_or_one_slice_needs_no_index_and_a_volume_does(tmp_path):
    flat = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(12, dtype=np.float32).reshape(4, 3), np.eye(4)), flat)
    assert np.array_equal(axial_slice(flat, None), np.arange(12.0).reshape(4, 3)[::-1, ::-1].T)
    one = write(tmp_path / "one.nii.gz", ras()[:, :, 1:2])
    assert np.array_equal(axial_slice(one, None), shown(ras()[:, :, 1:2], 0))
    vol = write(tmp_path / "vol.nii.gz")
    with pytest.raises(ImageError, match=r"a 3D volume of shape \(4, 7, 5\) \(4 axial slices\): name one as "
                                         r"`vol.nii.gz#<slice>`, 0..3") as e:
        read_image(vol)
    assert e.value.kind == "unsupported" and str(vol) in str(e.value)


@pytest.mark.parametrize("index, needle", [(4, r"slice 4 of a volume of shape \(4, 7, 5\): slices are 0..3"),
                                           (1.5, r"slice 1.5 of a volume"), (-1, r"slice -1 of a volume")])
def test_a_slice_outside_the_volume_is_named(tmp_path, index, needle):
    f = write(tmp_path / "v.nii.gz")
    with pytest.raises(ImageError, match=needle) as e:
        read_image(f"{f}#{index:g}")
    assert f"v.nii.gz#{index:g}" in str(e.value) and e.value.kind == "unsupported"


def test_4d_is_refused_naming_its_dimensions_and_a_trailing_1_is_dropped(tmp_path):
    f = tmp_path / "t.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 2), np.float32), np.eye(4)), f)
    with pytest.raises(ImageError, match=r"a 4D volume of shape \(4, 4, 3, 2\)"):
        read_image(f"{f}#0")
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3, 1), np.float32), np.eye(4)), f)
    assert read_image(f"{f}#2").shape == (4, 4, 3)


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii"])
def test_a_cut_file_is_truncated_naming_it(tmp_path, name):
    f = write(tmp_path / name, np.zeros((64, 64, 8), np.int16) + np.arange(64, dtype=np.int16)[:, None, None])
    f.write_bytes(f.read_bytes()[: f.stat().st_size * 2 // 3])
    with pytest.raises(ImageError) as e:
        read_image(f"{f}#3")
    assert e.value.kind == "truncated" and str(f) in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_not_nifti_is_corrupt(tmp_path):
    f = tmp_path / "x.nii"
    f.write_bytes(b"not a volume" * 40)
    with pytest.raises(ImageError) as e:
        read_image(f)
    assert e.value.kind == "corrupt" and str(f) in str(e.value) and "not a readable NIfTI file" in str(e.value)


def test_claimed_by_content_without_a_suffix(tmp_path):
    """NIfTI-1 ('n+1' at 344) and NIfTI-2 ('n+2' at 4) files named without .nii are read by their magic."""
    for nifti2 in (False, True):
        f = write(tmp_path / f"v{int(nifti2)}.nii", nifti2=nifti2)
        bare = f.rename(tmp_path / f"scan{int(nifti2)}")
        assert reader_for(bare).name == "nifti"
        assert np.array_equal(axial_slice(bare, 3), shown(ras(), 3))


def test_nan_voxels_filled_with_one_warning(tmp_path, capsys):
    data = ras().astype(np.float32)
    data[0, 0, 1] = np.nan
    f = write(tmp_path / "n.nii.gz", data)
    img = read_image(f"{f}#1")
    read_image(f"{f}#1")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "n.nii.gz#1" in err and "1 voxel(s) NaN" in err
    assert img[-1, -1, 0] == 0  # left-posterior corner: the slice's lowest value


def _competition(root: Path) -> Path:
    """A csv competition whose rows are slices: train.csv id,label,volume,slice; test.csv id,volume,slice."""
    (root / "volumes").mkdir(parents=True)
    train, test = [], []
    for v in range(3):
        write(root / "volumes" / f"ct{v}.nii.gz", ras(seed=v))
        train += [(f"ct{v}_{k}", (v + k) % 2, f"ct{v}", k) for k in range(Z)]
    write(root / "volumes" / "ct9.nii.gz", ras(seed=9))
    test = [(f"ct9_{k}", "ct9", k) for k in range(Z)]
    pd.DataFrame(train, columns=["id", "label", "volume", "slice"]).to_csv(root / "train.csv", index=False)
    pd.DataFrame(test, columns=["id", "volume", "slice"]).to_csv(root / "test.csv", index=False)
    pd.DataFrame({"id": [t[0] for t in test], "label": 0}).to_csv(root / "sample_submission.csv", index=False)
    return root


def _overrides(root: Path, tmp_path: Path) -> list[str]:
    return [*FAST, "image_size=8", f"data.root={root}", f"out_dir={tmp_path / 'runs'}", "data.source=competition",
            "data.train_images=[volumes]", "data.test_images=[volumes]", "data.test_csv=test.csv",
            "data.image_ext=.nii.gz", "data.file_column=volume", "data.offset_column=slice",
            f"images.cache_dir={tmp_path / 'cache'}"]


def test_prepare_reads_one_slice_per_row(tmp_path):
    """prepare.py on a csv competition whose rows name `<volume>.nii.gz` and a slice (data.file_column,
    data.offset_column): every row is its own slice, cached as read_image reads it."""
    root = _competition(tmp_path / "comp")
    code, _, err = run_main("prepare.py", *_overrides(root, tmp_path))
    assert code == 0, err[-3000:]
    cfg = load_config(None, _overrides(root, tmp_path))
    comp = load_competition(cfg)
    assert comp.train["path"].tolist() == [f"{root}/volumes/ct{v}.nii.gz#{k}" for v in range(3) for k in range(Z)]
    assert comp.test["path"].iloc[2] == f"{root}/volumes/ct9.nii.gz#2"
    assert cache_folder(cfg).is_dir()
    load = image_loader(cfg, comp)
    for p in (comp.train["path"].iloc[5], comp.test["path"].iloc[3]):
        assert np.array_equal(load(p), load_image(p, 8))


@pytest.mark.parametrize("fault", ["truncated", "past_end"])
def test_prepare_names_a_cut_volume_or_a_missing_slice(tmp_path, fault):
    root = _competition(tmp_path / "comp")
    if fault == "truncated":
        f = root / "volumes" / "ct1.nii.gz"
        f.write_bytes(f.read_bytes()[:200])
        needle = "truncated: volumes/ct1.nii.gz#0"
    else:
        csv = pd.read_csv(root / "train.csv")
        csv.loc[0, "slice"] = Z
        csv.to_csv(root / "train.csv", index=False)
        needle = f"ct0.nii.gz#{Z}"
    code, _, err = run_main("prepare.py", *_overrides(root, tmp_path))
    line = one_error(code, err, needle)
    assert fault == "truncated" or "slices are 0..3" in line
