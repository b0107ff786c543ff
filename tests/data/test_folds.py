"""comp.data.folds: stratified (multi-label folds too), grouped by patient when configured, written once,
reused, refused when the data or a fold setting changes; folds.json records the libraries that made them
(scikit-learn >= 1.8, the release whose shuffled StratifiedGroupKFold stratifies)."""

from __future__ import annotations

import json
from importlib import metadata

import numpy as np
import pandas as pd
import pytest
from helpers import FAST, ROOT, write_competition
from replicas import build, overrides

from comp.data.competition import load_competition
from comp.data.folds import library_versions, load_or_make_folds, split
from comp.errors import UserError
from comp.experiment import Experiment, load_config


def _table(n_patients=60, seed=0) -> pd.DataFrame:
    """Patients with 1-4 images each, imbalanced labels (mostly shared by a patient's images)."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        base = rng.choice(5, p=[0.5, 0.1, 0.2, 0.1, 0.1])
        for k in range(int(rng.integers(1, 5))):
            label = base if rng.random() < 0.8 else rng.choice(5)
            rows.append((f"{p}_{k}", int(label), str(p)))
    return pd.DataFrame(rows, columns=["id", "label", "group"])


def test_stratified_proportions_within_one_sample():
    t = _table()
    fold = split(t, 5, seed=1, grouped=False)
    for _, part in t.groupby(fold):
        for c, n in t["label"].value_counts().items():
            assert abs((part["label"] == c).sum() - n / 5) <= 1  # StratifiedKFold: within one sample


def test_grouped_folds_keep_patients_whole():
    t = _table()
    fold = split(t, 5, seed=1, grouped=True)
    assert (t.assign(fold=fold).groupby("group")["fold"].nunique() == 1).all()  # no patient straddles
    biggest = int(t["group"].value_counts().max())
    for _, part in t.groupby(fold):
        for c, n in t["label"].value_counts().items():
            assert abs((part["label"] == c).sum() - n / 5) <= 2 * biggest  # stratified up to whole patients
    assert split(t, 5, seed=1, grouped=True).equals(fold)  # seeded
    assert not split(t, 5, seed=2, grouped=True).equals(fold)


def test_too_few_for_the_folds():
    t = _table(8)
    with pytest.raises(UserError, match="folds.n_folds=5 but the rarest class"):
        split(t[t["label"] != 3].assign(label=lambda d: d["label"].where(d.index > 0, 3)), 5, 0, False)
    few = pd.DataFrame({"id": list("abcdef"), "label": [0, 1] * 3, "group": ["p", "p", "p", "q", "q", "q"]})
    with pytest.raises(UserError, match="has only 2 patient"):
        split(few, 3, 0, True)


@pytest.fixture(scope="module")
def dr_root(tmp_path_factory):
    """The DR 2015 replica (both eyes of a patient: one group), built once and only read."""
    return build("dr2015", tmp_path_factory.mktemp("dr") / "dr")


@pytest.fixture
def dr(dr_root, tmp_path):
    ov = overrides(dr_root, tmp_path / "runs", FAST)
    return lambda *extra: load_config(ROOT / "configs" / "dr2015.yaml", [*ov, *extra])


def test_written_once_and_reused(dr, tmp_path):
    cfg = dr()
    train = load_competition(cfg).train
    out = tmp_path / "runs"
    first = load_or_make_folds(cfg, train, Experiment(cfg, out).split)
    text = (out / "folds.csv").read_text()
    made = json.loads((out / "folds.json").read_text())
    assert made.pop("made_with") == library_versions()  # scikit-learn, numpy, pandas, the kit
    assert made.pop("copies") == {"identical_images": 0, "identical": [], "groups_joined": 0}  # no copies in it
    assert made == {"n_folds": 2, "seed": 42, "grouped": True, "group_pattern": r"^(\d+)_(?:left|right)$"}
    assert (first.groupby("group")["fold"].nunique() == 1).all()  # both eyes of a patient together
    again = load_or_make_folds(cfg, train.sample(frac=1, random_state=0), Experiment(cfg, out).split)  # any row order
    assert (out / "folds.csv").read_text() == text
    assert again.set_index("id")["fold"].sort_index().equals(first.set_index("id")["fold"].sort_index())
    (out / "folds.csv").unlink()
    (out / "folds.json").unlink()
    load_or_make_folds(cfg, train, Experiment(cfg, out).split)
    assert (out / "folds.csv").read_text() == text  # remade from scratch: the same split
    again = load_or_make_folds(dr("seed=7"), train, Experiment(dr("seed=7"), out).split)
    assert again["fold"].equals(first["fold"])  # training seed: same folds


@pytest.mark.parametrize("change, needle", [
    (["folds.n_folds=4"], "folds.n_folds=4"),
    (["folds.seed=1"], "folds.seed"),
    (["folds.grouped=false"], "folds.grouped"),
    ([r"data.group_pattern='^(\d)'"], "data.group_pattern"),  # patients 10..19 -> one group
])
def test_changed_setting_refused(dr, tmp_path, change, needle):
    cfg = dr()
    train = load_competition(cfg).train
    load_or_make_folds(cfg, train, Experiment(cfg, tmp_path / "runs").split)
    changed = dr(*change)
    with pytest.raises(UserError, match="folds.csv") as e:
        load_or_make_folds(changed, load_competition(changed).train, Experiment(changed, tmp_path / "runs").split)
    assert needle in str(e.value) and "delete it" in str(e.value)


def test_changed_data_refused(dr, tmp_path):
    cfg = dr()
    train = load_competition(cfg).train
    out = tmp_path / "runs"
    load_or_make_folds(cfg, train, Experiment(cfg, out).split)
    with pytest.raises(UserError, match="different set of images"):
        load_or_make_folds(cfg, train.iloc[1:], Experiment(cfg, out).split)
    relabelled = train.assign(label=train["label"].where(train.index != 3, (train["label"] + 1) % 5))
    with pytest.raises(UserError, match=f"the label of '{train['id'][3]}' changed"):
        load_or_make_folds(cfg, relabelled, Experiment(cfg, out).split)


def test_hand_made_folds_are_trusted(dr, tmp_path):
    """A folds.csv without folds.json (an official split written by hand) is used as it is."""
    cfg = dr()
    train = load_competition(cfg).train
    out = tmp_path / "runs"
    out.mkdir()
    mine = train.assign(fold=np.arange(len(train)) % 2)
    mine[["id", "label", "group", "fold"]].to_csv(out / "folds.csv", index=False)
    got = load_or_make_folds(cfg, train, Experiment(cfg, out).split)
    assert got.set_index("id")["fold"].equals(mine.set_index("id")["fold"])


def test_group_column_keeps_patients_whole_and_multilabel_folds_stratify(tmp_path):
    cfg = load_config(None, FAST + write_competition(tmp_path / "d", "multilabel", n=40) + ["folds.n_folds=4",
                                                                                           "metric=auc"])
    comp = load_competition(cfg)
    fold = split(comp.train, 4, 42, grouped=True)
    assert comp.train.assign(fold=fold).groupby("group")["fold"].nunique().max() == 1
    y = comp.targets(comp.train)
    for k in range(4):  # every label's positives spread over every fold (iterative stratification)
        assert (y[fold.to_numpy() == k].sum(0) > 0).all()


def test_sklearn_floor_is_the_release_that_stratifies_shuffled_group_folds():
    """scikit-learn < 1.8 shuffled StratifiedGroupKFold's groups apart from their labels (PR #32540): one
    image per patient, 20 positives in 100, 5 folds must give 4 positives in every fold, for any seed."""
    assert '"scikit-learn>=1.8",' in (ROOT / "pyproject.toml").read_text()
    major, minor = (int(p) for p in metadata.version("scikit-learn").split(".")[:2])
    assert (major, minor) >= (1, 8)
    y = np.array([1] * 20 + [0] * 80)
    table = pd.DataFrame({"label": y, "group": [f"p{i}" for i in range(100)]})
    for seed in range(4):
        fold = split(table, 5, seed, grouped=True).to_numpy()
        assert [int(y[fold == k].sum()) for k in range(5)] == [4] * 5


def test_folds_json_records_library_versions_and_a_new_version_does_not_refuse(dr, tmp_path, capsys):
    cfg = dr()
    train = load_competition(cfg).train
    out = tmp_path / "runs"
    first = load_or_make_folds(cfg, train, Experiment(cfg, out).split)
    made = json.loads((out / "folds.json").read_text())
    assert made["made_with"] == {name: metadata.version(name) for name in ("scikit-learn", "numpy", "pandas", "comp")}
    assert made["made_with"] == library_versions()
    # the same folds made under older libraries: reused as they are, the difference logged
    made["made_with"] = {**made["made_with"], "scikit-learn": "1.7.2", "numpy": "1.26.4"}
    (out / "folds.json").write_text(json.dumps(made))
    csv = (out / "folds.csv").read_text()
    capsys.readouterr()
    again = load_or_make_folds(cfg, train, Experiment(cfg, out).split)
    assert again["fold"].equals(first["fold"]) and (out / "folds.csv").read_text() == csv
    err = capsys.readouterr().err
    assert "scikit-learn 1.7.2 (now " in err and "numpy 1.26.4" in err and "kept as it is" in err
    assert "did not stratify" in err  # dr2015 is grouped by patient: those folds were made by the bug
