"""The reader of NIfTI volumes (`.nii`, `.nii.gz`; NIfTI-1 and NIfTI-2 single files) through nibabel, for
external data shipped that way beside a competition's DICOM: one axial slice of a volume as an image.

A row reads one slice through the virtual path `<file>.nii.gz#<k>` (comp.data.image_base.window_path, as a
recording's window; the labels CSV's data.offset_column gives k, data.file_column the volume): for this
reader the number after `#` is a slice index, not seconds. A 2D file, or a volume with one axial slice, is
the image without `#`; any other 3D volume without a slice is refused naming its shape, and a 4D one (time
series, several volumes: a trailing axis of 1 is dropped, nibabel's squeeze_image) naming its dimensions.

Orientation: the volume is reoriented to RAS+ (nibabel.as_closest_canonical: its voxel axes go to the
patient's Right, Anterior, Superior; nibabel's "Coordinate systems and affines",
https://nipy.org/nibabel/coordinate_systems.html), so k counts axial slices from the feet up (k = 0 is the
most inferior), whatever the file's storage order. Only that slice is read (nibabel's `slicer` on the
file's axis that becomes Superior), then reoriented. The slice is shown in the radiological convention
(https://nipy.org/nibabel/neuro_radio_conventions.html): viewed from the feet, the patient's right on the
image's left and anterior at the top, as axial CT and MR DICOM slices display (their columns run to the
patient's left, rows to posterior), so one scan looks the same as DICOM or as NIfTI.

Values: nibabel applies the header's scl_slope / scl_inter (get_fdata), giving Hounsfield units for CT
stored so. Then, per channel of `images.dicom_windows` (the same key as DICOM: a CT window is a CT window
whatever the file): a [center, width] or a named window with DICOM's LINEAR function (comp.data.dicom's,
passed in by comp.data.readers); `file` or none: the slice's own range, min to max (NIfTI has no window of
its own that files fill reliably; cal_min/cal_max are mostly 0). Then 0..255 grey, repeated to RGB. NaN or
infinite voxels are filled with the slice's lowest finite value, with a warning naming the file
(comp.data.image_base.repaired).

Bad input, as `ImageError` naming the file: a cut `.nii.gz` (its gzip stream ends early) or `.nii` (less
data than its header says) is `truncated`; a file nibabel cannot read is `corrupt`; a missing slice, a
slice index that is not a whole number or past the volume, or a 4D volume is `unsupported`.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from comp.data.image_base import ImageError, repaired, stretch

SUFFIXES = (".nii", ".nii.gz")
# NIfTI-1 single file: "n+1\0" at byte 344; NIfTI-2: "n+2\0" at byte 4 (after its sizeof_hdr, 540). A gzip
# file is claimed by its suffix only: its magic (1f 8b) says nothing of what it holds.
MAGIC = ((344, b"n+1\x00"), (4, b"n+2\x00"))
Window = Callable[[np.ndarray, float, float], np.ndarray]  # (values, center, width) -> uint8, DICOM's LINEAR


def _load(path: Path):
    """The nibabel image of `path` (lazy: its data stays in the file). A file claimed by its magic without a
    NIfTI suffix is read from its bytes (nibabel's load goes by the name)."""
    import nibabel as nib

    if path.name.lower().endswith(SUFFIXES):
        return nib.load(path)
    data = path.read_bytes()
    cls = nib.Nifti2Image if data[4:8] == b"n+2\x00" else nib.Nifti1Image
    return cls.from_bytes(data)


def _failure(path: Path, e: Exception) -> ImageError:
    """The ImageError of a file nibabel failed on: `truncated` when its gzip stream ends early or the file is
    shorter than its header says, else `corrupt`, with nibabel's first line."""
    msg = (str(e).splitlines() or [type(e).__name__])[0]
    if path.name.lower().endswith(".gz"):
        try:
            with gzip.open(path) as f:
                while f.read(1 << 20):
                    pass
        except EOFError:
            return ImageError("truncated", path, "its gzip stream ends early")
        except (OSError, zlib.error) as g:
            return ImageError("corrupt", path, f"not a readable gzip file: {g}")
    else:  # a plain file: shorter than its header's data offset plus shape x data type says
        try:
            hdr = _load(path).header
            want = int(hdr.get_data_offset()) + int(np.prod(hdr.get_data_shape())) * hdr.get_data_dtype().itemsize
            size = path.stat().st_size
        except Exception:  # noqa: BLE001 (no readable header: corrupt, below)
            want = size = 0
        if size < want:
            return ImageError("truncated", path, f"{size} bytes where its header needs {want}")
    return ImageError("corrupt", path, f"not a readable NIfTI file: {msg}")


def axial_slice(path: str | Path, index: float | None) -> np.ndarray:
    """Axial slice `index` (from the feet up, after reorientation to RAS+) of the NIfTI file `path`, scaled by
    scl_slope / scl_inter: (H, W) float64 in the radiological display (module docstring): rows anterior to
    posterior, columns from the patient's right to left. `index` None: the file must hold one axial slice.

    Raises:
        ImageError: truncated, corrupt; unsupported: no index for a volume of several slices (its shape and
            the `#<slice>` form named), an index not a whole number or out of range, 4 or more dimensions.
    """
    import nibabel as nib

    path = Path(path)
    try:
        img = nib.squeeze_image(_load(path))
        shape = tuple(int(n) for n in img.shape)
        if len(shape) > 3:
            raise ImageError("unsupported", path, f"a {len(shape)}D volume of shape {shape}; only 2D images and 3D "
                                                  f"volumes are read (one volume of a series: extract it first)")
        if len(shape) == 2:  # a 2D image: one axial slice of a volume
            img = nib.Nifti1Image(np.asanyarray(img.dataobj)[:, :, None], img.affine)
            shape = (*shape, 1)
        # the file's axis that becomes Superior, and whether it runs the other way (nibabel.io_orientation)
        ornt = nib.io_orientation(img.affine)
        axis = int(np.flatnonzero(ornt[:, 0] == 2)[0])
        n = shape[axis]
        if index is None:
            if n != 1:
                raise ImageError("unsupported", path, f"a 3D volume of shape {shape} ({n} axial slices): name one "
                                                      f"as `{path.name}#<slice>`, 0..{n - 1} from the feet "
                                                      f"(data.offset_column)")
            index = 0
        if index != int(index) or not 0 <= index < n:
            raise ImageError("unsupported", Path(f"{path}#{index:g}"), f"slice {index:g} of a volume of shape "
                                                                      f"{shape}: slices are 0..{n - 1}")
        k = int(index) if ornt[axis, 1] > 0 else n - 1 - int(index)
        part = tuple(slice(k, k + 1) if a == axis else slice(None) for a in range(3))
        canon = nib.as_closest_canonical(img.slicer[part])  # (X: right, Y: anterior, 1)
        plane = canon.get_fdata()[:, :, 0]
    except ImageError:
        raise
    except Exception as e:  # nibabel raises ImageFileError, OSError, EOFError, zlib.error, ValueError...
        raise _failure(path, e) from None
    return np.ascontiguousarray(plane[::-1, ::-1].T)  # rows anterior -> posterior, columns right -> left


def read_nifti(path: str | Path, index: float | None, windows: Sequence[tuple[float, float] | None] = (),
               window: Window | None = None) -> np.ndarray:
    """Axial slice `index` of a NIfTI file (axial_slice) as (H, W, 3) uint8 RGB: each of `windows` (images.
    dicom_windows: (center, width) through `window`, DICOM's LINEAR; None: the slice's min to max) one channel,
    1 window repeated to 3; NaN and infinite voxels filled with the lowest finite value, with a warning.

    Raises:
        ImageError: as axial_slice."""
    path = Path(path)
    plane = axial_slice(path, index)
    ok = np.isfinite(plane)
    if not ok.all():
        fill = float(plane[ok].min()) if ok.any() else 0.0
        where = path if index is None else Path(f"{path}#{index:g}")
        repaired(where, [f"{int((~ok).sum())} voxel(s) NaN or infinite: filled with the slice's lowest value {fill:g}"])
        plane = np.where(ok, plane, fill)
    chans = []
    for w in windows or (None,):
        if w is None or window is None:
            chans.append(stretch(plane, float(plane.min()), float(plane.max())))
        else:
            chans.append(window(plane, *w))
    if len(chans) == 1:
        chans *= 3
    return np.stack(chans, axis=2)
