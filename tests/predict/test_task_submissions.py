"""Every task (comp/tasks.py) through the one loop to a submission: a labels CSV of its kind -> folds -> a
short fold -> OOF and CV score -> the fold ensemble -> a submission validated against the sample and scored
against the held-out answers; and rows made of several images (RSNA Screening Mammography 2023: one row per
breast), scored and submitted at the row level."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
from helpers import FAST, write_competition

from comp.data.competition import load_competition
from comp.experiment import Experiment, load_config
from comp.predict.submission import make_submission
from comp.train.loop import fit

CASES = {
    "multilabel": ["metric=auc"],
    "soft": ["metric=kl_divergence"],
    "regression": ["metric=mae"],
    "binary": ["metric=pauc", "train.class_weights=true"],
    "ordinal": ["metric=qwk", "model.head=regression"],
}


@pytest.mark.parametrize("kind", list(CASES))
def test_each_task_trains_predicts_and_submits(tmp_path, kind):
    over = write_competition(tmp_path / "data", kind) + CASES[kind]
    cfg = load_config(None, FAST + over + [f"out_dir={tmp_path / 'runs'}", "aug.tta=[identity,hflip]",
                                           "train.mixup=0.4", "epochs=2"])
    comp = load_competition(cfg)
    res = fit(cfg, 0)
    oof = Experiment(cfg).oof()
    assert len(oof) == 12 and np.isfinite(res["best"])
    table, cv, n = Experiment(cfg).cv()
    assert n == 1 and np.isfinite(cv) and cfg.metric in table.columns
    fit(cfg, 1)
    sub = make_submission(cfg)
    sample = pd.read_csv(tmp_path / "data" / "sample_submission.csv")
    assert list(sub.frame.columns) == list(sample.columns) and len(sub.frame) == len(sample)
    values = sub.frame.drop(columns="image_id").astype(float).to_numpy()
    if kind == "regression":
        assert np.isfinite(values).all() and sub.probs.shape == (6, 1)
    elif kind == "ordinal":
        assert set(values.ravel()) <= {0, 1, 2, 3}
    else:
        assert ((values >= 0) & (values <= 1)).all()
    if kind == "soft":  # probabilities per class, one column each, rows summing to 1
        assert np.allclose(values.sum(1), 1, atol=1e-5)
    assert sub.score is not None and np.isfinite(sub.score)  # scored against solution.csv as Kaggle would
    assert comp.train["group"].nunique() == 12


def test_group_level_rows_aggregate_images_like_rsna_mammography(tmp_path):
    """RSNA Screening Mammography 2023's layout: several images per breast; train.csv has no prediction_id
    (made from patient_id + laterality), test.csv has it, the sample has one row per prediction_id; scored by
    pF1 at the breast level, in OOF and in the submission."""
    from comp.experiment.oof import row_level
    from comp.predict.predict import predict_test

    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for d in ("train_images", "test_images"):
        (root / d).mkdir(parents=True)
    rows, test_rows = [], []
    for p in range(12):
        for lat in "LR":
            cancer = int((p + (lat == "R")) % 3 == 0)
            for v in range(2):
                iid = f"{p}{lat}{v}"
                img = np.clip(rng.normal(60 + 120 * cancer, 15, (20, 20, 3)), 0, 255).astype(np.uint8)
                (root / "train_images" / str(p)).mkdir(exist_ok=True)
                cv2.imwrite(str(root / "train_images" / str(p) / f"{iid}.png"), img)
                rows.append({"site_id": 1, "patient_id": p, "image_id": iid, "laterality": lat, "cancer": cancer})
    for p in (90, 91):
        (root / "test_images" / str(p)).mkdir()
        for lat in "LR":
            for v in range(3 if lat == "L" else 1):
                iid = f"{p}{lat}{v}"
                cv2.imwrite(str(root / "test_images" / str(p) / f"{iid}.png"),
                            np.full((20, 20, 3), 60 + 40 * v, np.uint8))
                test_rows.append({"patient_id": p, "image_id": iid, "laterality": lat, "prediction_id": f"{p}_{lat}"})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    test = pd.DataFrame(test_rows)
    test.to_csv(root / "test.csv", index=False)
    pd.DataFrame({"prediction_id": test["prediction_id"].unique(), "cancer": 0}).to_csv(
        root / "sample_submission.csv", index=False)
    pd.DataFrame({"prediction_id": ["90_L", "90_R", "91_L", "91_R"], "cancer": [1, 0, 0, 1]}).to_csv(
        root / "solution.csv", index=False)
    cfg = load_config(None, FAST + [f"data.root={root}", f"out_dir={tmp_path / 'runs'}", "task=binary",
                                    "data.id_column=image_id", "data.label_column=cancer",
                                    "data.group_column=patient_id",
                                    "data.train_images=[train_images/*]", "data.test_images=[test_images/*]",
                                    "data.test_csv=test.csv", "data.submission_id_column=prediction_id",
                                    "data.submission_id_parts=[patient_id,laterality]", "metric=pf1",
                                    "predict.aggregate=max", "aug.tta=[identity]", "predict.thresholds=false"])
    fit(cfg, 0)
    fit(cfg, 1)
    oof = Experiment(cfg).oof()
    assert set(oof["row"]) == {f"{p}_{lat}" for p in range(12) for lat in "LR"}
    y, out = row_level(oof, "max")
    firsts = list(dict.fromkeys(oof["row"]))
    assert len(y) == 24 and np.allclose(out[:, 1], oof.groupby("row")["prob_1"].max().loc[firsts].to_numpy())
    assert np.allclose(out.sum(1), 1)
    _, cv, _ = Experiment(cfg).cv()
    from comp.competition_metrics import probabilistic_f1
    assert cv == pytest.approx(probabilistic_f1(y, out[:, 1]))
    sub = make_submission(cfg)
    assert list(sub.frame["prediction_id"]) == ["90_L", "90_R", "91_L", "91_R"]
    comp = load_competition(cfg)
    per_image = predict_test(cfg, comp)[:, 1]
    want = pd.Series(per_image).groupby(comp.test["row"].to_numpy()).max()
    got = sub.frame["cancer"].astype(float).to_numpy()
    assert np.allclose(got, want.loc[sub.frame["prediction_id"]].to_numpy(), atol=1e-6)
    assert sub.score == pytest.approx(probabilistic_f1(np.array([1, 0, 0, 1]), got), abs=1e-6)  # at the row level
    # the submission validates and scores at the row level in submit.py too, and the report's CV table
    from comp.report.report import cv_report
    from comp.submit.kaggle import submit

    path = tmp_path / "sub.csv"
    path.write_text(sub.text)
    done = submit(cfg, path, "rows", dry_run=True)
    assert done["score"] == pytest.approx(sub.score)
    table, report_cv, _ = cv_report(cfg)[:3]
    assert report_cv == pytest.approx(cv) and table.loc[table["fold"] == "oof", "n"].item() == 24
