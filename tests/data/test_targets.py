"""comp.data.targets: an id on several rows of the labels CSV (data.label_rows: refuse | first | aggregate) on a
replica shaped like HMS 2024's train.csv (several rows per eeg_id, six vote columns; one image per id here) and on
plain label CSVs of every task kind with repeated ids; the choice and the counts in folds.json."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import LABELS, run_main, tiny_config, write_competition

from comp.data.competition import load_competition
from comp.errors import UserError

VOTES = ["seizure_vote", "lpd_vote", "gpd_vote", "lrda_vote", "grda_vote", "other_vote"]
CLASSES = ["Seizure", "LPD", "GPD", "LRDA", "GRDA", "Other"]


def hms_replica(root: Path, n_eegs: int = 12, seed: int = 0, first_id: int = 1_000_000) -> Path:
    """HMS 2024's train.csv as it comes (its columns, several rows per eeg_id with their own offsets, label_id
    and votes, expert_consensus the rows' majority class, one patient per eeg), with one image per eeg_id in
    train/ and a sample submission of six `<class>_vote` columns for test/."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows = []
    for e in range(n_eegs):
        eeg = str(first_id + 7919 * e)
        main = e % 6
        for sub in range(1 + e % 4):  # 1..4 rows per eeg
            votes = np.zeros(6, int)
            votes[main] = 1 + rng.integers(0, 3)
            votes[(main + sub) % 6] += rng.integers(0, 3) + (sub % 2)  # later windows disagree
            rows.append({"eeg_id": eeg, "eeg_sub_id": sub, "eeg_label_offset_seconds": 2.0 * sub,
                         "spectrogram_id": str(2_000_000 + e), "spectrogram_sub_id": sub,
                         "spectrogram_label_offset_seconds": 2.0 * sub, "label_id": str(rng.integers(1e9)),
                         "patient_id": str(40_000 + e // 2), "expert_consensus": CLASSES[int(votes.argmax())],
                         **dict(zip(VOTES, votes.tolist(), strict=True))})
        cv2.imwrite(str(root / "train" / f"{eeg}.png"), np.full((16, 16, 3), 30 * main + 7 * seed, np.uint8))
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    test = [str(3_000_000 + k) for k in range(3)]
    for t in test:
        cv2.imwrite(str(root / "test" / f"{t}.png"), np.zeros((16, 16, 3), np.uint8))
    pd.DataFrame({"eeg_id": test, **{v: 1 / 6 for v in VOTES}}).to_csv(root / "sample_submission.csv", index=False)
    return root


def hms_config(root: Path, *extra: str):
    return tiny_config(root, "task=multiclass", f"data.label_columns=[{','.join(VOTES)}]", "data.id_column=eeg_id",
                       "data.group_column=patient_id", "metric=kl_divergence", *extra)


@pytest.fixture
def hms(tmp_path):
    return hms_replica(tmp_path / "hms")


def test_hms_votes_of_an_eegs_rows_are_summed_then_normalised(hms):
    raw = pd.read_csv(hms / "train.csv", dtype={"eeg_id": str, "patient_id": str})
    assert raw["eeg_id"].duplicated().any()
    with pytest.raises(UserError, match=r"appears more than once.*data.label_rows=first\|aggregate"):
        load_competition(hms_config(hms))  # refuse stays the default: today's behaviour
    with pytest.raises(UserError, match=r"has different labels on its rows \[\d+, \d+.*data.label_rows"):
        load_competition(hms_config(hms, "data.dedupe_ids=true"))
    comp = load_competition(hms_config(hms, "data.label_rows=aggregate"))
    assert comp.train["id"].tolist() == raw["eeg_id"].drop_duplicates().tolist()  # one image per eeg, file order
    summed = raw.groupby("eeg_id", sort=False)[VOTES].sum()
    want = (summed.to_numpy() / summed.to_numpy().sum(1, keepdims=True))
    np.testing.assert_allclose(comp.targets(comp.train), want.astype(np.float32), rtol=1e-6)
    assert (comp.train["label"].to_numpy() == want.argmax(1)).all()
    several = raw["eeg_id"].value_counts()
    disagree = raw.groupby("eeg_id")[VOTES].nunique().gt(1).any(axis=1)
    assert comp.several_rows == {"ids": int((several > 1).sum()), "rows": int(several[several > 1].sum()),
                                 "disagreeing": int(disagree.sum())}
    first = load_competition(hms_config(hms, "data.label_rows=first"))
    votes = raw.drop_duplicates("eeg_id")[VOTES].to_numpy(float)
    np.testing.assert_allclose(first.targets(first.train), votes / votes.sum(1, keepdims=True), rtol=1e-6)
    assert (first.train["group"].to_numpy() == raw.drop_duplicates("eeg_id")["patient_id"].to_numpy()).all()


def test_hms_expert_consensus_as_one_class_label_takes_the_rows_majority(hms):
    raw = pd.read_csv(hms / "train.csv", dtype={"eeg_id": str})
    cfg = tiny_config(hms, "data.id_column=eeg_id", "data.label_column=expert_consensus",
                      "data.group_column=patient_id", f"data.classes=[{','.join(CLASSES)}]",
                      "data.label_rows=aggregate")
    comp = load_competition(cfg)
    for eeg, rows in raw.groupby("eeg_id", sort=False):
        counts = rows["expert_consensus"].value_counts()
        tied = set(counts.index[counts == counts.max()])
        want = next(c for c in rows["expert_consensus"] if c in tied)  # a tie: the earliest row's
        assert CLASSES[int(comp.train.set_index("id").loc[eeg, "label"])] == want, eeg


def test_prepare_records_the_choice_and_the_counts_in_folds_json(hms):
    cfg = ["task=multiclass", f"data.label_columns=[{','.join(VOTES)}]", "data.id_column=eeg_id",
           "data.group_column=patient_id", "metric=kl_divergence", "data.source=competition", f"data.root={hms}",
           f"out_dir={hms.parent / 'runs'}", "folds.n_folds=2", "image_size=16", "num_workers=0"]
    code, _, err = run_main("prepare.py", *cfg, "data.label_rows=aggregate")
    assert code == 0, err
    assert "read as one image each" in err and "data.label_rows=aggregate" in err
    made = json.loads((hms.parent / "runs" / "folds.json").read_text())
    raw = pd.read_csv(hms / "train.csv", dtype={"eeg_id": str})
    n = raw["eeg_id"].value_counts()
    assert made["label_rows"] == "aggregate"
    assert made["several_rows"]["ids"] == int((n > 1).sum()) and made["several_rows"]["rows"] == int(n[n > 1].sum())
    folds = pd.read_csv(hms.parent / "runs" / "folds.csv", dtype={"id": str})
    assert folds["id"].is_unique and len(folds) == raw["eeg_id"].nunique()
    code, _, err = run_main("prepare.py", *cfg, "data.label_rows=first")  # other targets: not the same split
    assert code == 2 and "was made with data.label_rows='aggregate'" in err, err


def _repeat(root: Path, id_col: str, change: dict) -> pd.DataFrame:
    """Append to root/train.csv a second row for the first ids, with `change` {column: values} applied."""
    df = pd.read_csv(root / "train.csv", dtype=str)
    extra = df.iloc[:len(next(iter(change.values())))].copy()
    for c, v in change.items():
        extra[c] = [str(x) for x in v]
    out = pd.concat([df, extra], ignore_index=True)
    out.to_csv(root / "train.csv", index=False)
    return out


def test_plain_csv_repeated_ids_per_task(tmp_path):
    # regression: the mean of the rows' values
    ov = [*write_competition(tmp_path / "reg", "regression"), "metric=mae"]
    df = _repeat(tmp_path / "reg", "image_id", {"boneage": [10.0, 20.0]})
    with pytest.raises(UserError, match="appears more than once"):
        load_competition(tiny_config(tmp_path / "reg", *ov))
    comp = load_competition(tiny_config(tmp_path / "reg", *ov, "data.label_rows=aggregate")).train.set_index("id")
    assert comp.loc["im000", "label"] == pytest.approx((float(df["boneage"][0]) + 10.0) / 2)
    assert comp.loc["im001", "label"] == pytest.approx((float(df["boneage"][1]) + 20.0) / 2)
    first = load_competition(tiny_config(tmp_path / "reg", *ov, "data.label_rows=first")).train.set_index("id")
    assert first.loc["im000", "label"] == pytest.approx(float(df["boneage"][0]))

    # multi-label 0/1: a label marked on any row
    ov = [*write_competition(tmp_path / "ml", "multilabel"), "metric=auc"]
    df = _repeat(tmp_path / "ml", "image_id", {"ett": [1], "ngt": [0], "cvc": [1]})
    comp = load_competition(tiny_config(tmp_path / "ml", *ov, "data.label_rows=aggregate"))
    row = comp.train.set_index("id").loc["im000"]
    want = np.maximum(df.loc[0, LABELS].astype(int).to_numpy(), [1, 0, 1])
    assert [row[f"target_{c}"] for c in LABELS] == want.tolist() and row["label"] == ",".join(map(str, want))

    # binary class labels: the majority; a tie goes to the earliest row's label
    ov = [*write_competition(tmp_path / "bin", "binary"), "metric=auc"]
    df = _repeat(tmp_path / "bin", "image_id", {"target": [1, 1, 1]})  # im000: 0,1 tie; im002: 1,1
    df = _repeat(tmp_path / "bin", "image_id", {"target": [1]})  # im000: 0,1,1
    comp = load_competition(tiny_config(tmp_path / "bin", *ov, "data.label_rows=aggregate"))
    got = comp.train.set_index("id")["label"]
    assert df.loc[0, "target"] == "0" and got["im000"] == 1 and got["im001"] == 0  # im001: its 0, then a 1: tie
    assert comp.several_rows == {"ids": 3, "rows": 7, "disagreeing": 2}
    assert comp.train["id"].is_unique and len(comp.train) == 24


def test_rows_of_one_id_naming_two_patients_are_refused(tmp_path):
    ov = [*write_competition(tmp_path / "reg", "regression"), "metric=mae"]
    _repeat(tmp_path / "reg", "image_id", {"boneage": [10.0], "patient_id": ["p99"]})
    with pytest.raises(UserError, match=r"train.csv: id 'im000' names different patients on its rows \[2, 26\]"):
        load_competition(tiny_config(tmp_path / "reg", *ov, "data.label_rows=first"))
    ov = [*write_competition(tmp_path / "same", "regression"), "metric=mae"]
    df = pd.read_csv(tmp_path / "same" / "train.csv", dtype=str)
    _repeat(tmp_path / "same", "image_id", {"boneage": [df["boneage"][0]], "patient_id": ["p99"]})  # labels agree
    with pytest.raises(UserError, match="id 'im000' names different patients"):  # was: the first row's, silently
        load_competition(tiny_config(tmp_path / "same", *ov, "data.dedupe_ids=true"))


def test_bad_label_rows_value_is_refused(tmp_path):
    with pytest.raises(UserError, match="data.label_rows.*refuse, first or aggregate"):
        tiny_config(tmp_path, "data.label_rows=mean")


def test_an_extra_source_joins_its_own_repeated_ids(hms, tmp_path):
    """data.extra entries are read by load_competition: one with repeated ids sets its own label_rows."""
    from comp.data.extra import load_extra

    other = hms_replica(tmp_path / "other", seed=1, first_id=5_000_000)
    cfg = hms_config(hms, "data.label_rows=aggregate",
                     f"data.extra=[{{root: {other}, id_column: eeg_id, group_column: patient_id, name: more}}]")
    comp = load_competition(cfg)
    with pytest.raises(UserError, match=r"data.extra\[0\] \('more'\).*appears more than once"):
        load_extra(cfg, comp)
    cfg = hms_config(hms, "data.label_rows=aggregate", f"data.extra=[{{root: {other}, id_column: eeg_id, "
                     f"group_column: patient_id, name: more, label_rows: first}}]")
    extra = load_extra(cfg, comp)
    raw = pd.read_csv(other / "train.csv", dtype={"eeg_id": str}).drop_duplicates("eeg_id")
    votes = raw[VOTES].to_numpy(float)
    assert extra["id"].tolist() == raw["eeg_id"].tolist()
    np.testing.assert_allclose(extra[[f"target_{v}" for v in VOTES]].to_numpy(), votes / votes.sum(1, keepdims=True))


# --- task=multihead: data.heads read from either form of the labels CSV ---------------------------------

def _heads_cfg(root: Path, *extra: str):
    heads = "{spinal_l1_l2: [normal_mild, moderate, severe], bowel: [healthy, injury]}"
    return tiny_config(root, "task=multihead", f"data.heads={heads}", "metric=log_loss", *extra)


def test_multihead_targets_from_a_class_column_or_one_hot_columns(tmp_path):
    """RSNA 2024's form (a column per target holding "Normal/Mild", a blank where not labelled) and RSNA
    2023's (a 0/1 column per class) read into one-hot rows side by side, a blank target all zeros; the folds
    stratify on every head's classes at once (iterative stratification) and keep each patient whole."""
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    rows = []
    for k in range(12):
        cv2.imwrite(str(root / "train" / f"s{k}.png"), np.full((8, 8, 3), 20 * k, np.uint8))
        rows.append({"id": f"s{k}", "spinal_l1_l2": ["Normal/Mild", "Moderate", "Severe", ""][k % 4],
                     "bowel_healthy": int(k % 3 != 0), "bowel_injury": int(k % 3 == 0)})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    comp = load_competition(_heads_cfg(root, "data.sample_submission=\"\""))
    assert comp.classes == ["spinal_l1_l2_normal_mild", "spinal_l1_l2_moderate", "spinal_l1_l2_severe",
                            "bowel_healthy", "bowel_injury"]
    y = comp.targets(comp.train)
    assert y.shape == (12, 5) and y[:4].tolist() == [[1, 0, 0, 0, 1], [0, 1, 0, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 1]]
    assert comp.train["label"].tolist()[:4] == ["0,1", "1,0", "2,0", "-,1"]
    from comp.data.folds import split

    fold = split(comp.train, 2, 0, grouped=False)
    per_fold = pd.DataFrame(y).groupby(fold.to_numpy()).sum()
    assert (per_fold > 0).all().all()  # every class of every head in both folds


@pytest.mark.parametrize("cell, needle", [("Mild?", "'Mild?', not one of its classes"),
                                          ("2", "a target's class columns are 0/1")])
def test_multihead_bad_cells_are_named(tmp_path, cell, needle):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    cv2.imwrite(str(root / "train" / "s0.png"), np.zeros((8, 8, 3), np.uint8))
    row = {"id": "s0", "spinal_l1_l2": "Moderate", "bowel_healthy": 1, "bowel_injury": 0}
    row["spinal_l1_l2" if "?" in cell else "bowel_injury"] = cell
    pd.DataFrame([row]).to_csv(root / "train.csv", index=False)
    with pytest.raises(UserError, match="row 2") as e:
        load_competition(_heads_cfg(root, "data.sample_submission=\"\""))
    assert needle in str(e.value)
    pd.DataFrame([{"id": "s0", "bowel_healthy": 1}]).to_csv(root / "train.csv", index=False)
    with pytest.raises(UserError, match=r"neither a column 'spinal_l1_l2' nor the columns"):
        load_competition(_heads_cfg(root, "data.sample_submission=\"\""))


def test_multihead_rows_of_one_id_take_the_first_or_are_refused(tmp_path):
    root = tmp_path / "data"
    (root / "train").mkdir(parents=True)
    rows = []
    for k in range(4):
        cv2.imwrite(str(root / "train" / f"s{k}.png"), np.zeros((8, 8, 3), np.uint8))
        rows.append({"id": f"s{k}", "spinal_l1_l2": "Moderate", "bowel_healthy": 1, "bowel_injury": 0})
    rows.append({"id": "s0", "spinal_l1_l2": "Severe", "bowel_healthy": 1, "bowel_injury": 0})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    comp = load_competition(_heads_cfg(root, "data.sample_submission=\"\"", "data.label_rows=first"))
    assert comp.train["label"].iloc[0] == "1,0"
    with pytest.raises(UserError, match="aggregate does not combine task=multihead"):
        load_competition(_heads_cfg(root, "data.sample_submission=\"\"", "data.label_rows=aggregate"))
