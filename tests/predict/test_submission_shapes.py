"""Submission shapes beyond one row per id with every output (comp.predict.submission): a sample naming a subset
of the trained labels (RANZCR's 11 findings, 9 asked for) and a sample in long form, one row per id x label
(RSNA 2022's `row_id,fractured` with rows `<StudyInstanceUID>_C1`), both written from the same per-label
outputs, validated against the sample and scored on what they submit."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import FAST, ROOT, run_main
from replicas import RANZCR_LABELS, overrides, ranzcr_clip
from sklearn import metrics as skm

from comp.competition_metrics import mean_column_auc
from comp.data.competition import load_competition
from comp.errors import UserError
from comp.experiment import load_config
from comp.predict.submission import decoded_submission, frame_ids, sample_frame, score_holdout

LEFT_OUT = ["NGT - Incompletely Imaged", "Swan Ganz Catheter Present"]


def _ranzcr(tmp_path, columns: list[str]):
    root = ranzcr_clip(tmp_path / "ranzcr")
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    sample[["StudyInstanceUID"]].assign(**{c: "0" for c in columns}).to_csv(root / "sample_submission.csv",
                                                                             index=False)
    rng = np.random.default_rng(1)
    truth = pd.DataFrame({"StudyInstanceUID": sample["StudyInstanceUID"],
                          **{c: [k % 2, 1 - k % 2, *rng.integers(0, 2, len(sample) - 2)]
                             for k, c in enumerate(RANZCR_LABELS)}})
    truth.to_csv(root / "solution.csv", index=False)
    ov = [*overrides(root, tmp_path / "runs", FAST), "data.solution_csv=solution.csv"]
    return root, ov


def test_a_sample_with_a_subset_of_the_labels_is_written_from_those_outputs(tmp_path, capsys):
    """The shipped RANZCR config against a sample of 9 of its 11 labels was refused ('neither one value
    column nor one column per class'): the 9 columns are written from their outputs, the 2 others logged,
    the held-out score taken on the 9."""
    columns = [c for c in RANZCR_LABELS if c not in LEFT_OUT]
    root, ov = _ranzcr(tmp_path, columns)
    config = str(ROOT / "configs" / "ranzcr_clip.yaml")
    code, _, err = run_main("prepare.py", "--config", config, *ov)
    assert code == 0, err
    cfg = load_config(config, ov)
    comp = load_competition(cfg)
    probs = np.random.default_rng(0).uniform(size=(len(comp.test), 11))
    _, comp, _, df = decoded_submission(cfg, comp, probs, None)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    assert list(df.columns) == list(sample.columns) and list(df["StudyInstanceUID"]) == list(sample["StudyInstanceUID"])
    pos = {i: n for n, i in enumerate(comp.test["id"])}
    rows = [pos[i] for i in df["StudyInstanceUID"]]
    for c in columns:
        assert np.allclose(df[c].astype(float), probs[rows, RANZCR_LABELS.index(c)])
    assert "2 trained label(s) are not in the sample submission" in capsys.readouterr().err
    truth = pd.read_csv(root / "solution.csv").set_index("StudyInstanceUID").loc[df["StudyInstanceUID"], columns]
    want = np.mean([skm.roc_auc_score(truth[c], df[c].astype(float)) for c in columns])
    assert score_holdout(cfg, comp, df) == pytest.approx(want)


def test_a_sample_column_that_is_no_trained_label_is_named(tmp_path):
    root, ov = _ranzcr(tmp_path, [*RANZCR_LABELS[:10], "CVC - Misplaced"])
    cfg = load_config(ROOT / "configs" / "ranzcr_clip.yaml", ov)
    comp = load_competition(cfg)
    with pytest.raises(UserError, match="column 'CVC - Misplaced' is not a trained label"):
        decoded_submission(cfg, comp, np.full((len(comp.test), 11), 0.5), None)


RSNA_LABELS = ["patient_overall", "C1", "C2", "C3", "C4", "C5", "C6", "C7"]


def _rsna2022(root, n: int = 12, n_test: int = 6):
    """RSNA 2022 cervical spine's shape: train.csv StudyInstanceUID, patient_overall, C1..C7; a sample
    `row_id,fractured` with one row per test study x label, `<uid>_<label>` (the real one lists them label
    by label); the ids are DICOM UIDs with dots, the images `<uid>.png`."""
    rng = np.random.default_rng(0)
    uids = [f"1.2.826.0.1.3680043.{rng.integers(1000, 99999)}" for _ in range(n + n_test)]
    rows = []
    for k, uid in enumerate(uids):
        folder = root / ("test" if k >= n else "train")
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{uid}.png"), np.full((16, 16), 30 + 20 * (k % 5), np.uint8))
        y = [int((k + j) % 3 == 0) for j in range(7)]
        rows.append((uid, int(any(y)), *y))
    table = pd.DataFrame(rows, columns=["StudyInstanceUID", *RSNA_LABELS])
    table[:n].to_csv(root / "train.csv", index=False)
    table[n:].to_csv(root / "solution.csv", index=False)  # wide: the held-out answers per study
    test = uids[n:]
    row_ids = [f"{u}_{lab}" for lab in RSNA_LABELS for u in test]
    pd.DataFrame({"row_id": row_ids, "fractured": 0.5}).to_csv(root / "sample_submission.csv", index=False)
    pd.DataFrame({"row_id": row_ids, "StudyInstanceUID": [r.split("_")[0] for r in row_ids],  # the real test.csv
                  "prediction_type": [r.split("_", 1)[1] for r in row_ids]}).to_csv(root / "test.csv", index=False)
    return test, [f"data.root={root}", "data.source=competition", "data.layout=csv", "data.train_csv=train.csv",
                  "data.id_column=StudyInstanceUID", f"data.label_columns=[{','.join(RSNA_LABELS)}]",
                  "task=multilabel", "metric=auc", "data.image_ext=.png", "data.train_images=[train]",
                  "data.test_images=[test]", "data.sample_submission=sample_submission.csv",
                  "data.solution_csv=solution.csv"]


def test_long_rows_are_written_from_the_wide_outputs(tmp_path):
    test, ov = _rsna2022(tmp_path / "data")
    cfg = load_config(None, [*ov, "predict.shape=long"])
    comp = load_competition(cfg, check_sample=True)  # prepare's look at the sample: every row a study x label
    probs = np.random.default_rng(0).uniform(size=(len(comp.test), 8))
    _, comp, _, df = decoded_submission(cfg, comp, probs, None)
    sample = pd.read_csv(tmp_path / "data" / "sample_submission.csv", dtype=str)
    assert list(df.columns) == ["row_id", "fractured"] and list(df["row_id"]) == list(sample["row_id"])
    pos = {i: n for n, i in enumerate(comp.test["id"])}
    for row, value in zip(df["row_id"], df["fractured"], strict=True):
        uid, _, label = row.rpartition("_") if not row.endswith("patient_overall") else (row[:-16], "", row[-15:])
        assert value == pytest.approx(probs[pos[uid], RSNA_LABELS.index(label)])
    ids, order = frame_ids(cfg, comp, df)
    assert ids == test and list(order) == [pos[u] for u in test]
    sol = pd.read_csv(tmp_path / "data" / "solution.csv").set_index("StudyInstanceUID").loc[test]
    want = mean_column_auc(sol[RSNA_LABELS].to_numpy(), probs[order])  # scored as the wide outputs would be
    assert score_holdout(cfg, comp, df) == pytest.approx(want)


def test_rsna2022_long_submission_scored_by_its_own_metric(tmp_path):
    """metric=rsna2022_cervical (task=multilabel over patient_overall, C1..C7): the hold-out score of the long
    submission is the host's formula on the long solution (comp.study_metrics.cervical_spine_score)."""
    from comp.study_metrics import cervical_spine_score

    test, ov = _rsna2022(tmp_path / "data")
    cfg = load_config(None, [*ov, "predict.shape=long", "metric=rsna2022_cervical"])
    comp = load_competition(cfg)
    probs = np.random.default_rng(1).uniform(0.05, 0.95, size=(len(comp.test), 8))
    _, comp, _, df = decoded_submission(cfg, comp, probs, None)
    wide = pd.read_csv(tmp_path / "data" / "solution.csv")
    sol = wide.melt(id_vars="StudyInstanceUID", var_name="t", value_name="fractured")
    sol = pd.DataFrame({"row_id": sol["StudyInstanceUID"] + "_" + sol["t"], "fractured": sol["fractured"]})
    want = cervical_spine_score(sol, df.assign(fractured=df["fractured"].astype(float)))
    assert score_holdout(cfg, comp, df) == pytest.approx(want, abs=1e-9)


def test_a_long_sample_is_explained_when_read_as_wide(tmp_path):
    """Without predict.shape=long the sample was 'missing column StudyInstanceUID': it is said to be long."""
    test, ov = _rsna2022(tmp_path / "data")
    cfg = load_config(None, ov)
    with pytest.raises(UserError, match=r"in long form.*_patient_overall' = id .* set predict.shape=long"):
        load_competition(cfg)  # the test ids read from the sample
    cfg = load_config(None, [*ov, "data.test_csv=test.csv"])
    comp = load_competition(cfg)
    with pytest.raises(UserError, match=r"in long form.*set predict.shape=long"):
        sample_frame(cfg, comp)
    with pytest.raises(UserError, match="set predict.shape=long"):
        load_competition(cfg, check_sample=True)  # prepare says it first
    cfg = load_config(None, [*ov, "data.test_csv=test.csv", "predict.shape=long"])
    assert list(load_competition(cfg, check_sample=True).test["id"]) == test  # the long test.csv, each id once


def test_a_long_row_that_is_no_study_and_label_is_named(tmp_path):
    test, ov = _rsna2022(tmp_path / "data")
    path = tmp_path / "data" / "sample_submission.csv"
    sample = pd.read_csv(path, dtype=str)
    sample.loc[3, "row_id"] = f"{test[0]}_C8"
    sample.to_csv(path, index=False)
    cfg = load_config(None, [*ov, "predict.shape=long"])
    with pytest.raises(UserError, match=rf"row id '{test[0]}_C8' is not a test id and a label"):
        load_competition(cfg, check_sample=True)
    comp = load_competition(cfg)
    with pytest.raises(UserError, match=rf"row id '{test[0]}_C8'"):  # predict, when prepare was not run
        decoded_submission(cfg, comp, np.full((len(comp.test), 8), 0.5), None)
