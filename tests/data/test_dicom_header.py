"""comp.data.dicom_header and the VOI fallbacks of comp.data.dicom, on faulty variants of pydicom's real files
made in tmp_path (headers edited with pydicom, saved): every fault a viewer reads past decodes to the
pixels the repaired header gives, with one warning line naming the file and the element; every other is
one ImageError naming the file and the element; nothing escapes as another exception. Then a competition
with one DICOM of Window Width 0 through scripts/prepare.py (issue 26 item 4; pydicom#1073, fo-dicom#161
and #1999)."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable

import numpy as np
import pydicom
import pytest
from helpers import FAST, ROOT, run_main
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from replicas import overrides, rsna_pneumonia

from comp.data.dicom import WINDOWS, options, read_dicom
from comp.data.image_base import ImageError
from comp.data.readers import read_image


def source(name: str) -> pydicom.Dataset:
    p = get_testdata_file(name, download=False)
    assert p is not None, f"{name}: pydicom-data is not installed (pip install -e '.[dev]')"
    return pydicom.dcmread(p)


def linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 written out, to 0..255."""
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0.0, np.where(x > c - 0.5 + (w - 1) / 2, 1.0,
                                                           (x - (c - 0.5)) / (w - 1) + 0.5))
    return np.rint(y * 255).astype(np.uint8)


def full(x: np.ndarray) -> np.ndarray:
    x = x.astype(float)
    return np.rint((x - x.min()) * (255 / (x.max() - x.min()))).astype(np.uint8)


def raw(ds: pydicom.Dataset, keyword: str, text: bytes) -> None:
    """Store `text` as the element's bytes, as a writer spelt it (pydicom would refuse to set it)."""
    tag = Tag(pydicom.datadict.tag_for_keyword(keyword))
    text += b" " * (len(text) % 2)
    ds[tag] = RawDataElement(tag, pydicom.datadict.dictionary_VR(tag), len(text), text, 0, False, True)


CT = source("CT_small.dcm")  # signed 16-bit CT, Rescale -1024, no window
HU = CT.pixel_array * 1.0 - 1024
MR = source("MR_small.dcm")  # signed 16-bit MR, window 600/1600, no rescale


def edit(**values) -> Callable[[pydicom.Dataset], None]:
    return lambda ds: [setattr(ds, k, v) for k, v in values.items()]


def drop(*keywords: str) -> Callable[[pydicom.Dataset], None]:
    return lambda ds: [delattr(ds, k) for k in keywords]


def windows_as_text(ds: pydicom.Dataset) -> None:
    raw(ds, "WindowCenter", b" 40,5\\")  # a decimal comma, a trailing empty value
    raw(ds, "WindowWidth", b"+4.0E2 ")


def bits_understated(ds: pydicom.Dataset) -> None:  # values up to 2191 (12 bits) said to be 10-bit unsigned
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 0, 10, 9


def no_transfer_syntax(ds: pydicom.Dataset) -> None:
    del ds.file_meta.TransferSyntaxUID


def padded(ds: pydicom.Dataset) -> None:
    ds.PixelData = ds.PixelData + b"\0" * 6


def float_with_nan(ds: pydicom.Dataset) -> None:  # Float Pixel Data (parametric maps) with 5 nan
    a = ds.pixel_array.astype(np.float32)
    a[0, :5] = np.nan
    del ds.PixelData
    ds.FloatPixelData, ds.BitsAllocated = a.tobytes(), 32
    for k in ("BitsStored", "HighBit", "PixelRepresentation", "RescaleSlope", "RescaleIntercept"):
        delattr(ds, k)


def broken_voi_lut(ds: pydicom.Dataset) -> None:
    ds.VOILUTSequence[0].LUTDescriptor = [ds.VOILUTSequence[0].LUTDescriptor[0], 0, 9]  # 9 bits: refused


# (case, source, edit, windows, expected grey, notes the warning holds; None: no warning)
REPAIRED = [
    ("width 0", CT, edit(WindowCenter=40, WindowWidth=0), (), full(HU), ["Window Width 0.0 unusable",
                                                                         "full range used"]),
    ("width negative", CT, edit(WindowCenter=40, WindowWidth=-400), (), full(HU), ["Window Width -400.0 unusable"]),
    ("width 0 then a usable one", CT, edit(WindowCenter=[40, 40], WindowWidth=[0, 400]), (), linear(HU, 40, 400),
     ["window 1", "window 2 of 2 used"]),
    ("centers and widths of different lengths", CT, edit(WindowCenter=[40, 600], WindowWidth=[400]), (),
     linear(HU, 40, 400), ["Window Center has 2 value(s) and (0028,1051) Window Width 1"]),
    ("window written as odd text", CT, windows_as_text, (), linear(HU, 40.5, 400),
     ["(0028,1050) Window Center ' 40,5' read as 40.5"]),
    ("unknown VOI LUT Function", MR, edit(VOILUTFunction="LOG"), (), linear(MR.pixel_array * 1.0, 600, 1600),
     ["(0028,1056) VOI LUT Function 'LOG'", "LINEAR used"]),
    ("SIGMOID of width 0", MR, edit(VOILUTFunction="SIGMOID", WindowWidth=0), (), full(MR.pixel_array),
     ["Window Width 0.0 unusable"]),
    ("no Rescale Slope", CT, drop("RescaleSlope"), ["brain"], linear(HU, *WINDOWS["brain"]),
     ["(0028,1053) Rescale Slope missing: 1 used"]),
    ("no Rescale Intercept", CT, drop("RescaleIntercept"), ["brain"], linear(HU + 1024, *WINDOWS["brain"]),
     ["(0028,1052) Rescale Intercept missing: 0 used"]),
    ("Rescale Slope 0", CT, edit(RescaleSlope=0), ["bone"], linear(HU, *WINDOWS["bone"]),
     ["(0028,1053) Rescale Slope 0.0: 1 used"]),
    ("no Photometric Interpretation", CT, drop("PhotometricInterpretation"), (), full(HU),
     ["no (0028,0004) Photometric Interpretation: MONOCHROME2 assumed"]),
    ("MONOCHROME1 with a window: inverted after it", MR, edit(PhotometricInterpretation="MONOCHROME1"), (),
     255 - linear(MR.pixel_array * 1.0, 600, 1600), None),
    ("no Bits Stored", CT, drop("BitsStored"), (), full(HU), ["(0028,0101) Bits Stored missing: 16"]),
    ("no Bits Allocated", CT, drop("BitsAllocated"), (), full(HU), ["(0028,0100) Bits Allocated missing: 16"]),
    ("no Pixel Representation", CT, drop("PixelRepresentation"), (), full(HU),
     ["(0028,0103) Pixel Representation missing: 0"]),
    ("no Samples per Pixel", CT, drop("SamplesPerPixel"), (), full(HU), ["(0028,0002) Samples per Pixel missing: 1"]),
    ("Bits Stored fewer than the values use", CT, bits_understated, (), full(HU),
     ["(0028,0101) Bits Stored 10", "needs 12 bits"]),
    ("no Transfer Syntax UID", CT, no_transfer_syntax, (), full(HU),
     ["no (0002,0010) Transfer Syntax UID: Explicit VR Little Endian"]),
    ("trailing bytes after the pixels", CT, padded, (), full(HU), ["6 trailing bytes ignored"]),
    ("nan in Float Pixel Data", CT, float_with_nan, (), full(np.where(np.arange(HU.size).reshape(HU.shape) < 5,
                                                                     CT.pixel_array.min(), CT.pixel_array)),
     ["(7FE0,0008) Float Pixel Data: 5 values not finite"]),
]


@pytest.mark.parametrize("case, ds, fault, windows, expect, notes", REPAIRED, ids=[r[0] for r in REPAIRED])
def test_a_header_a_viewer_reads_past_decodes_with_a_warning(tmp_path, capsys, case, ds, fault, windows, expect,
                                                             notes):
    ds = copy.deepcopy(ds)
    fault(ds)
    path = tmp_path / "x.dcm"
    ds.save_as(path)
    img = read_dicom(path, options(windows))
    assert img.shape == (*expect.shape, 3) and img.dtype == np.uint8
    assert (img[..., 0] == expect).all(), case
    err = capsys.readouterr().err
    if notes is None:
        assert "warning" not in err, err
        return
    lines = [ln for ln in err.splitlines() if ln.startswith("warning: ")]
    assert len(lines) == 1 and f"image file {path} read with repairs" in lines[0], err
    for needle in notes:
        assert needle in lines[0], (needle, lines[0])
    read_dicom(path, options(windows))  # read again (a loader every epoch): said once
    assert "warning" not in capsys.readouterr().err


def test_a_narrow_window_after_a_tiny_rescale_slope_is_applied(tmp_path, capsys):
    """fo-dicom#1999: slope 1e-4 puts the values in 0.0128..0.2191; the window 0.1/0.05 (below 1, which
    pydicom's LINEAR refuses) is applied as LINEAR_EXACT, silently; so is a configured one."""
    ds = copy.deepcopy(CT)
    ds.RescaleSlope, ds.RescaleIntercept, ds.WindowCenter, ds.WindowWidth = 0.0001, 0, 0.1, 0.05
    ds.save_as(tmp_path / "rt.dcm")
    x = CT.pixel_array * 0.0001
    expect = np.rint(np.clip((x - 0.1) / 0.05 + 0.5, 0, 1) * 255).astype(np.uint8)
    img = read_dicom(tmp_path / "rt.dcm")[..., 0]
    assert np.abs(img.astype(int) - expect).max() <= 1 and (img == expect).mean() > 0.99 and img.std() > 0
    assert (read_dicom(tmp_path / "rt.dcm", options([[0.1, 0.05]]))[..., 0] == img).all()
    assert "warning" not in capsys.readouterr().err


def test_no_preamble_is_read_by_name_or_by_its_first_tag(tmp_path, capsys):
    ds = copy.deepcopy(CT)
    ds.preamble = None
    ds.save_as(tmp_path / "bare.dcm", enforce_file_format=False)
    assert (tmp_path / "bare.dcm").read_bytes()[:4] == b"\x02\x00\x00\x00"  # no preamble, no DICM
    shutil.copy(tmp_path / "bare.dcm", tmp_path / "IM0001")  # a viewer's export: no extension either
    for name in ("bare.dcm", "IM0001"):
        assert (read_image(tmp_path / name)[..., 0] == full(HU)).all(), name
        assert "no 128-byte preamble and DICM prefix" in capsys.readouterr().err


def test_an_enhanced_images_rescale_and_window_live_in_its_functional_groups():
    """eCT_Supplemental: Rescale -1024 and window 49/102 only in the Shared Functional Groups."""
    ds = source("eCT_Supplemental.dcm")
    hu = ds.pixel_array[1] * 1.0 - 1024
    assert (read_dicom(get_testdata_file("eCT_Supplemental.dcm"), options((), "middle"))[..., 0]
            == linear(hu, 49, 102)).all()
    assert (read_dicom(get_testdata_file("eCT_Supplemental.dcm"), options(["brain"], "first"))[..., 0]
            == linear(ds.pixel_array[0] * 1.0 - 1024, *WINDOWS["brain"])).all()
    dose = read_dicom(get_testdata_file("rtdose.dcm"), options((), "middle"))  # 32-bit, 15 frames
    assert dose.shape == (10, 10, 3) and dose.std() > 0


def broken_modality_lut(ds: pydicom.Dataset) -> None:
    ds.ModalityLUTSequence[0].LUTDescriptor = [*ds.ModalityLUTSequence[0].LUTDescriptor[:2], 9]  # no uint9


def short_rows(ds: pydicom.Dataset) -> None:
    ds.Rows = 60  # the data holds 128 rows: over a frame left over


def compressed_without_syntax(ds: pydicom.Dataset) -> None:
    del ds.file_meta.TransferSyntaxUID


# (case, source, edit, kind, needles of the one error line)
REFUSED = [
    ("Pixel Data shorter than Rows x Columns", "CT_small.dcm", edit(Rows=200), "truncated",
     ["(7FE0,0010) Pixel Data holds 32768 bytes", "Rows 200 x Columns 128"]),
    ("Pixel Data a frame longer", "CT_small.dcm", short_rows, "corrupt", ["(7FE0,0010) Pixel Data", "Rows 60"]),
    ("no Rows", "CT_small.dcm", drop("Rows"), "corrupt", ["(0028,0010) Rows is missing"]),
    ("compressed without a Transfer Syntax UID", "MR_small_RLE.dcm", compressed_without_syntax, "corrupt",
     ["no (0002,0010) Transfer Syntax UID", "compressed"]),
    ("a Modality LUT pydicom cannot apply", "mlut_18.dcm", broken_modality_lut, "corrupt",
     ["cannot be turned into grey levels"]),
    ("a VOI LUT of 9-bit entries and no window", "vlut_04.dcm", broken_voi_lut, None, ["(0028,3010) VOI LUT"]),
]


@pytest.mark.parametrize("case, name, fault, kind, needles", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_header_that_cannot_be_repaired_is_one_image_error_naming_file_and_element(tmp_path, capsys, case, name,
                                                                                    fault, kind, needles):
    ds = source(name)
    fault(ds)
    path = tmp_path / "x.dcm"
    ds.save_as(path)
    if kind is None:  # the next VOI source: the full range, with a warning
        img = read_dicom(path)
        assert (img[..., 0] == full(ds.pixel_array)).all()
        text = capsys.readouterr().err
    else:
        with pytest.raises(ImageError) as e:
            read_dicom(path)
        assert e.value.kind == kind and len(str(e.value).splitlines()) == 1
        text = str(e.value)
    for needle in [str(path), *needles]:
        assert needle in text, (needle, text)


def test_prepare_with_a_width_0_dicom_warns_and_goes_on(tmp_path):
    """The RSNA Pneumonia replica with one training DICOM of Window Width 0: prepare.py exits 0, caches every
    image and names the file in its warning (it ended as an internal error naming no file)."""
    root = rsna_pneumonia(tmp_path / "rsna")
    bad = sorted((root / "stage_2_train_images").glob("*.dcm"))[3]
    ds = pydicom.dcmread(bad)
    ds.WindowCenter, ds.WindowWidth = 2048, 0
    ds.save_as(bad)
    code, _, err = run_main("prepare.py", "--config", str(ROOT / "configs" / "rsna_pneumonia.yaml"),
                            *overrides(root, tmp_path / "runs", FAST), f"images.cache_dir={tmp_path / 'cache'}")
    assert code == 0, err[-2000:]
    assert "internal error" not in err and "Traceback" not in err
    assert any(ln.startswith("warning: ") and str(bad) in ln and "Window Width 0" in ln for ln in err.splitlines()), err
    assert len(list((tmp_path / "cache").rglob("*.dcm.npy"))) == 16 + 6
