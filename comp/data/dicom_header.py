"""The header of a DICOM file made to describe its pixels as a viewer reads them, before comp.data.dicom
decodes them: the faults real archives and Kaggle downloads carry (no preamble, no Transfer Syntax UID, pixel
module elements missing, odd or inconsistent with the data; an enhanced image's rescale and window kept in
its functional groups) are repaired with a note each, and what cannot be repaired is an `ImageError` naming
the file and the element. Values are read as the writers spelt them (`number`). The DICOM reader's helper:
imports comp.data.image_base only of the readers.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from comp.data.image_base import ImageError

COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420", "PALETTE COLOR")


def number(v: Any) -> float | None:
    """One DS/IS value as a float, however the writer formatted it: pydicom's DSfloat, or the string pydicom
    leaves when it cannot parse one (spaces or NULs around it, a decimal comma from a comma-decimal locale:
    '40,5'). None when empty, not a number or not finite (nan, 1e400)."""
    if isinstance(v, bytes):
        v = v.decode("latin-1")
    if isinstance(v, str):
        v = v.strip(" \x00")
        if re.fullmatch(r"[+-]?\d+,\d+", v):
            v = v.replace(",", ".")
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def said(ds: Any, keyword: str) -> str:
    """An element's value as a note quotes it: `missing`, or its value as the file spells it."""
    v = ds.get(keyword)
    return "missing" if v is None or v == "" else repr(str(v)) if isinstance(v, str) else str(v)


def shown(v: Any) -> str:
    """A value as a note quotes it: a string the writer left unparsed in quotes, a number as is."""
    return repr(str(v)) if isinstance(v, (str, bytes)) and not isinstance(v, float) else str(v)


def values_of(ds: Any, keyword: str) -> list[Any]:
    """The raw values of a (possibly multi-valued, possibly empty) element; [] when absent or empty."""
    v = ds[keyword].value if keyword in ds else None
    if v is None or v == "" or v == b"":
        return []
    return [v] if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__") else list(v)  # a MultiValue


def first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def repair_header(path: Path, ds: Any, notes: list[str]) -> int:
    """Make the header describe the pixels as a viewer reads them, before pydicom decodes them; returns the
    number of frames. Repaired, each with a note: no preamble/DICM prefix (PS3.10 7.1; pydicom reads the bare
    data set with force=True); no Transfer Syntax UID (the encoding pydicom read the data set in: implicit or
    explicit VR, little or big endian); no Samples per Pixel (1, or 3 for a colour Photometric
    Interpretation); no Photometric Interpretation (MONOCHROME2, or RGB for 3 samples), or one spelt in lower
    case or padded; no Bits Allocated (from Bits Stored, else from the Pixel Data's length); no Bits Stored,
    or more than Bits Allocated (Bits Allocated); no Pixel Representation (0, unsigned); a Number of Frames
    that is not a number (1); values that need more bits than Bits Stored says (pydicom would mask their high
    bits, scrambling the image; kept unless an overlay lives in those bits); Pixel Data with fewer than one
    frame of bytes past the end (trailing padding, PS3.5 8.1.1, ignored as pydicom does).

    Raises:
        ImageError: corrupt or truncated, naming the element: no or zero Rows/Columns, compressed Pixel Data
            without a Transfer Syntax UID, a Bits Allocated that cannot be inferred, or Pixel Data shorter
            than Rows x Columns x Samples x Bits Allocated x Number of Frames (or a frame or more longer).
    """
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if getattr(ds, "preamble", None) is None:
        notes.append("no 128-byte preamble and DICM prefix (PS3.10 7.1): read as a bare data set")
    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    pixels = ds["PixelData"] if "PixelData" in ds else None
    encapsulated = pixels is not None and pixels.is_undefined_length
    if ds.file_meta.get("TransferSyntaxUID") is None:
        if encapsulated:
            raise ImageError("corrupt", path, "no (0002,0010) Transfer Syntax UID and the (7FE0,0010) Pixel Data "
                                              "is compressed: its codec is unknown")
        implicit, little = ds.original_encoding
        uid = ImplicitVRLittleEndian if implicit is not False else (
            ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian)
        ds.file_meta.TransferSyntaxUID = uid
        notes.append(f"no (0002,0010) Transfer Syntax UID: {uid.name}, as the data set reads, assumed")
    for kw, tag in (("Rows", "(0028,0010)"), ("Columns", "(0028,0011)")):
        v = number(ds.get(kw))
        if not v or v < 1:
            raise ImageError("corrupt", path, f"{tag} {kw} is {said(ds, kw)}: the image has no size")
    pi = str(ds.get("PhotometricInterpretation") or "").strip().upper()
    spp = number(ds.get("SamplesPerPixel"))
    if spp not in (1, 3):
        spp = 3 if pi in COLOUR and pi != "PALETTE COLOR" else 1
        notes.append(f"(0028,0002) Samples per Pixel {said(ds, 'SamplesPerPixel')}: {spp} assumed")
        ds.SamplesPerPixel = spp
    if not pi:
        pi = "MONOCHROME2" if spp == 1 else "RGB"
        notes.append(f"no (0028,0004) Photometric Interpretation: {pi} assumed")
    elif pi != ds.PhotometricInterpretation:
        notes.append(f"(0028,0004) Photometric Interpretation {ds.PhotometricInterpretation!r} read as {pi!r}")
    ds.PhotometricInterpretation = pi
    n = 1
    if "NumberOfFrames" in ds:
        nf = number(ds.NumberOfFrames)
        if nf is None or nf < 1 or nf != int(nf):
            notes.append(f"(0028,0008) Number of Frames {said(ds, 'NumberOfFrames')}: 1 assumed")
            ds.NumberOfFrames = 1
        n = int(number(ds.NumberOfFrames) or 1)
    if pixels is None:  # Float / Double Float Pixel Data: pydicom checks them
        return n
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = rows * cols * int(spp) * n
    actual = len(pixels.value) if not encapsulated else 0
    ba = number(ds.get("BitsAllocated"))
    if ba not in (1, 8, 16, 32, 64):
        bs = number(ds.get("BitsStored"))
        if bs and 1 <= bs <= 64:
            ba = 1 if bs == 1 else next(b for b in (8, 16, 32, 64) if b >= bs)
        elif not encapsulated and actual in (samples * k + p for k in (1, 2, 4) for p in (0, 1)):
            ba = 8 * (actual // samples)
        else:
            raise ImageError("corrupt", path, f"(0028,0100) Bits Allocated is {said(ds, 'BitsAllocated')} and "
                                              f"cannot be inferred")
        notes.append(f"(0028,0100) Bits Allocated {said(ds, 'BitsAllocated')}: {ba} assumed")
        ds.BitsAllocated = int(ba)
    ba = int(ba)
    bs = number(ds.get("BitsStored"))
    if bs is None or not 1 <= bs <= ba:
        notes.append(f"(0028,0101) Bits Stored {said(ds, 'BitsStored')}: {ba} (Bits Allocated) assumed")
        ds.BitsStored, ds.HighBit = ba, ba - 1
    if number(ds.get("PixelRepresentation")) not in (0, 1):
        notes.append(f"(0028,0103) Pixel Representation {said(ds, 'PixelRepresentation')}: 0 (unsigned) assumed")
        ds.PixelRepresentation = 0
    if encapsulated or pi == "YBR_FULL_422":  # the codec knows its length; 422 is pydicom's to check
        return n
    expected = (samples * ba + 7) // 8
    frame = (rows * cols * int(spp) * ba + 7) // 8
    geometry = (f"(7FE0,0010) Pixel Data holds {actual} bytes; Rows {rows} x Columns {cols} x Samples per Pixel "
                f"{int(spp)} x Bits Allocated {ba} x Number of Frames {n} need {expected}")
    if actual < expected:
        raise ImageError("truncated", path, geometry)
    if actual - expected >= max(frame, 2):
        raise ImageError("corrupt", path, f"{geometry}: a frame or more left over, so Rows, Columns or Number of "
                                          f"Frames is wrong")
    if actual > expected + expected % 2:
        notes.append(f"{geometry}: {actual - expected} trailing bytes ignored")
    _bits_used(ds, pixels.value[:expected], ba, notes)
    return n


def _bits_used(ds: Any, raw: bytes, ba: int, notes: list[str]) -> None:
    """Raise Bits Stored to the bits the stored values of native unsigned Pixel Data use, when it says
    fewer: pydicom masks the bits above Bits Stored, which wraps every larger value around (a bright area
    turns dark). Left alone when an overlay lives in those bits (60xx,0102 Overlay Bits Position, a retired
    layout where masking is right), and for signed data, whose bits above Bits Stored need not repeat the
    sign (pydicom sign-extends from bit Bits Stored - 1, as PS3.5 8.1.1 reads; pydicom's mlut_18.dcm)."""
    bs = int(ds.BitsStored)
    if ba not in (8, 16, 32) or bs >= ba or int(ds.PixelRepresentation) != 0:
        return
    if any(0x6000 <= t.group <= 0x601E and t.element == 0x0102 for t in ds.keys()):
        return
    big = ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2"
    v = np.frombuffer(raw, np.dtype(f"{'>' if big else '<'}u{ba // 8}"))
    need = int(v.max()).bit_length() if v.size else 0
    if need > bs:
        notes.append(f"(0028,0101) Bits Stored {bs}, but the stored values reach {int(v.max())}, which needs "
                     f"{need} bits: {need} used")
        ds.BitsStored, ds.HighBit = need, need - 1


# Where an enhanced (multi-frame) image keeps what a classic one has at the top level (PS3.3 C.7.6.16):
# functional group sequence -> the elements of its item the grey stage reads
FRAME_GROUPS = {"PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
                "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence")}


def frame_header(ds: Any, index: int) -> None:
    """Bring the chosen frame's Pixel Value Transformation and Frame VOI LUT (its Per-frame Functional
    Group, else the Shared one) to the top level, where pydicom's apply_modality_lut and apply_windowing
    look: an enhanced CT keeps its Hounsfield rescale and window only there (pydicom's eCT_Supplemental)."""
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    groups = [g for g in (per[index] if index < len(per) else None,
                          (ds.get("SharedFunctionalGroupsSequence") or [None])[0]) if g is not None]
    for seq, keywords in FRAME_GROUPS.items():
        item = next((g[seq][0] for g in groups if g.get(seq)), None)
        for kw in keywords if item is not None else ():
            if kw in item:
                ds[kw] = item[kw]
