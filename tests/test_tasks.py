"""Every task (comp/tasks.py) through the one loop: a labels CSV of its kind → folds → one short fold →
OOF and CV score → the fold ensemble → a submission validated against the sample; and the task's pieces
(loss, activation, mixing of targets) against their definitions."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from helpers import FAST, LABELS, write_competition
from timm.data import Mixup

from comp.data.competition import load_competition
from comp.data.folds import split
from comp.experiment import Experiment, load_config
from comp.predict.submission import make_submission
from comp.tasks import Task, make_task, mix_matrix
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


def test_group_column_keeps_patients_whole_and_multilabel_folds_stratify(tmp_path):
    cfg = load_config(None, FAST + write_competition(tmp_path / "d", "multilabel", n=40) + ["folds.n_folds=4",
                                                                                           "metric=auc"])
    comp = load_competition(cfg)
    fold = split(comp.train, 4, 42, grouped=True)
    assert comp.train.assign(fold=fold).groupby("group")["fold"].nunique().max() == 1
    y = comp.targets(comp.train)
    for k in range(4):  # every label's positives spread over every fold (iterative stratification)
        assert (y[fold.to_numpy() == k].sum(0) > 0).all()


def test_losses_and_activations_follow_their_definitions():
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    soft = torch.rand(6, 3)
    soft = soft / soft.sum(1, keepdim=True)
    t = Task("multiclass", LABELS, "softmax", soft=True)
    kl = F.kl_div(logits.log_softmax(1), soft, reduction="batchmean")
    entropy = -(soft * soft.log()).sum(1).mean()
    assert torch.allclose(t.loss(logits, soft), kl + entropy, atol=1e-6)  # soft CE = KL + H(targets)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    b = Task("binary", ["benign", "malignant"], "sigmoid", positive=1)
    want = F.binary_cross_entropy_with_logits(logits[:, 0], y.float())
    assert torch.allclose(b.loss(logits[:, :1], y), want)
    p = b.activate(logits[:, :1])
    assert torch.allclose(p[:, 1], torch.sigmoid(logits[:, 0])) and torch.allclose(p.sum(1), torch.ones(6))
    flipped = Task("binary", ["malignant", "benign"], "sigmoid", positive=0)
    assert torch.allclose(flipped.loss(logits[:, :1], 1 - y), want)  # positive first: y==0 is the positive
    r = Task("regression", ["boneage"], "regression").fit_norm(np.array([10.0, 20.0, 30.0]))
    assert r.mean == 20.0 and r.std == pytest.approx(np.std([10.0, 20.0, 30.0]))
    assert torch.allclose(r.activate(torch.tensor([[1.0]])), torch.tensor([[20.0 + r.std]]))
    v = torch.tensor([20.0 + r.std])
    assert r.loss(torch.tensor([[1.0]]), v).item() == pytest.approx(0.0, abs=1e-6)


def test_mixup_matrix_mixes_targets_as_the_images():
    np.random.seed(0)
    mixup = Mixup(mixup_alpha=0.4, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=4)
    x = torch.arange(4, dtype=torch.float32).reshape(4, 1, 1, 1).expand(4, 3, 2, 2).clone()
    x0 = x.clone()
    mixed, m = mix_matrix(mixup, x)
    assert torch.allclose(m.sum(1), torch.ones(4))
    assert torch.allclose(mixed[:, 0, 0, 0], m @ x0[:, 0, 0, 0])  # the targets' matrix mixed the images too
    t = Task("multiclass", LABELS, "softmax")
    y = torch.tensor([0, 1, 2, 0])
    dense = t.dense(y, 0.1)
    old = Mixup(mixup_alpha=0.4, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=3)
    np.random.seed(1)
    _, want = old(x0.clone(), y)
    np.random.seed(1)
    _, m = mix_matrix(mixup, x0.clone())
    assert torch.allclose(m @ dense, want, atol=1e-6)  # timm's own mixing of smoothed one-hot targets


def test_bad_task_settings_are_named(tmp_path):
    from comp.config import read_config  # the schema's reader: make_task's own checks, under load_config's
    from comp.errors import UserError

    cfg = read_config(None, FAST + ["task=multilabel", "model.head=regression"])
    with pytest.raises(UserError, match="model.head"):
        make_task(cfg, LABELS)
    with pytest.raises(UserError, match="model.head"):  # the one loader refuses it when the config loads
        load_config(None, FAST + ["task=multilabel", "model.head=regression", "metric=auc"])
    cfg = read_config(None, FAST + ["task=binary"])
    with pytest.raises(UserError, match="two classes"):
        make_task(cfg, LABELS)
    over = write_competition(tmp_path / "d", "multilabel")
    pd.read_csv(tmp_path / "d" / "train.csv").assign(ngt=2).to_csv(tmp_path / "d" / "train.csv", index=False)
    with pytest.raises(UserError, match=r"train.csv: row 2 column 'ngt' has '2'"):
        load_competition(load_config(None, FAST + over + ["metric=auc"]))


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


def test_binary_decision_threshold_is_tuned_on_oof_and_kept_only_when_honest(tmp_path):
    """metric=pf1: a threshold on P(positive) fit on OOF, kept when its cross-fitted gain is positive; the
    submission then holds 0/1 (the RSNA 2023 winners' trick); noise OOF keeps the probabilities."""
    from comp.predict import cutoff

    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.1).astype(int)
    p = np.clip(0.05 + 0.25 * y + rng.normal(0, 0.08, 400), 0, 1)  # informative but badly calibrated
    folds = np.arange(400) % 4
    t = cutoff.choose("pf1", y, p, folds)
    assert t["method"] == "cutoff" and t["gain_honest"] > 0.2
    best = max(cutoff._f1(y, p >= c) for c in np.unique(p))
    assert t["score_tuned"] == pytest.approx(best)  # the search finds the best cut over the observed values
    noise = cutoff.choose("f1", y, rng.random(400), folds)
    assert noise["gain_honest"] is not None
    over = write_competition(tmp_path / "data", "binary", n=32)
    cfg = load_config(None, FAST + over + [f"out_dir={tmp_path / 'runs'}", "metric=pf1", "epochs=2",
                                           "aug.tta=[identity]"])
    fit(cfg, 0)
    fit(cfg, 1)
    sub = make_submission(cfg)
    import json
    saved = json.loads((tmp_path / "runs" / "thresholds.json").read_text())
    values = sub.frame["target"].astype(float)
    if saved["method"] == "cutoff":
        assert set(values) <= {0.0, 1.0}
        assert np.array_equal(values.to_numpy(), (sub.probs[:, saved["positive"]] >= saved["cutoff"]).astype(float))
    else:
        assert np.allclose(values.to_numpy(), sub.probs[:, saved["positive"]])
