"""comp.data.spectrogram: a labelled window of an HMS 2024 spectrogram parquet (`<file>#<offset>`) read as a grey
image through the reader table, the cache and prepare: the 600 s window by the `time` column, the four chains
stacked, log(clip(x, e^-4, e^8)) to 0..255, NaN filled with the window's mean; and the bad inputs (a
truncated parquet, a window past the recording's end, an offset on a plain image, a bad offset in the CSV).
The shipped config end to end: tests/data/test_task_configs.py (hms2024)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import FAST, ROOT, one_error, run_main
from replicas import HMS_FREQS, hms2024, overrides

from comp.data.cache import source_stamp
from comp.data.competition import load_competition
from comp.data.image_base import ImageError, split_window, window_path
from comp.data.readers import read_image
from comp.data.spectrogram import read_spectrogram, spectrogram_window
from comp.errors import UserError
from comp.experiment import load_config

CONFIG = str(ROOT / "configs" / "hms2024.yaml")


def write(path: Path, power: dict[str, np.ndarray], time: np.ndarray) -> Path:
    """A parquet of `time` and the given `<chain>_<Hz>` columns."""
    pq.write_table(pa.table({"time": time, **power}), path)
    return path


def ramp(path: Path, seconds: int = 800) -> Path:
    """Every chain's power = e^(time / 100) at each frequency, so the window's log power is time / 100,
    and each chain scaled apart (LL x1, RL x e, LP x e^2, RP x e^3) so their order in the image shows."""
    time = np.arange(1, seconds, 2, dtype=np.float64)
    cols = {f"{c}_{hz}": (np.exp(time / 100 + k)).astype(np.float32)
            for k, c in enumerate(("LL", "RL", "LP", "RP")) for hz in HMS_FREQS[:3]}
    return write(path, cols, time)


@pytest.fixture(scope="module")
def hms(tmp_path_factory) -> Path:
    return hms2024(tmp_path_factory.mktemp("hms") / "hms")


def test_window_by_time_column_log_scaled_chains_stacked(tmp_path):
    """The window from 100 s: the rows of time 101..699 (300), log power = time/100 + the chain's k, the
    chains top to bottom LL, RL, LP, RP; values outside e^-4..e^8 clipped."""
    f = ramp(tmp_path / "a.parquet")
    logp = spectrogram_window(f, 100.0)
    assert logp.shape == (4 * 3, 300)
    t = np.arange(101, 700, 2) / 100
    for k in range(4):
        np.testing.assert_allclose(logp[3 * k], np.minimum(t + k, 8.0), atol=1e-5)
    img = read_image(window_path(str(f), 100))
    assert img.shape == (12, 300, 3) and img.dtype == np.uint8
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()  # grey
    assert img[0, 0, 0] == round((1.01 + 4) * 255 / 12)  # log 1.01 on the -4..8 scale


def test_nan_filled_with_the_windows_mean_and_all_nan_with_the_floor(tmp_path, capsys):
    """HMS files hold NaN stretches: filled with the window's mean log power (the starter's nan_to_num after
    its standardisation); a window of NaN only gets the floor e^-4 and one warning naming it."""
    time = np.arange(1, 700, 2, dtype=np.float64)
    ones = np.full(len(time), np.e, np.float32)  # log power 1
    cols = {f"{c}_1.00": ones.copy() for c in ("LL", "RL", "LP", "RP")}
    cols["RP_1.00"] = np.full(len(time), np.e ** 3, np.float32)  # log power 3
    cols["RL_1.00"][:30] = np.nan
    logp = spectrogram_window(write(tmp_path / "nan.parquet", cols, time), 0.0)
    assert np.isfinite(logp).all()
    mean = (300 + 270 + 300 + 3 * 300) / (4 * 300 - 30)  # the finite values' mean
    np.testing.assert_allclose(logp[1, :30], mean, rtol=1e-5)
    allnan = {f"{c}_1.00": np.full(len(time), np.nan, np.float32) for c in ("LL", "RL", "LP", "RP")}
    img = read_spectrogram(write(tmp_path / "allnan.parquet", allnan, time), 0.0)
    assert (img == 0).all()
    assert "allnan.parquet#0 read with repairs: every value NaN" in capsys.readouterr().err


@pytest.mark.parametrize("case,kind,needle", [
    ("truncated", "truncated", "no parquet footer"),
    ("past_end", "unsupported", "runs past the recording, which covers 0..800 s"),
    ("no_chain", "corrupt", "no columns of chain(s) ['RP']"),
    ("no_time", "corrupt", "no 'time' column"),
])
def test_bad_files_raise_one_image_error_naming_the_file(tmp_path, case, kind, needle):
    f = ramp(tmp_path / "s.parquet")
    offset = 0.0
    if case == "truncated":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif case == "past_end":
        offset = 300.0  # 300..900 s of a recording that ends at 800 s
    elif case == "no_chain":
        t = pq.read_table(f)
        pq.write_table(t.select([c for c in t.column_names if not c.startswith("RP_")]), f)
    else:
        t = pq.read_table(f)
        pq.write_table(t.drop(["time"]), f)
    with pytest.raises(ImageError) as e:
        read_image(window_path(str(f), offset))
    assert e.value.kind == kind and needle in str(e.value) and str(f) in str(e.value)
    if case == "past_end":
        assert "s.parquet#300" in str(e.value)  # the row's window, not only the file


def test_window_paths_split_only_at_a_number_and_stamp_their_file(tmp_path):
    """`<file>#<offset>` splits at the last `#` followed by a number; `scan#2b.png` stays one file; the
    cache stamps a window by its file (comp.data.cache.source_stamp)."""
    assert window_path("a/b.parquet", 600.0) == "a/b.parquet#600"
    assert window_path("a/b.parquet", 12.5) == "a/b.parquet#12.5"
    assert split_window("a/b.parquet#12.5") == (Path("a/b.parquet"), 12.5)
    assert split_window("a/scan#2b.png") == (Path("a/scan#2b.png"), None)
    f = ramp(tmp_path / "r.parquet")
    assert source_stamp(window_path(str(f), 0)) == source_stamp(f) is not None


def test_an_offset_on_a_plain_image_is_refused(tmp_path):
    f = tmp_path / "x.png"
    cv2.imwrite(str(f), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ImageError, match=r"a window offset \(30 s\) on a images file; only recordings"):
        read_image(f"{f}#30")


def test_one_image_per_label_row_with_its_own_offset(hms):
    """data.id_column=label_id: every labelled window is its own image (unique ids), at its row's offset;
    the test rows (no offset column in test.csv) read from 0."""
    cfg = load_config(CONFIG, [f"data.root={hms}", "data.id_column=label_id", "data.test_id_column=eeg_id",
                               "data.submission_id_column=eeg_id"])  # docs/tasks.md
    comp = load_competition(cfg)
    csv = pd.read_csv(hms / "train.csv", dtype=str)
    assert len(comp.train) == len(csv) and comp.train["id"].is_unique
    want = [f"{hms}/train_spectrograms/{s}.parquet#{o}" for s, o in
            zip(csv["spectrogram_id"], csv["spectrogram_label_offset_seconds"], strict=True)]
    assert comp.train["path"].tolist() == want
    assert (comp.train["path"].str.rsplit("#", n=1).str[1] != "0").any()  # offsets beyond 0 are read
    assert all(p.endswith(".parquet#0") for p in comp.test["path"])
    assert len({read_image(p).tobytes() for p in comp.train["path"][:4]}) == 4


def test_a_bad_offset_in_the_csv_names_the_row(hms, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(hms, root)
    csv = pd.read_csv(root / "train.csv", dtype=str)
    csv.loc[2, "spectrogram_label_offset_seconds"] = "-4"
    csv.to_csv(root / "train.csv", index=False)
    with pytest.raises(UserError, match=r"train.csv: row 4 column 'spectrogram_label_offset_seconds' has '-4'"):
        load_competition(load_config(CONFIG, [f"data.root={root}"]))


@pytest.mark.parametrize("fault", ["truncated", "past_end"])
def test_prepare_names_the_bad_file_or_window_in_one_error_line(hms, tmp_path, fault):
    """prepare.py on the replica with one parquet cut short, or one row whose window runs past its
    recording: exit 2, one `error:` line naming the file (and the window), nothing cached as if fine."""
    root = tmp_path / "hms"
    shutil.copytree(hms, root)
    csv = pd.read_csv(root / "train.csv", dtype=str)
    spec = csv["spectrogram_id"].iloc[0]
    f = root / "train_spectrograms" / f"{spec}.parquet"
    if fault == "truncated":
        f.write_bytes(f.read_bytes()[:1000])
        needle = f"train_spectrograms/{spec}.parquet"
    else:
        csv.loc[0, "spectrogram_label_offset_seconds"] = "400"  # a 700 s recording: 400..1000 s
        csv.to_csv(root / "train.csv", index=False)
        needle = f"{spec}.parquet#400"
    out = tmp_path / "runs"
    code, _, err = run_main("prepare.py", "--config", CONFIG, *overrides(root, out, FAST),
                            f"images.cache_dir={tmp_path / 'cache'}")
    line = one_error(code, err, needle)
    assert ("truncated" if fault == "truncated" else "unsupported") in line or "cannot" in line
