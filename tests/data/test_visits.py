"""comp.data.visits on the OSIC replica (tests/replicas.py `osic`): each visit's features from its patient's
baseline (the earliest week), the test rows expanded from test.csv's baseline rows to every Patient_Week of the
sample, and each bad input refused in one line naming the file and line."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from replicas import osic

from comp.data.visits import last_visits, load_visits
from comp.errors import UserError
from comp.experiment import load_config

ROOT = Path(__file__).resolve().parents[2]


def _cfg(root, *extra):
    return load_config(str(ROOT / "configs" / "osic.yaml"), [f"data.root={root}", *extra])


def test_features_come_from_the_baseline_and_the_sample_rows_from_test_csv(tmp_path):
    root = osic(tmp_path / "data")
    v = load_visits(_cfg(root))
    train = pd.read_csv(root / "train.csv")
    assert len(v.train) == len(train) and v.numeric == ["since_baseline", "baseline_FVC", "baseline_Percent", "Age"]
    assert v.categorical == ["Sex", "SmokingStatus"]
    pid = train["Patient"].iloc[0]
    rows = train[train["Patient"] == pid].sort_values("Weeks")
    mine = v.train[v.train["group"] == pid].sort_values("time")
    assert list(mine["since_baseline"]) == list(rows["Weeks"] - rows["Weeks"].min())
    assert set(mine["baseline_FVC"]) == {float(rows["FVC"].iloc[0])} and list(mine["label"]) == list(rows["FVC"])
    assert mine["id"].iloc[1] == f"{pid}_{rows['Weeks'].iloc[1]}"
    sample, test = pd.read_csv(root / "sample_submission.csv"), pd.read_csv(root / "test.csv")
    assert list(v.test["id"]) == list(sample["Patient_Week"])  # every sample row, in its order
    first = v.test[v.test["group"] == test["Patient"].iloc[0]]
    assert len(first) == 146 and list(first["time"]) == list(range(-12, 134))
    assert (first["since_baseline"] == first["time"] - test["Weeks"].iloc[0]).all()
    assert (first["baseline_FVC"] == test["FVC"].iloc[0]).all() and (first["Sex"] == test["Sex"].iloc[0]).all()
    last = last_visits(v.train)
    assert last.sum() == 3 * v.train["group"].nunique()  # each patient's last 3 visits (4-6 each here)


def test_a_repeated_patient_week_is_one_visit_with_the_mean_value(tmp_path, capsys):
    root = osic(tmp_path / "data")
    train = pd.read_csv(root / "train.csv")
    dup = train.iloc[[1]].assign(FVC=train["FVC"].iloc[1] + 100)
    pd.concat([train, dup]).to_csv(root / "train.csv", index=False)
    v = load_visits(_cfg(root))
    assert len(v.train) == len(train)
    row = v.train[v.train["id"] == f"{train['Patient'].iloc[1]}_{train['Weeks'].iloc[1]}"]
    assert row["label"].iloc[0] == pytest.approx(train["FVC"].iloc[1] + 50)
    assert "1 Patient x Weeks visit(s) on several rows" in capsys.readouterr().err


@pytest.mark.parametrize("case, needles", [
    ("week", ["train.csv line 3", "Weeks='soon' is not a number"]),
    ("sample_id", ["sample_submission.csv line 2", "is not <Patient>_<Weeks>"]),
    ("unknown", ["sample_submission.csv line 2", "has no row in", "test.csv", "no baseline"]),
    ("no_time", ["data.time_column"]),
])
def test_bad_visit_tables_are_refused_naming_file_and_line(tmp_path, case, needles):
    root = osic(tmp_path / "data")
    extra = []
    if case == "week":
        t = pd.read_csv(root / "train.csv", dtype=str)
        t.loc[1, "Weeks"] = "soon"
        t.to_csv(root / "train.csv", index=False)
    elif case in ("sample_id", "unknown"):
        s = pd.read_csv(root / "sample_submission.csv", dtype=str)
        s.loc[0, "Patient_Week"] = "IDnoweek" if case == "sample_id" else "IDother_5"
        s.to_csv(root / "sample_submission.csv", index=False)
    else:
        extra = ["data.time_column="]
    with pytest.raises(UserError) as e:
        load_visits(_cfg(root, *extra))
    for n in needles:
        assert n in str(e.value), (n, str(e.value))
    assert "\n" not in str(e.value)
