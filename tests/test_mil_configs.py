"""The shipped MIL configs (docs/mil.md), each on a replica of its competition's download
(tests/replicas_mil.py): prepare.py (checks, the MIL cache, folds), one fold, and a submission that matches the
sample, as a user runs them."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import FAST, ROOT, run_main
from replicas_mil import MIL_BUILDERS

from comp.data.competition import load_competition
from comp.data.mil_cache import mil_folder
from comp.experiment import load_config

CONFIGS = {"brain_tumor": "rsna2021_brain_tumor", "cervical_spine": "rsna2022_cervical_spine",
           "mammography": "rsna2023_mammography", "ubc_ocean": "ubc_ocean",
           "abdominal_trauma": "rsna2023_abdominal_trauma", "lumbar_spine": "rsna2024_lumbar_spine"}
EXTRA = {"ubc_ocean": ["mil.tile_size=32"]}  # the replica's slides are 192 px


def tiny(root, out, cache, name) -> list[str]:
    return [*FAST, "batch_size=2", "model.pretrained=null", f"data.root={root}", f"out_dir={out}",
            f"images.cache_dir={cache}", "mil.instances=3", "data.exclude=[]", *EXTRA.get(name, []),
            "model.name=timm/test_resnet"]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_prepare_train_predict(tmp_path, name):
    root = MIL_BUILDERS[name](tmp_path / "data")
    config = str(ROOT / "configs" / f"{CONFIGS[name]}.yaml")
    ov = tiny(root, tmp_path / "run", tmp_path / "cache", name)
    code, _, err = run_main("prepare.py", "--config", config, *ov)
    assert code == 0, err[-3000:]
    cfg = load_config(config, ov)
    comp = load_competition(cfg)
    assert len(list(mil_folder(cfg).rglob("*.npy"))) >= len(comp.train) + len(comp.test)
    code, _, err = run_main("train_fold.py", "--config", config, "--fold", "0", *ov)
    assert code == 0, err[-3000:]
    sub = tmp_path / "sub.csv"
    code, _, err = run_main("predict.py", "--config", config, "-o", str(sub), "predict.folds=[0]", *ov)
    assert code == 0, err[-3000:]
    got, sample = pd.read_csv(sub), pd.read_csv(root / cfg.data.sample_submission)
    assert list(got.columns) == list(sample.columns)
    assert sorted(got.iloc[:, 0].astype(str)) == sorted(sample.iloc[:, 0].astype(str))
    if not pd.api.types.is_numeric_dtype(got.iloc[:, 1]):  # labels (UBC-OCEAN's subtypes)
        assert set(got.iloc[:, 1]) <= {str(v) for v in comp.label_values}
    else:  # probabilities
        assert ((got.iloc[:, 1] >= 0) & (got.iloc[:, 1] <= 1)).all()


@pytest.mark.slow
def test_a_resumed_mil_fold_ends_bit_for_bit_where_an_unbroken_one_does(tmp_path):
    """Two epochs straight, and one epoch then --resume for the second, give the same weights: the instance
    pick (jittered in training) and the row's augmentation draw are functions of the sample's seed."""
    import torch

    root = MIL_BUILDERS["brain_tumor"](tmp_path / "data")
    config = str(ROOT / "configs" / "rsna2021_brain_tumor.yaml")
    flips = "aug.train=[{name: HorizontalFlip, p: 0.5}, {name: RandomBrightnessContrast, p: 0.5}]"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        weights = []
        for out, steps in (("straight", [["epochs=2"]]), ("resumed", [["epochs=1"], ["epochs=2", "--resume"]])):
            ov = [*tiny(root, tmp_path / out, tmp_path / "cache", "brain_tumor"), flips]
            assert run_main("prepare.py", "--config", config, *ov)[0] == 0
            for extra in steps:
                code, _, err = run_main("train_fold.py", "--config", config, "--fold", "0", *ov, *extra)
                assert code == 0, err[-3000:]
            weights.append(torch.load(tmp_path / out / "fold0" / "last.pt", weights_only=True)["model"])
    finally:
        torch.set_num_threads(threads)
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
