"""Fold ensembles with TTA (comp.predict.predict, scripts/predict.py): the ensemble is the (weighted) mean of
its folds, TTA views are the exact flips they claim to be, the validated (EMA) weights are used, the raw
probabilities can be saved; and what goes wrong while predicting: a bad test image fails by name or gets the
class prior, out of memory or a full disk leaves the earlier probabilities file as it was.

Fold checkpoints are built directly (conftest.make_experiment: a freshly initialised model saved in the
training checkpoint's format, plus an oof.csv) where the tests are about what happens after training; the
faults run on a copy of the tiny trained fold (conftest.trained_fixture).
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from faults import disk_full
from helpers import copy_of, make_experiment, one_error, run_main, snapshot, trained_fixture, write_test_images

import comp.predict.predict as predict_mod
from comp.data.augment import tta_view
from comp.errors import UserError
from comp.experiment import Experiment, load_config
from comp.experiment.checkpoint import save as save_atomic
from comp.predict.predict import predict_test, save_probs


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    return trained_fixture(tmp_path_factory, "fold_ensemble")


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


@pytest.mark.parametrize("metric", ["log_loss", "mae"])
def test_cv_fold_weights_favour_the_better_fold_of_a_lower_is_better_metric(tmp_path, metric, capsys):
    """fold 0 scored 0.5, fold 1 0.6: where lower is better fold 0 is the better one and weighs 1/0.5 against
    1/0.6 (its inverse score), not 0.5 against 0.6 (optuna-examples#31: a loss read as a score)."""
    from comp.experiment.model import FoldModel
    from comp.predict.predict import fold_weight

    if metric == "mae":  # a regression (bone age): the weight alone, from each checkpoint's own metric
        fold = [FoldModel(Path(f"fold{k}/best.pt"), None, None, [], {}, {"best": b, "metric": "mae"})
                for k, b in enumerate((0.5, 0.6))]
        assert fold_weight(fold[0], "cv") == pytest.approx(2.0) and fold_weight(fold[1], "cv") == pytest.approx(1 / 0.6)
        old = FoldModel(Path("best.pt"), None, None, [], {}, {"best": 4.0})  # no metric recorded: the config's
        assert fold_weight(old, "cv", "mae") == pytest.approx(0.25) and fold_weight(old, "cv", "auc") == 4.0
        return
    ex = make_experiment(tmp_path, f"metric={metric}")
    cfg, comp = ex["cfg"], ex["comp"]
    f0, f1 = Experiment(cfg).trained()
    p0, p1 = predict_test(cfg, comp, paths=[f0]), predict_test(cfg, comp, paths=[f1])
    weighted = predict_test(load_config(None, ex["overrides"] + ["predict.fold_weights=cv"]), comp)
    np.testing.assert_allclose(weighted, (p0 / 0.5 + p1 / 0.6) / (1 / 0.5 + 1 / 0.6), atol=1e-6)
    share = (1 / 0.5) / (1 / 0.5 + 1 / 0.6)  # the log gives each fold's share of the ensemble
    assert f"fold0: validation {metric} 0.5000, weight {share:.3f} of the ensemble" in capsys.readouterr().err


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


def test_output_file_is_written_only_when_prediction_succeeds(tmp_path):
    """predict.py -o: the same CSV as stdout; a refusal (another image_size) leaves an earlier file whole,
    where `> submission.csv` would have emptied it."""
    ex = make_experiment(tmp_path)
    code, out, err = run_main("predict.py", *ex["overrides"])
    assert code == 0, err
    sub = tmp_path / "submission.csv"
    code, printed, err = run_main("predict.py", *ex["overrides"], "-o", str(sub))
    assert code == 0 and printed == "" and sub.read_text() == out, err
    code, _, err = run_main("predict.py", *ex["overrides"], "image_size=24", "-o", str(sub))
    line = one_error(code, err)  # names the setting to predict with, not "drop the override" (a default is none)
    assert code == 2 and "image_size 16 -> 24" in line and "image_size=16" in line and sub.read_text() == out
    code, _, err = run_main("predict.py", *ex["overrides"], "-o", str(tmp_path / "nowhere" / "s.csv"))
    assert "does not exist" in one_error(code, err)


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
    code, out, err = run_main("predict.py", *ex["overrides"], "--save-probs", str(tmp_path / "test_probs.csv"))
    assert code == 0, err
    sub = pd.read_csv(io.StringIO(out), dtype=str)
    sample = pd.read_csv(ex["root"] / "sample_submission.csv", dtype=str)
    assert list(sub.columns) == list(sample.columns) and list(sub["id"]) == list(sample["id"])
    probs = pd.read_csv(tmp_path / "test_probs.csv", dtype={"id": str})
    assert list(probs["id"]) == list(sub["id"]) and list(probs.columns) == ["id", "prob_0", "prob_1", "prob_2"]
    assert list(probs.iloc[:, 1:].to_numpy().argmax(1).astype(str)) == list(sub["label"])
    assert "held-out accuracy" in err and "test probabilities" in err


# --- what goes wrong while predicting -----------------------------------------------------------------


def test_a_bad_test_image_fails_by_name_or_gets_the_class_prior(trained, tmp_path):
    ex = copy_of(trained, tmp_path / "ex", "images.cache=false")
    bad = ex["root"] / "test" / "test_004.png"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated

    code, _, err = run_main("predict.py", *ex["overrides"], "num_workers=1")  # read in a worker process
    one_error(code, err, "truncated", str(bad))

    probs = tmp_path / "probs.npy"
    code, out, err = run_main("predict.py", *ex["overrides"], "predict.on_bad_image=prior", "--save-probs",
                              str(probs))
    assert code == 0, err
    assert len(out.strip().splitlines()) == 1 + 9  # header and every test image
    assert f"test image {bad} cannot be read" in err
    p = np.load(probs)
    np.testing.assert_allclose(p[4], [1 / 3] * 3, rtol=1e-6)  # 10 training images per class: uniform prior
    assert not np.allclose(p[[0, 1, 2, 3, 5, 6, 7, 8]], 1 / 3, atol=1e-3)  # the others are the models'


def _out_of_memory(monkeypatch, probs: Path) -> None:
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total "
                                     "capacity; 14.90 GiB already allocated)\nmore lines of allocator detail")
    monkeypatch.setattr(predict_mod, "forward_views", oom)


def _disk_full(monkeypatch, probs: Path) -> None:
    disk_full(monkeypatch, probs.name)


# name -> (the fault, the --save-probs file, extra overrides, what the error line must say)
FAULTS = {
    "out of memory": (_out_of_memory, "probs.npy", ["batch_size=32"],
                      "out of memory (GPU); try a smaller batch_size (now 32: e.g. batch_size=16)"),
    "disk full .csv": (_disk_full, "probs.csv", [], "could not write --save-probs {probs}: No space left on device"),
    "disk full .npy": (_disk_full, "probs.npy", [], "could not write --save-probs {probs}: No space left on device"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_failed_prediction_writes_nothing_and_keeps_the_earlier_probabilities(trained, tmp_path, monkeypatch,
                                                                                 fault):
    inject, name, extra, needle = FAULTS[fault]
    ex = copy_of(trained, tmp_path / "ex")
    probs = tmp_path / name
    probs.write_bytes(b"earlier probabilities")
    inject(monkeypatch, probs)
    before = snapshot(ex["base"])
    code, out, err = run_main("predict.py", *ex["overrides"], *extra, "--save-probs", str(probs))
    one_error(code, err, needle.format(probs=probs))
    assert out == "" and probs.read_bytes() == b"earlier probabilities" and snapshot(ex["base"]) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ex", name]  # no temporary left behind


def test_folds_and_views_of_a_value_with_its_sigma_average_as_a_mixture():
    """predict.py's fold ensemble (and the TTA views, through the same moments) of a scale head: the mixture's
    mean and sd, with the folds' weights; the mean of the sigmas would forget the folds' disagreement."""
    from types import SimpleNamespace

    from comp.tasks import Task

    task = Task("regression", ["FVC"], "regression", loss_name="laplace")
    models = [SimpleNamespace(task=task), SimpleNamespace(task=task)]
    cfg = load_config(None, ["task=regression", "train.loss=laplace", "metric=laplace_log_likelihood"])
    outs = [torch.tensor([[100.0, 10.0]]), torch.tensor([[120.0, 20.0]])]
    got = predict_mod.ensemble_mean(cfg, models, outs)
    np.testing.assert_allclose(got, [[110.0, np.sqrt(350.0)]], rtol=1e-6)
    views = [task.to_moments(o) for o in outs]  # what forward_views averages for a scale head (model_outputs)
    np.testing.assert_allclose(task.from_moments((views[0] + views[1]) / 2).numpy(), got, rtol=1e-6)
    prior = predict_mod.class_prior(SimpleNamespace(train=None, targets=lambda _: np.array([1.0, 3.0])), task)
    np.testing.assert_allclose(prior, [2.0, 1.0])  # an unreadable image gets the targets' mean and sd


def test_an_image_model_with_a_laplace_head_trains_and_predicts_the_folds_mixture(tmp_path):
    """task=regression, train.loss=laplace on images: two folds trained, OOF with value and sigma, and the test
    outputs of both folds the mixture of each fold's own (the TTA views averaged as moments inside each)."""
    from helpers import FAST, write_competition

    from comp.data.competition import load_competition
    from comp.train.loop import fit

    over = FAST + write_competition(tmp_path / "data", "regression") + [
        f"out_dir={tmp_path / 'run'}", "train.loss=laplace", "metric=laplace_log_likelihood",
        "aug.tta=[identity,hflip]"]
    cfg = load_config(None, over)
    for k in (0, 1):
        fit(cfg, k)
    oof = pd.read_csv(Experiment(cfg).fold(0).oof)
    assert {"value", "sigma"} <= set(oof.columns) and (oof["sigma"] > 0).all()
    comp = load_competition(cfg)
    both = predict_test(cfg, comp)
    each = [predict_test(load_config(None, over + [f"predict.folds=[{k}]"]), comp) for k in (0, 1)]
    assert both.shape == (len(comp.test), 2) and (both[:, 1] > 0).all()
    from comp.tasks import Task

    np.testing.assert_allclose(both, Task("regression", ["boneage"], "regression", loss_name="laplace").mix(each),
                               rtol=1e-4)


def test_a_sample_with_a_value_and_a_confidence_column_gets_both(tmp_path):
    """The image path's submission of a Laplace head: a sample `image_id,boneage,Confidence` is written from the
    value and the sigma (predict.output value_sigma), validated, and scored on held-out answers with the metric."""
    from helpers import FAST, write_competition

    from comp.data.competition import load_competition
    from comp.predict.submission import make_submission
    from comp.train.loop import fit

    root = tmp_path / "data"
    over = FAST + write_competition(root, "regression") + [
        f"out_dir={tmp_path / 'run'}", "train.loss=laplace", "metric=laplace_log_likelihood"]
    sample = pd.read_csv(root / "sample_submission.csv").assign(Confidence=100)
    sample.to_csv(root / "sample_submission.csv", index=False)
    cfg = load_config(None, over)
    for k in (0, 1):
        fit(cfg, k)
    sub = make_submission(cfg)
    comp = load_competition(cfg)
    both = predict_test(cfg, comp)
    assert list(sub.frame.columns) == ["image_id", "boneage", "Confidence"]
    order = [list(comp.test["id"]).index(i) for i in sub.frame["image_id"]]
    np.testing.assert_allclose(sub.frame[["boneage", "Confidence"]].to_numpy(), both[order], rtol=1e-5)
    assert sub.score is not None and np.isfinite(sub.score)
