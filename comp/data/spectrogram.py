"""The reader of spectrogram parquet files (HMS 2024, Harmful Brain Activity Classification): one labelled
window of a recording as a grey image, through the same cache, augmentations and loaders as any image.

A row reads a window of a file through a virtual path `<file>.parquet#<offset>` (comp.data.image_base.
split_window; the labels CSV's data.offset_column, data.file_column naming the file): the `WINDOW`
seconds (600, the 10-minute window HMS's experts saw) from `offset` on, by the file's `time` column.

The file: a `time` column (seconds, a row every 2 s) and, per chain of the banana montage (LL, RL, LP, RP),
one column per frequency named `<chain>_<Hz>` (HMS: 100 each, 0.59..19.92 Hz). The image: the chains
stacked top to bottom, each with its frequencies in the file's column order down its rows, time left to
right: (4 x 100, 300) for HMS, grey, as (H, W, 3) uint8.

Values (power) become grey levels as the public baselines make them: log(clip(x, e^-4, e^8)) (Chris
Deotte, "EfficientNetB0 Starter - [LB 0.43]", kaggle.com/code/cdeotte/efficientnetb0-starter-lb-0-43, the
starter most HMS solutions began from), then normalised by the clip range, -4..8 to 0..255 (one grey level
= 0.047 in log power, the same in every recording; the kit's input normalisation, images.mean/std, does the
rest, where the starter standardised each image). NaN values (HMS files have NaN stretches: a chain
without signal, the first minutes of some recordings) are filled with the window's mean log power, as
the starter's `nan_to_num` after its standardisation does; a window with no finite value at all is filled
with the floor (e^-4, no power) with a warning naming the file.

Bad input, as `ImageError` naming the file (and the window): a file that does not end with parquet's
PAR1 footer magic is `truncated`; one without a `time` column or the four chains, `corrupt`; a window
that runs past the recording's last row (by more than one time step) is `unsupported`, with the
recording's end, so prepare lists every such row (data.exclude leaves them out).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from comp.data.image_base import ImageError, read_parquet, repaired, stretch

SUFFIXES = (".parquet",)
MAGIC = ((0, b"PAR1"),)  # parquet files start and end with it
CHAINS = ("LL", "RL", "LP", "RP")  # the banana montage's four chains, top to bottom in the image
WINDOW = 600.0  # seconds of a window: HMS's experts labelled the central 50 s of a 10-minute spectrogram
LOG_RANGE = (-4.0, 8.0)  # log(clip(x, e^-4, e^8)): the starter's clip (module docstring)


def chain_columns(names: list[str], path: Path) -> list[str]:
    """The spectrogram's value columns in image order: each chain of CHAINS, its `<chain>_<Hz>` columns in
    the file's order.

    Raises:
        ImageError: a chain is missing, or the chains have different numbers of frequencies."""
    per = [[n for n in names if n.startswith(f"{c}_")] for c in CHAINS]
    missing = [c for c, cols in zip(CHAINS, per, strict=True) if not cols]
    if missing:
        raise ImageError("corrupt", path, f"no columns of chain(s) {missing} (named like LL_0.59)")
    if len({len(cols) for cols in per}) > 1:
        raise ImageError("corrupt", path, f"chains with different numbers of frequencies "
                                          f"{dict(zip(CHAINS, map(len, per), strict=True))}")
    return [n for cols in per for n in cols]


def spectrogram_window(path: Path, offset: float) -> np.ndarray:
    """The log power of the WINDOW seconds from `offset` (seconds, by the `time` column) of a spectrogram
    parquet, NaN filled (module docstring): (chains x frequencies, time steps) float32, in -4..8.

    Raises:
        ImageError: truncated, not parquet, no `time` column or chains, or a window past the recording's end.
    """
    table = read_parquet(path)
    names = table.column_names
    if "time" not in names:
        raise ImageError("corrupt", path, "no 'time' column")
    cols = chain_columns(names, path)
    time = table.column("time").to_numpy(zero_copy_only=False).astype(np.float64)
    where = f"{path}#{offset:g}"
    if not len(time):
        raise ImageError("corrupt", path, "no rows")
    step = float(np.median(np.diff(time))) if len(time) > 1 else 0.0
    # each row is the centre of its step (HMS: 1, 3, 5, ... s): the recording covers half a step either side
    start, end = float(time.min()) - step / 2, float(time.max()) + step / 2
    if offset < 0 or offset + WINDOW > end + step:  # one step of slack: a window one row short still reads
        raise ImageError("unsupported", Path(where), f"the {WINDOW:g} s window from {offset:g} s runs past the "
                         f"recording, which covers {start:g}..{end:g} s; leave the row out with data.exclude")
    rows = np.flatnonzero((time >= offset) & (time < offset + WINDOW))
    values = np.stack([table.column(c).to_numpy(zero_copy_only=False)[rows] for c in cols]).astype(np.float32)
    lo, hi = LOG_RANGE
    logp = np.log(np.clip(values, np.exp(lo), np.exp(hi)))  # NaN stays NaN: np.clip keeps it
    bad = np.isnan(logp)
    if bad.any():
        if bad.all():
            logp[:] = lo
            repaired(Path(where), ["every value NaN: filled with the floor e^-4"])
        else:
            logp[bad] = logp[~bad].mean()
    return logp


def read_spectrogram(path: Path, offset: float | None) -> np.ndarray:
    """The window of a spectrogram parquet from `offset` seconds (None: 0, the file's start) as a grey
    (H, W, 3) uint8 image: -4..8 log power to 0..255 (module docstring).

    Raises:
        ImageError: as spectrogram_window."""
    logp = spectrogram_window(Path(path), 0.0 if offset is None else float(offset))
    grey = stretch(logp, *LOG_RANGE)
    return np.repeat(grey[:, :, None], 3, axis=2)
