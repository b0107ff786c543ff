"""The reader of raw EEG parquet files (HMS 2024's train_eegs/ and test_eegs/): a labelled 50-second window
made into a spectrogram image of the banana (double banana) bipolar montage, read like the spectrogram
parquet (comp.data.spectrogram) through the same virtual path `<file>.parquet#<offset>`.

The file: one column per electrode of the 10-20 system (Fp1, F3, C3, P3, F7, T3, T5, O1, Fz, Cz, Pz, Fp2, F4,
C4, P4, F8, T4, T6, O2, plus EKG), a row per sample at 200 Hz, no time column. The image, after Chris
Deotte's "How To Make Spectrogram from EEG" (kaggle.com/code/cdeotte/how-to-make-spectrogram-from-eeg): for
each chain (LL, RL, LP, RP, top to bottom as in the competition's spectrograms) the four bipolar pairs'
differences (Fp1-F7, F7-T3, T3-T5, T5-O1 for LL, ...), a NaN sample filled with its electrode's window mean
(his `nan_to_num(x, nan=nanmean(x))`; an electrode with no finite sample is 0), each pair's short-time
power spectrum (scipy.signal.spectrogram: 128-sample Hann windows, 0.64 s, zero-padded to 1024 so the bins
fall 0.195 Hz apart, as the competition's spectrogram columns do; hops of 39 samples, ~254 frames over
50 s), its bins 0.59..19.92 Hz (100, the competition's), log(clip(P, e^-4, e^8)) as for the spectrograms,
and the mean of the four pairs (his mean over a chain's pairs, there of the dB images). The chains stacked:
(400, ~254) grey, -4..8 mapped to 0..255 (comp.data.spectrogram.LOG_RANGE's scale, the same arithmetic).
He used librosa's mel scale (128 mels, 0-20 Hz); a linear STFT keeps the competition spectrograms' bins.

Bad input as `ImageError`: a file cut short (no PAR1 footer) `truncated`; a missing electrode of the montage
`corrupt`; a window past the recording's end `unsupported`, naming `<file>#<offset>` and its length.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from comp.data.image_base import ImageError, read_parquet, stretch

RATE = 200  # Hz, HMS's EEGs
WINDOW = 50.0  # seconds: the labelled window
MONTAGE = {  # the banana montage's chains, each four bipolar pairs (anode, cathode)
    "LL": (("Fp1", "F7"), ("F7", "T3"), ("T3", "T5"), ("T5", "O1")),
    "RL": (("Fp2", "F8"), ("F8", "T4"), ("T4", "T6"), ("T6", "O2")),
    "LP": (("Fp1", "F3"), ("F3", "C3"), ("C3", "P3"), ("P3", "O1")),
    "RP": (("Fp2", "F4"), ("F4", "C4"), ("C4", "P4"), ("P4", "O2")),
}
ELECTRODES = tuple(dict.fromkeys(e for pairs in MONTAGE.values() for pair in pairs for e in pair))
NPERSEG, NFFT, HOP = 128, 1024, 39  # samples: 0.64 s windows, 0.195 Hz bins, ~254 frames over 50 s
BAND = (0.5, 20.0)  # Hz: the bins kept, 0.59..19.92 as in the competition's spectrograms
LOG_RANGE = (-4.0, 8.0)  # log(clip(P, e^-4, e^8)), as comp.data.spectrogram


def is_eeg(names: list[str]) -> bool:
    """Whether a parquet's columns are an EEG recording (electrodes of the montage, no `time` column) rather
    than a spectrogram; eeg_window then names any electrode missing."""
    return "time" not in names and bool(set(ELECTRODES) & set(names))


def eeg_window(path: Path, offset: float) -> np.ndarray:
    """The montage spectrogram of the WINDOW seconds from `offset` of an EEG parquet (module docstring):
    (4 chains x 100 frequencies, frames) float32 log power in -4..8.

    Raises:
        ImageError: truncated, not parquet, an electrode missing, or a window past the recording's end."""
    from scipy.signal import spectrogram

    table = read_parquet(path)
    missing = [e for e in ELECTRODES if e not in table.column_names]
    if missing:
        raise ImageError("corrupt", path, f"no column(s) {missing} of the banana montage")
    n, start = table.num_rows, int(round(offset * RATE))
    stop = start + int(WINDOW * RATE)
    if offset < 0 or stop > n:
        raise ImageError("unsupported", Path(f"{path}#{offset:g}"), f"the {WINDOW:g} s window from {offset:g} s "
                         f"runs past the recording ({n / RATE:g} s at {RATE} Hz); leave the row out with data.exclude")
    x = {}
    for e in ELECTRODES:  # (stop - start,) float64 per electrode, NaN filled with its window mean
        v = table.column(e).to_numpy(zero_copy_only=False)[start:stop].astype(np.float64)
        bad = ~np.isfinite(v)
        v[bad] = v[~bad].mean() if (~bad).any() else 0.0
        x[e] = v
    chains = []
    for pairs in MONTAGE.values():
        logs = []
        for a, b in pairs:
            f, _, power = spectrogram(x[a] - x[b], fs=RATE, window="hann", nperseg=NPERSEG,
                                      noverlap=NPERSEG - HOP, nfft=NFFT)  # (F, frames) µV²/Hz
            keep = (f >= BAND[0]) & (f <= BAND[1])
            logs.append(np.log(np.clip(power[keep], np.exp(LOG_RANGE[0]), np.exp(LOG_RANGE[1]))))
        chains.append(np.mean(logs, axis=0))
    return np.concatenate(chains).astype(np.float32)


def read_eeg(path: Path, offset: float | None) -> np.ndarray:
    """The montage spectrogram of an EEG parquet's window from `offset` seconds (None: 0) as a grey
    (H, W, 3) uint8 image, -4..8 log power to 0..255.

    Raises:
        ImageError: as eeg_window."""
    grey = stretch(eeg_window(Path(path), 0.0 if offset is None else float(offset)), *LOG_RANGE)
    return np.repeat(grey[:, :, None], 3, axis=2)
