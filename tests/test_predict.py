"""Fold ensembles with TTA: the ensemble is the (weighted) mean of its folds, TTA views are the exact
flips they claim to be, the validated (EMA) weights are used, and the raw probabilities can be saved.

Fold checkpoints are built directly (a freshly initialised model saved in the training checkpoint's
format, plus an oof.csv) instead of trained: the tests are about what happens after training.
`make_experiment` is shared with the submission, submit and package tests.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_experiment, run_script, write_test_images

from comp.data.augment import tta_view
from comp.errors import UserError
from comp.experiment import Experiment, load_config
from comp.experiment.checkpoint import save as save_atomic
from comp.predict.predict import predict_test, save_probs


def test_two_fold_ensemble_is_the_mean_of_its_folds(tmp_path):
    ex = make_experiment(tmp_path)
    cfg, comp = ex["cfg"], ex["comp"]
    f0, f1 = Experiment(cfg).trained()
    p0 = predict_test(cfg, comp, paths=[f0])
    p1 = predict_test(cfg, comp, paths=[f1])
    both = predict_test(cfg, comp)
    assert both.shape == (len(comp.test), 3)
    assert np.abs(p0 - p1).max() > 1e-4  # two different models, or the test proves nothing
    np.testing.assert_allclose(both, (p0 + p1) / 2, atol=1e-6)
    np.testing.assert_allclose(both.sum(1), 1, atol=1e-5)

    weighted = predict_test(load_config(None, ex["overrides"] + ["predict.fold_weights=cv"]), comp)
    np.testing.assert_allclose(weighted, (0.5 * p0 + 0.6 * p1) / 1.1, atol=1e-6)


def test_mean_logit_ensemble_is_the_softmax_of_the_mean_logit(tmp_path):
    ex = make_experiment(tmp_path, "predict.ensemble=mean_logit")
    cfg, comp = ex["cfg"], ex["comp"]
    f0, f1 = Experiment(cfg).trained()
    # a single fold's output is softmax(its mean logit): its log is that logit up to a per-row constant,
    # which the softmax of the average removes again
    l0 = np.log(predict_test(cfg, comp, paths=[f0]).astype(np.float64))
    l1 = np.log(predict_test(cfg, comp, paths=[f1]).astype(np.float64))
    want = torch.softmax(torch.from_numpy((l0 + l1) / 2), 1).numpy()
    np.testing.assert_allclose(predict_test(cfg, comp), want, atol=1e-5)
    mean_prob = predict_test(load_config(None, ex["overrides"] + ["predict.ensemble=mean_prob"]), comp)
    assert np.abs(mean_prob - want).max() > 1e-7  # the two options do differ


def test_tta_views_are_the_exact_transforms():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    a = x.numpy()
    expect = {"identity": a, "hflip": a[..., ::-1], "vflip": a[..., ::-1, :], "hvflip": a[..., ::-1, ::-1],
              "rot90": np.rot90(a, 1, (2, 3)), "rot270": np.rot90(a, 3, (2, 3)), "transpose": a.swapaxes(2, 3)}
    for view, want in expect.items():
        np.testing.assert_array_equal(tta_view(x, view).numpy(), want, err_msg=view)
    with pytest.raises(UserError, match="unknown view"):
        tta_view(x, "rot45")


def _symmetric_image(size: int, seed: int) -> np.ndarray:
    """An image equal to its own flips, rotations and transpose: f(min(i, n-1-i), min(j, n-1-j)) made
    symmetric in (i, j)."""
    rng = np.random.default_rng(seed)
    half = rng.integers(0, 256, (size // 2, size // 2, 3), dtype=np.uint8)
    half = np.maximum(half, half.transpose(1, 0, 2))  # symmetric under the transpose
    top = np.concatenate([half, half[:, ::-1]], axis=1)
    return np.concatenate([top, top[::-1]], axis=0)


def test_tta_of_flip_symmetric_images_changes_nothing(tmp_path):
    size = 16  # the images are written at image_size, so no resize can break their symmetry
    ex = make_experiment(tmp_path, f"image_size={size}")
    images = [_symmetric_image(size, k) for k in range(9)]
    for img in images:
        assert all(np.array_equal(img, v) for v in (img[::-1], img[:, ::-1], img.transpose(1, 0, 2)))
    write_test_images(ex["root"], images)
    all_views = "aug.tta=[identity,hflip,vflip,hvflip,rot90,rot270,transpose]"
    one = predict_test(load_config(None, ex["overrides"] + ["aug.tta=[identity]"]), ex["comp"])
    every = predict_test(load_config(None, ex["overrides"] + [all_views]), ex["comp"])
    np.testing.assert_allclose(every, one, atol=1e-6)

    # the same on ordinary images does change the prediction: the views are real
    write_test_images(ex["root"], [np.random.default_rng(k).integers(0, 256, (size, size, 3), dtype=np.uint8)
                                   for k in range(9)])
    one = predict_test(load_config(None, ex["overrides"] + ["aug.tta=[identity]"]), ex["comp"])
    every = predict_test(load_config(None, ex["overrides"] + [all_views]), ex["comp"])
    assert np.abs(every - one).max() > 1e-5


@pytest.mark.parametrize("view,flip", [("hflip", 1), ("vflip", 0)])
def test_a_flip_view_equals_predicting_the_mirrored_files(tmp_path, view, flip):
    size = 16
    ex = make_experiment(tmp_path, f"image_size={size}")
    images = [np.random.default_rng(k).integers(0, 256, (size, size, 3), dtype=np.uint8) for k in range(9)]
    write_test_images(ex["root"], images)
    viewed = predict_test(load_config(None, ex["overrides"] + [f"aug.tta=[{view}]"]), ex["comp"])
    write_test_images(ex["root"], [cv2.flip(img, flip) for img in images])
    mirrored = predict_test(load_config(None, ex["overrides"] + ["aug.tta=[identity]"]), ex["comp"])
    np.testing.assert_allclose(viewed, mirrored, atol=1e-6)


def test_the_validated_ema_weights_are_the_ones_used(tmp_path):
    ex = make_experiment(tmp_path, ema=True)
    cfg, comp = ex["cfg"], ex["comp"]
    f0 = Experiment(cfg).trained()[0]
    with_ema = predict_test(cfg, comp, paths=[f0])
    ck = torch.load(f0, weights_only=True)
    plain = tmp_path / "plain" / "fold0" / "best.pt"
    save_atomic({**ck, "eval_weights": "model"}, plain)
    ema_as_model = tmp_path / "emaw" / "fold0" / "best.pt"
    save_atomic({**ck, "model": ck["ema"], "eval_weights": "model"}, ema_as_model)
    np.testing.assert_allclose(with_ema, predict_test(cfg, comp, paths=[ema_as_model]), atol=1e-7)
    assert np.abs(with_ema - predict_test(cfg, comp, paths=[plain])).max() > 1e-5


def test_a_fold_of_another_config_or_other_classes_is_refused(tmp_path):
    ex = make_experiment(tmp_path)
    other = load_config(None, ex["overrides"] + ["image_size=24"])
    with pytest.raises(UserError, match=r"was trained with a different input .*\(image_size 16 -> 24\)"):
        predict_test(other, ex["comp"])
    f0 = Experiment(ex["cfg"]).trained()[0]
    ck = torch.load(f0, weights_only=True)
    save_atomic({**ck, "classes": ["a", "b", "c"]}, f0)
    with pytest.raises(UserError, match="predicts the classes"):
        predict_test(ex["cfg"], ex["comp"], paths=[f0])
    with pytest.raises(UserError, match="no positive validation score"):
        save_atomic({**ck, "best": None}, f0)
        predict_test(load_config(None, ex["overrides"] + ["predict.fold_weights=cv"]), ex["comp"], paths=[f0])


def test_save_probs_csv_and_npy(tmp_path):
    probs = np.array([[0.2, 0.8], [0.6, 0.4]], dtype=np.float32)
    save_probs(tmp_path / "p.csv", ["b", "a"], probs, ["neg", "pos"])
    df = pd.read_csv(tmp_path / "p.csv", dtype={"id": str})
    assert list(df.columns) == ["id", "prob_neg", "prob_pos"] and list(df["id"]) == ["b", "a"]
    np.testing.assert_allclose(df[["prob_neg", "prob_pos"]].to_numpy(), probs, atol=1e-7)
    save_probs(tmp_path / "p.npy", ["b", "a"], probs, ["neg", "pos"])
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), probs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "p.npy"]  # no temporary file left
    with pytest.raises(UserError, match=".csv or .npy"):
        save_probs(tmp_path / "p.txt", ["b", "a"], probs, ["neg", "pos"])
    with pytest.raises(UserError, match="does not exist"):
        save_probs(tmp_path / "nowhere" / "p.csv", ["b", "a"], probs, ["neg", "pos"])


def test_predict_script_writes_the_csv_to_stdout_and_the_probabilities_to_a_file(tmp_path):
    ex = make_experiment(tmp_path)
    res = run_script("predict.py", *ex["overrides"], "--save-probs", str(tmp_path / "test_probs.csv"), check=True)
    sub = pd.read_csv(io.StringIO(res.stdout), dtype=str)
    sample = pd.read_csv(ex["root"] / "sample_submission.csv", dtype=str)
    assert list(sub.columns) == list(sample.columns) and list(sub["id"]) == list(sample["id"])
    probs = pd.read_csv(tmp_path / "test_probs.csv", dtype={"id": str})
    assert list(probs["id"]) == list(sub["id"]) and list(probs.columns) == ["id", "prob_0", "prob_1", "prob_2"]
    assert list(probs.iloc[:, 1:].to_numpy().argmax(1).astype(str)) == list(sub["label"])
    assert "held-out accuracy" in res.stderr and "test probabilities" in res.stderr
