"""The learning-rate finder (comp.train.lr_find, scripts/lr_find.py): fastai's valley suggestion on a hand-made
curve, the geometric ramp, and a real run that writes its plot and table outside the fold folders and
prints an override to paste."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from helpers import run_main

from comp.experiment import load_config


def test_lr_finder_writes_its_plot_and_suggests_an_lr_within_the_ramp(tiny):
    from comp.train.lr_find import ramp, valley

    # fastai's valley on a hand-made curve: flat, a 9-step fall, then a rise; the longest decreasing run
    # is steps 2..11 (start = 11 - 10 = 1), third = 10/3, so index 1 + 3 + 1 = 5
    losses = np.array([5.0, 5.0, 5.0, 4.5, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.9, 3.0, 9.0])
    assert valley(np.arange(1.0, 15.0), losses) == 6.0
    assert ramp(1e-4, 1.0, 5) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])

    code, out, err = run_main("lr_find.py", "--steps", "20", "--start", "1e-5", "--end", "10", *tiny["overrides"],
                              "batch_size=4")
    assert code == 0, err
    line = out.strip().splitlines()[-1]
    assert line.startswith("optim.lr=")
    lr = float(line.split("=")[1])
    assert 1e-5 <= lr <= 10
    folder = tiny["out"] / "lr_find"
    assert (folder / "lr_find.png").stat().st_size > 1000
    table = pd.read_csv(folder / "lr_find.csv")
    assert 2 <= len(table) <= 20 and table["lr"].is_monotonic_increasing
    assert table["lr"].iloc[0] == pytest.approx(1e-5)
    assert not (tiny["out"] / "fold0").exists()  # nothing in the experiment's fold folders
    assert load_config(None, tiny["overrides"] + [line]).optim.lr == pytest.approx(lr)  # pastes as an override
