"""comp.data.eeg: a labelled 50 s window of an HMS 2024 EEG parquet (`<file>#<offset>`) made into the banana
montage's spectrogram image through the reader table: the rhythm lands in the chains and the frequency row it
belongs to, NaN samples filled, and the bad inputs (a truncated parquet, a missing electrode, a window past
the recording's end). The competition read through train_eegs/ with data.file_column=eeg_id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ROOT
from replicas import HMS_ELECTRODES, hms2024

from comp.data.competition import load_competition
from comp.data.eeg import RATE, eeg_window
from comp.data.image_base import ImageError, window_path
from comp.data.readers import read_image
from comp.experiment import load_config

EEG_KEYS = ["data.file_column=eeg_id", "data.offset_column=eeg_label_offset_seconds",
            "data.train_images=[train_eegs]", "data.test_images=[test_eegs]"]


def write(path: Path, seconds: float, hz: float = 5.0, on: tuple[str, ...] = ("T3",), nan: str = "") -> Path:
    """An EEG parquet: quiet noise on every electrode, a 100 µV `hz` sine on the electrodes `on`, `nan`'s
    first second NaN."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * RATE)) / RATE
    cols = {e: (rng.normal(0, 1, len(t)) + (100 * np.sin(2 * np.pi * hz * t) if e in on else 0)).astype(np.float32)
            for e in HMS_ELECTRODES}
    if nan:
        cols[nan][:RATE] = np.nan
    pq.write_table(pa.table(cols), path)
    return path


def test_a_focal_rhythm_lands_in_its_chain_and_frequency(tmp_path):
    """A 5 Hz rhythm on T3: the LL chain (F7-T3, T3-T5) shows it at the 5 Hz row, RL / LP / RP do not."""
    logp = eeg_window(write(tmp_path / "e.parquet", 60, on=("T3",)), 5.0)
    assert logp.shape[0] == 400 and 250 <= logp.shape[1] <= 256 and np.isfinite(logp).all()
    freqs = np.arange(3, 103) * RATE / 1024  # the rows' frequencies: 0.59..19.92 Hz
    row = int(np.argmin(abs(freqs - 5.0)))
    chains = logp.reshape(4, 100, -1).mean(2)  # (chain, frequency)
    assert abs(int(chains[0].argmax()) - row) <= 1  # LL peaks at 5 Hz (within a 0.195 Hz bin: zero-padded)
    assert chains[0, row] > chains[1:, row].max() + 3  # far above RL, LP, RP (log units)


def test_nan_samples_are_filled_and_the_image_is_grey(tmp_path):
    img = read_image(window_path(str(write(tmp_path / "n.parquet", 50, nan="F7")), 0))
    assert img.shape[0] == 400 and img.dtype == np.uint8
    assert (img[..., 0] == img[..., 2]).all() and len(np.unique(img)) > 10


@pytest.mark.parametrize("case,kind,needle", [
    ("truncated", "truncated", "no parquet footer"),
    ("no_electrode", "corrupt", "no column(s) ['O2']"),
    ("past_end", "unsupported", "e.parquet#20 (the 50 s window from 20 s runs past the recording (60 s at 200 Hz)"),
])
def test_bad_eeg_files_raise_one_image_error(tmp_path, case, kind, needle):
    f = write(tmp_path / "e.parquet", 60)
    offset = 20.0 if case == "past_end" else 0.0
    if case == "truncated":
        f.write_bytes(f.read_bytes()[:-100])
    elif case == "no_electrode":
        pq.write_table(pq.read_table(f).drop(["O2"]), f)
    with pytest.raises(ImageError) as e:
        read_image(window_path(str(f), offset))
    assert e.value.kind == kind and needle in str(e.value), str(e.value)


def test_the_competition_from_its_eegs(tmp_path):
    """hms2024.yaml pointed at train_eegs/ (the eeg_id names the file, the window starts at
    eeg_label_offset_seconds): every row's window reads, the test's from 0, and windows differ."""
    root = hms2024(tmp_path / "hms", eegs=True)
    cfg = load_config(ROOT / "configs" / "hms2024.yaml", [f"data.root={root}", *EEG_KEYS])
    comp = load_competition(cfg)
    assert all("/train_eegs/" in p for p in comp.train["path"]) and len(comp.test) == 4
    imgs = [read_image(p) for p in [*comp.train["path"][:3], *comp.test["path"][:1]]]
    assert all(i.shape[0] == 400 for i in imgs) and len({i.tobytes() for i in imgs}) == 4
