"""comp.data.dicom: DICOM read as a viewer shows it, on the real files pydicom ships (pydicom and pydicom-data):
every transfer syntax decodes to the pixels of its uncompressed twin; Modality LUT, VOI LUT, windows (file's,
multi-valued, sigmoid, configured as channels) against the standard's formulas computed here on the whole
array; MONOCHROME1 polarity; colour; frames; unsupported syntaxes; the cache key; repeated ids of a DICOM
download; the RSNA Pneumonia replica through prepare, a fold and predict."""

from __future__ import annotations

import shutil
import types

import numpy as np
import pandas as pd
import pydicom
import pytest
from helpers import FAST, ROOT
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from replicas import overrides, rsna_pneumonia

from comp.data.cache import cache_folder
from comp.data.competition import load_competition
from comp.data.dicom import WINDOWS, options, read_dicom
from comp.data.image_base import ImageError
from comp.data.readers import read_image
from comp.errors import UserError
from comp.experiment import load_config


def path(name: str) -> str:
    p = get_testdata_file(name, download=False)
    assert p is not None, f"{name}: pydicom-data is not installed (pip install -e '.[dev]')"
    return p


def read(name: str, windows=(), frame: str = "error") -> np.ndarray:
    return read_dicom(path(name), options(windows, frame))


def dataset(name: str):
    ds = pydicom.dcmread(path(name))
    return ds, ds.pixel_array


def linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 written out, to 0..255."""
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0, np.where(x > c - 0.5 + (w - 1) / 2, 1.0,
                                                           (x - (c - 0.5)) / (w - 1) + 0.5))
    return np.rint(y * 255).astype(np.uint8)


TWINS = [  # (encoded, its uncompressed twin, frame)
    ("MR_small_RLE.dcm", "MR_small.dcm", "error"), ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm", "error"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm", "error"), ("MR_small_bigendian.dcm", "MR_small.dcm", "error"),
    ("MR_small_implicit.dcm", "MR_small.dcm", "error"), ("MR_small_expb.dcm", "MR_small.dcm", "error"),
    ("emri_small_RLE.dcm", "emri_small.dcm", "middle"), ("emri_small_jpeg_ls_lossless.dcm", "emri_small.dcm", "middle"),
    ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm", "first"), ("emri_small_big_endian.dcm", "emri_small.dcm",
                                                                      "middle"),
    ("693_J2KR.dcm", "693_UNCR.dcm", "error"), ("RG3_J2KR.dcm", "RG3_UNCR.dcm", "error"),
    ("US1_J2KR.dcm", "US1_UNCR.dcm", "error"), ("JPEG2000.dcm", "JPEG2000_UNC.dcm", "error"),
    ("SC_rgb_rle.dcm", "SC_rgb.dcm", "error"), ("SC_rgb_rle_16bit.dcm", "SC_rgb.dcm", "error"),
    ("OBXXXX1A_rle.dcm", "OBXXXX1A.dcm", "error"), ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb.dcm", "error")]


@pytest.mark.parametrize("encoded, twin, frame", TWINS)
def test_every_syntax_gives_its_twins_pixels(encoded, twin, frame):
    a, b = read(encoded, frame=frame), read(twin, frame=frame)
    assert a.shape == b.shape and a.dtype == np.uint8 and a.shape[2] == 3
    assert (a == b).all() and a.std() > 0


def test_file_window_is_the_standards_and_skips_nothing():
    ds, arr = dataset("MR_small.dcm")  # 16-bit signed MR, window 600/1600
    expect = linear(arr.astype(float), float(ds.WindowCenter), float(ds.WindowWidth))
    assert (read("MR_small.dcm")[..., 0] == expect).all()
    assert (read("MR_small.dcm", [[600, 1600]]) == read("MR_small.dcm")).all()  # config window == file's
    assert (read("MR_small.dcm", ["file"]) == read("MR_small.dcm")).all()
    ds, arr = dataset("examples_overlay.dcm")  # multi-valued: the first is the default
    assert list(ds.WindowCenter) == [450, 200]
    assert (read("examples_overlay.dcm")[..., 0] == linear(arr.astype(float), 450, 790)).all()


def test_rescale_and_named_windows_as_channels():
    ds, arr = dataset("CT_small.dcm")  # signed CT, RescaleIntercept -1024: Hounsfield units
    hu = arr * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    img = read("CT_small.dcm", ["brain", "subdural", "bone"])
    for ch, name in enumerate(["brain", "subdural", "bone"]):
        assert (img[..., ch] == linear(hu, *WINDOWS[name])).all(), name
    assert (img == read("CT_small.dcm", [[40, 80], [80, 200], [600, 2800]])).all()
    grey = read("CT_small.dcm", ["bone"])
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 0] == img[..., 2]).all()
    full = read("CT_small.dcm")[..., 0]  # no window in the file: the image's own range
    assert full.min() == 0 and full.max() == 255
    assert (full == np.rint((hu - hu.min()) * (255 / (hu.max() - hu.min())))).all()


def test_sigmoid_voi_lut_function(tmp_path):
    ds, arr = dataset("CT_small.dcm")
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 40, 400, "SIGMOID"
    ds.save_as(tmp_path / "sig.dcm")
    hu = arr * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expect = np.rint(255 / (1 + np.exp(-4 * (hu - 40) / 400))).astype(np.uint8)
    got = read_dicom(tmp_path / "sig.dcm")[..., 0]
    assert np.abs(got.astype(int) - expect).max() <= 1 and (got == expect).mean() > 0.99  # one float rounding


def test_voi_lut_sequence_and_modality_lut():
    ds, arr = dataset("vlut_04.dcm")  # a VOI LUT Sequence, 8-bit stored
    item = ds.VOILUTSequence[0]
    n, first = item.LUTDescriptor[0], item.LUTDescriptor[1]
    lut = np.asarray(item.LUTData, float)
    out = lut[np.clip(arr.astype(int) - first, 0, n - 1)]
    expect = np.rint((out - lut.min()) * (255 / (lut.max() - lut.min())))
    assert (read("vlut_04.dcm")[..., 0] == expect).all()
    ds, arr = dataset("mlut_18.dcm")  # a Modality LUT Sequence: the table applied once, then the full range
    mod = apply_modality_lut(arr, ds).astype(float)
    got = read("mlut_18.dcm")[..., 0]
    assert (got == np.rint((mod - mod.min()) * (255 / (mod.max() - mod.min())))).all()


def test_monochrome1_has_the_polarity_of_monochrome2(tmp_path):
    img = read("RG1_UNCR.dcm")[..., 0].astype(float)  # a PA chest CR stored MONOCHROME1
    h, w = img.shape
    spine, lungs = img[h // 3 : h // 2, w // 2 - 40 : w // 2 + 40], img[h // 3 : h // 2, w // 4 - 40 : w // 4 + 40]
    assert spine.mean() > lungs.mean() + 40  # bone bright, air-filled lungs dark
    ds, arr = dataset("RG3_UNCR.dcm")  # the same pixels stored the other way round read the same
    for k in ("WindowCenter", "WindowWidth"):
        del ds[k]
    ds.save_as(tmp_path / "m1.dcm")
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = (arr.max() - arr + arr.min()).astype(arr.dtype).tobytes()
    ds.save_as(tmp_path / "m2.dcm")
    a, b = read_dicom(tmp_path / "m1.dcm").astype(int), read_dicom(tmp_path / "m2.dcm").astype(int)
    assert np.abs(a - b).max() <= 1 and (a == b).mean() > 0.99  # rounding of exact halves only


def test_colour_files():
    us = read("US1_UNCR.dcm")  # RGB ultrasound: its bytes
    assert (us == dataset("US1_UNCR.dcm")[1]).all() and not (us[..., 0] == us[..., 2]).all()
    assert (read("SC_rgb_16bit.dcm") == read("SC_rgb.dcm")).all()  # 16-bit colour scaled by its depth
    ybr = read("SC_ybr_full_uncompressed.dcm").astype(int)  # YBR_FULL converted to RGB by pydicom
    assert np.abs(ybr - read("SC_rgb.dcm")).max() <= 8
    pal = read("OBXXXX1A.dcm")  # PALETTE COLOR through its LUT
    assert pal.shape == (600, 800, 3) and not (pal[..., 0] == pal[..., 2]).all()


def test_frames():
    with pytest.raises(ImageError, match="10 frames; set images.dicom_frame") as e:
        read("emri_small.dcm")
    assert e.value.kind == "unsupported" and "emri_small.dcm" in str(e.value)
    arr = pydicom.dcmread(path("emri_small.dcm")).pixel_array.astype(float)
    for frame, k in (("first", 0), ("middle", 5)):
        x = arr[k]
        expect = np.rint((x - x.min()) * (255 / (x.max() - x.min())))
        assert (read("emri_small.dcm", frame=frame)[..., 0] == expect).all(), frame


def test_unsupported_syntax_names_file_syntax_and_package(tmp_path, monkeypatch):
    import pydicom.pixels

    src = tmp_path / "a.dcm"
    shutil.copy(path("MR_small_jp2klossless.dcm"), src)
    monkeypatch.setattr(pydicom.pixels, "get_decoder",
                        lambda uid: types.SimpleNamespace(is_available=False, available_plugins=[]))
    with pytest.raises(ImageError) as e:
        read_image(src)
    assert e.value.kind == "unsupported"
    for needle in (str(src), "JPEG 2000 Image Compression (Lossless Only)", "pip install pylibjpeg-openjpeg"):
        assert needle in str(e.value)
    monkeypatch.undo()
    ds = pydicom.dcmread(path("MR_small_jp2klossless.dcm"))  # a video syntax: no decoder exists in pydicom
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    ds.save_as(tmp_path / "v.dcm")
    with pytest.raises(ImageError, match="MPEG2.*no installed decoder") as e:
        read_image(tmp_path / "v.dcm")
    assert e.value.kind == "unsupported"


def test_read_image_dispatch_and_bad_files(tmp_path):
    assert (read_image(path("CT_small.dcm")) == read("CT_small.dcm")).all()
    shutil.copy(path("RG1_J2KI.dcm"), tmp_path / "noext")  # a DICOM without extension: its DICM prefix
    assert read_image(tmp_path / "noext").shape == (1955, 1841, 3)
    (tmp_path / "page.dcm").write_text("<html>403 Forbidden</html>")
    with pytest.raises(ImageError) as e:
        read_image(tmp_path / "page.dcm")
    assert e.value.kind == "corrupt"
    with pytest.raises(ImageError) as e:
        read_image(path("MR_truncated.dcm"))
    assert e.value.kind == "truncated"


def test_window_settings_key_the_cache(tmp_path):
    cfg = lambda *o: load_config(ROOT / "configs" / "rsna_pneumonia.yaml", [f"data.root={tmp_path}", *o])  # noqa: E731
    assert cache_folder(cfg()) != cache_folder(cfg("images.dicom_windows=[brain,subdural,bone]"))
    assert cache_folder(cfg("images.dicom_windows=[brain,subdural,bone]")) == cache_folder(
        cfg("images.dicom_windows=[[40,80],[80,200],[600,2800]]"))
    assert cache_folder(cfg()) != cache_folder(cfg("images.dicom_frame=middle"))
    with pytest.raises(UserError, match=r"images.dicom_windows\[1\]': unknown window 'brian'"):
        cache_folder(cfg("images.dicom_windows=[brain,brian,bone]"))
    with pytest.raises(UserError, match="images.dicom_windows': 2 windows"):
        cfg("images.dicom_windows=[brain,bone]")


def test_repeated_ids_are_one_image_when_their_labels_agree(tmp_path):
    root = rsna_pneumonia(tmp_path / "rsna")
    labels = pd.read_csv(root / "stage_2_train_labels.csv", dtype=str)
    assert labels["patientId"].duplicated().any()  # as the real file: one row per box
    cfg = lambda *o: load_config(ROOT / "configs" / "rsna_pneumonia.yaml", [f"data.root={root}", *o])  # noqa: E731
    comp = load_competition(cfg())
    assert len(comp.train) == labels["patientId"].nunique() == 16 and comp.train["id"].is_unique
    truth = labels.drop_duplicates("patientId").set_index("patientId")["Target"].astype(int)
    assert (comp.train.set_index("id")["label"] == truth[comp.train["id"]].to_numpy()).all()
    with pytest.raises(UserError, match="appears more than once.*data.dedupe_ids"):
        load_competition(cfg("data.dedupe_ids=false"))
    sick = labels["patientId"][labels["patientId"].duplicated()].iloc[0]
    rows = labels.index[labels["patientId"] == sick]
    labels.loc[rows[-1], "Target"] = "0"
    labels.to_csv(root / "stage_2_train_labels.csv", index=False)
    with pytest.raises(UserError, match=f"id '{sick}' has different labels on its rows"):
        load_competition(cfg())


@pytest.mark.slow
def test_rsna_pneumonia_replica_prepare_fold_predict(tmp_path):
    """The shipped config on the replica (12-bit MONOCHROME1/2 CR, some windowed, some RLE): prepare
    caches every image, fold 0 trains, the submission holds P(Target=1) per patientId in the sample's order."""
    from comp.pipeline import prepare
    from comp.predict.submission import make_submission
    from comp.train.loop import fit

    root = rsna_pneumonia(tmp_path / "rsna")
    cfg = load_config(ROOT / "configs" / "rsna_pneumonia.yaml",
                      [*overrides(root, tmp_path / "runs", FAST), f"images.cache_dir={tmp_path / 'cache'}",
                       "predict.folds=[0]"])
    prepare(cfg, workers=1)
    assert len(list((tmp_path / "cache").rglob("*.dcm.npy"))) == 16 + 6
    assert np.isfinite(fit(cfg, 0)["best"])
    sub = make_submission(cfg).frame
    sample = pd.read_csv(root / "stage_2_sample_submission.csv", dtype=str)
    assert list(sub.columns) == ["patientId", "PredictionString"]
    assert list(sub["patientId"]) == list(sample["patientId"])
    assert sub["PredictionString"].astype(float).between(0, 1).all()


def test_the_reader_table_chooses_by_name_or_content_and_readers_import_no_other(tmp_path):
    import ast

    import cv2

    from comp.data import readers

    ct = tmp_path / "ct.png"  # a DICOM under an image's name: its DICM prefix decides, as for no extension
    shutil.copy(path("CT_small.dcm"), ct)
    cv2.imwrite(str(tmp_path / "x.png"), np.zeros((4, 4, 3), np.uint8))
    shutil.copy(tmp_path / "x.png", tmp_path / "png_noext")
    (tmp_path / "x.gif").write_bytes(b"GIF89a")
    (tmp_path / "page.dcm").write_text("<html>403 Forbidden</html>")
    chosen = {p: readers.reader_for(tmp_path / p).name for p in ("ct.png", "x.png", "png_noext", "x.gif", "page.dcm")}
    assert chosen == {"ct.png": "dicom", "x.png": "images", "png_noext": "images", "x.gif": "images",
                      "page.dcm": "dicom"}
    assert readers.FALLBACK.name == "images" and readers.HEAD >= 132
    assert (read_image(ct) == read("CT_small.dcm")).all()
    for reader in ("images", "dicom", "image_base"):  # the table imports the readers, never the other way
        tree = ast.parse((ROOT / "comp" / "data" / f"{reader}.py").read_text())
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not mods & {"comp.data.readers", "comp.data.images", "comp.data.dicom"} - {f"comp.data.{reader}"}, (
            reader, mods)
