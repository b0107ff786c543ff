"""Stacking with metadata (comp.ensemble.stack, scripts/stack.py) and image embeddings (predict.py
--save-features): a tabular column the images cannot see lifts the stack's honest CV above the image
model's; fold k's level-2 model never sees fold k's rows; features relative to the patient equal hand
computations; saved embeddings are the pooled features the classifier reads."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import FAST, run_main
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from comp.data.competition import load_competition
from comp.ensemble import stack as stack_mod
from comp.ensemble.stack_data import group_features
from comp.errors import UserError
from comp.experiment import Experiment, load_config
from comp.predict.predict import predict_test
from comp.tasks import Task
from comp.train.loop import fit

N, N_TEST = 64, 8
BINARY = Task("binary", ["0", "1"], "sigmoid", positive=1)


@pytest.fixture(autouse=True, scope="module")
def one_openmp_thread():
    """The level-2 models (scikit-learn's HistGradientBoosting) on one OpenMP thread: its threads spin-wait
    for each other, and on cores shared with the other test workers the two level-2 tests took 125 s where
    one thread takes 5 s (measured on the 2-core machine, others testing beside)."""
    with threadpool_limits(1, user_api="openmp"):
        yield


def script(name: str, *argv: str) -> tuple[str, str]:
    """`python scripts/<name> ARGV` in this process (conftest.run_main); its (stdout, stderr), asserting exit
    code 0."""
    code, out, err = run_main(name, *argv)
    assert code == 0, (code, err[-3000:])
    return out, err


def write_metadata_competition(root: Path) -> list[str]:
    """ISIC 2020's layout in miniature: images of pure noise (no signal), a target that follows the `sex`
    column (90% of rows), `age` as noise, two images per patient; test.csv carries the same columns."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()

    def image(path: Path) -> None:
        cv2.imwrite(str(path), np.clip(rng.normal(120, 40, (16, 16, 3)), 0, 255).astype(np.uint8))

    rows = []
    for k in range(N):
        sex = "female" if (k // 2) % 2 == 0 else "male"
        target = int((sex == "female") != (rng.random() < 0.1))
        image(root / "train" / f"im{k:03d}.png")
        rows.append({"image_name": f"im{k:03d}", "patient_id": f"p{k // 2}", "sex": sex,
                     "age_approx": float(rng.integers(20, 80)), "target": target})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    test = []
    for k in range(N_TEST):
        image(root / "test" / f"t{k:02d}.png")
        test.append({"image_name": f"t{k:02d}", "patient_id": f"q{k // 2}",
                     "sex": "female" if (k // 2) % 2 == 0 else "male", "age_approx": 50.0})
    test = pd.DataFrame(test)
    test.to_csv(root / "test.csv", index=False)
    test[["image_name"]].assign(target=0).to_csv(root / "sample_submission.csv", index=False)
    test[["image_name"]].assign(target=(test["sex"] == "female").astype(int)).to_csv(root / "solution.csv",
                                                                                     index=False)
    return [f"data.root={root}", "task=binary", "data.id_column=image_name", "data.label_column=target",
            "data.group_column=patient_id", "data.test_csv=test.csv", "data.solution_csv=solution.csv",
            "metric=auc", "aug.tta=[identity]", "data.tabular_columns=[sex,age_approx]"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The competition with both folds of an image model trained (once for the module)."""
    tmp = tmp_path_factory.mktemp("stack")
    over = FAST + write_metadata_competition(tmp / "data") + [f"out_dir={tmp / 'runs'}"]
    cfg = load_config(None, over)
    fit(cfg, 0)
    fit(cfg, 1)
    return {"tmp": tmp, "over": over, "cfg": cfg}


def test_stack_with_metadata_beats_the_image_model_and_is_an_experiment(trained):
    tmp, over = trained["tmp"], trained["over"]
    out = tmp / "stack"
    stdout, _ = script("stack.py", *over[:-1], "--out", str(out), "--min-samples-leaf", "4",
                       "--columns", "sex", "age_approx", over[-1])  # an override after a list option: the config's
    summary = json.loads((out / "stack.json").read_text())
    assert "sex" in summary["features"] and "e0_prob_1_minus_group" in summary["features"]
    assert summary["cv_images"][0] < 0.75  # noise images: the image model cannot see the target
    assert summary["cv_stack"] > summary["cv_images"][0] + 0.2 and summary["cv_stack"] > 0.8
    assert f"CV auc {summary['cv_stack']:.4f}" in stdout and f"CV auc {summary['cv_images'][0]:.4f}" in stdout
    oof = Experiment.open(out).oof()  # the kit's OOF format: a blendable experiment, scored as any
    image_oof = Experiment.open(tmp / "runs").oof()
    assert sorted(oof["id"]) == sorted(image_oof["id"]) and list(oof.columns[:2]) == ["id", "label"]
    assert roc_auc_score(oof["label"], oof["prob_1"]) == pytest.approx(summary["cv_stack"])
    sub = pd.read_csv(out / "submission.csv")
    assert list(sub.columns) == ["image_name", "target"] and len(sub) == N_TEST
    assert summary["held_out"] is not None and summary["held_out"] > 0.8  # test sex carries the answer
    probs = pd.read_csv(out / "test_probs.csv")
    assert np.allclose(probs["prob_1"], sub["target"]) and np.allclose(probs[["prob_0", "prob_1"]].sum(axis=1), 1)
    assert (out / "folds.csv").read_bytes() == (tmp / "runs" / "folds.csv").read_bytes()
    own = load_config(str(out / "config.yaml"), [])  # the stack is an experiment: report.py and blend.py read it
    assert Path(own.out_dir) == out and own.metric == "auc"
    before = (out / "stack.json").read_bytes()
    with pytest.raises(UserError, match="already holds files"):  # never overwritten without --force
        stack_mod.stack(load_config(None, over), out)
    assert (out / "stack.json").read_bytes() == before


def test_fold_k_model_never_sees_fold_k_rows():
    """A row-id feature with random targets: fitted in-sample it memorises them (AUC ~1); cross-fitted
    it cannot (AUC ~0.5): the OOF is honest. And each fold's model is fitted on the other folds' ids only."""
    rng = np.random.default_rng(1)
    n = 200
    x = pd.DataFrame({"rowid": rng.permutation(n).astype(float)})
    y = rng.integers(0, 2, n)
    folds = np.arange(n) % 4
    params = {"min_samples_leaf": 1, "max_iter": 100, "learning_rate": 0.3}
    in_sample = stack_mod.fit_predict(BINARY, x, y, [x], params)[0]
    assert roc_auc_score(y, in_sample[:, 1]) > 0.95  # the feature would leak if fold k's rows were seen
    oof, _ = stack_mod.fit_folds(BINARY, x, y, folds, None, params)
    assert abs(roc_auc_score(y, oof[:, 1]) - 0.5) < 0.15
    seen: list[tuple[set, set]] = []
    real = stack_mod.fit_predict

    def spy(task, xt, yt, tests, params, seed=0):
        seen.append((set(xt["rowid"]), set(tests[0]["rowid"])))
        return real(task, xt, yt, tests, params, seed)

    stack_mod.fit_predict = spy
    try:
        stack_mod.fit_folds(BINARY, x, y, folds, None, params)
    finally:
        stack_mod.fit_predict = real
    assert len(seen) == 4 and all(not (fitted & held) and len(fitted) == 150 for fitted, held in seen)


def test_group_features_equal_hand_computations():
    values = pd.DataFrame({"p": [0.1, 0.5, 0.3, 0.9, 0.2, 0.2]})
    groups = np.array(["a", "a", "a", "b", "c", "c"])
    f = group_features(values, groups)
    assert np.allclose(f["p_minus_group"], [0.1 - 0.3, 0.5 - 0.3, 0.0, 0.0, 0.0, 0.0])
    assert np.allclose(f["p_group_rank"], [1 / 3, 1.0, 2 / 3, 1.0, 0.75, 0.75])  # ties share the mean rank
    assert list(f["group_count"]) == [3, 3, 3, 1, 2, 2]


def test_multiclass_and_regression_level2_outputs():
    rng = np.random.default_rng(2)
    x = pd.DataFrame({"a": rng.normal(size=90), "site": pd.Categorical(rng.choice(["head", "torso"], 90))})
    y = (x["a"] > 0).astype(int) + (x["site"] == "torso").astype(int)
    task = Task("multiclass", ["0", "1", "2"], "softmax")
    oof, test = stack_mod.fit_folds(task, x, y.to_numpy(), np.arange(90) % 3, x.head(5), {"min_samples_leaf": 5})
    assert oof.shape == (90, 3) and np.allclose(oof.sum(1), 1) and test.shape == (5, 3)
    assert (oof.argmax(1) == y.to_numpy()).mean() > 0.8
    labels = Task("multilabel", ["pos_a", "torso"], "sigmoid")
    ym = np.stack([(x["a"] > 0).to_numpy(), (x["site"] == "torso").to_numpy()], 1).astype(float)
    oof, _ = stack_mod.fit_folds(labels, x, ym, np.arange(90) % 3, None, {"min_samples_leaf": 5})
    assert oof.shape == (90, 2) and ((oof > 0.5) == ym).mean() > 0.9  # one classifier per label
    reg = Task("regression", ["v"], "regression")
    oof, _ = stack_mod.fit_folds(reg, x, 3 * x["a"].to_numpy(), np.arange(90) % 3, None, {"min_samples_leaf": 5})
    assert oof.shape == (90, 1) and np.corrcoef(oof[:, 0], x["a"])[0, 1] > 0.9


def test_save_features_are_the_pooled_inputs_of_the_classifier(trained):
    cfg, tmp = trained["cfg"], trained["tmp"]
    comp = load_competition(cfg)
    stdout, stderr = script("predict.py", *trained["over"], "--save-features", str(tmp / "feats"))
    assert "image features:" in stderr and stdout.startswith("image_name,target")
    ids = pd.read_csv(tmp / "feats" / "train_ids.csv", dtype={"id": str})
    train = np.load(tmp / "feats" / "train.npy")
    exp = Experiment(cfg)
    model = exp.load_model(exp.trained()[0]).model
    assert train.shape == (N, model.num_features) and train.dtype == np.float32
    # the classifier on the saved OOF rows gives the fold's own OOF outputs, image for image
    oof = exp.oof().set_index("id").loc[ids["id"]]
    logits = []
    for k, path in enumerate(exp.trained()):
        m = exp.load_model(path).model
        logits.append(m.fc(torch.from_numpy(train[(ids["fold"] == k).to_numpy()])))
    p = torch.sigmoid(torch.cat(logits)[:, 0]).detach().numpy()
    assert np.allclose(p, oof["prob_1"].to_numpy(), atol=1e-5)
    test_ids = pd.read_csv(tmp / "feats" / "test_ids.csv", dtype={"id": str})["id"]
    assert list(test_ids) == list(comp.test["id"])
    tests = [np.load(tmp / "feats" / f"test_fold{k}.npy") for k in (0, 1)]
    assert all(t.shape == (N_TEST, model.num_features) for t in tests)
    folds = [exp.load_model(path).model for path in exp.trained()]
    per_fold = [torch.sigmoid(m.fc(torch.from_numpy(t))[:, 0]).detach().numpy()
                for m, t in zip(folds, tests, strict=True)]
    mean = np.mean(per_fold, 0)
    assert np.allclose(mean, predict_test(cfg, comp)[:, 1], atol=1e-5)


def test_experiments_on_other_folds_are_refused(trained):
    tmp, cfg = trained["tmp"], trained["cfg"]
    for k in (0, 1):  # the same images and outputs, but each fold's rows filed under the other fold
        (tmp / "swapped" / f"fold{1 - k}").mkdir(parents=True)
        (tmp / "swapped" / f"fold{1 - k}" / "oof.csv").write_bytes((tmp / "runs" / f"fold{k}" / "oof.csv").read_bytes())
    with pytest.raises(UserError, match="not trained on the same folds"):
        stack_mod.stack(cfg, tmp / "bad", [str(tmp / "runs"), str(tmp / "swapped")])
    assert not (tmp / "bad").exists()


def test_multihead_blends_by_mean_and_weights_not_by_a_stack():
    """task=multihead: the weighted blend minimises the sum of the heads' cross-entropies and keeps each head a
    distribution; a level-2 stack is refused in one phrase."""
    from comp.ensemble.methods import applicable, fit, surrogate
    from comp.tasks import Task

    task = Task("multihead", ["b_h", "b_i", "l_h", "l_l", "l_x"], "multihead", heads=[["b", 2], ["l", 3]])
    rng = np.random.default_rng(0)
    y = np.zeros((20, 5))
    y[np.arange(20), rng.integers(0, 2, 20)] = 1
    y[np.arange(20), 2 + rng.integers(0, 3, 20)] = 1

    def member(noise: float) -> np.ndarray:
        z = np.log(np.clip(y + noise * rng.random((20, 5)), 1e-3, None))
        return np.concatenate([np.exp(z[:, :2]) / np.exp(z[:, :2]).sum(1, keepdims=True),
                               np.exp(z[:, 2:]) / np.exp(z[:, 2:]).sum(1, keepdims=True)], axis=1)

    outs = [member(0.2), member(3.0)]
    ce = -np.mean(np.log(np.clip((y[:, :2] * outs[0][:, :2]).sum(1), 1e-6, 1))
                  + np.log(np.clip((y[:, 2:] * outs[0][:, 2:]).sum(1), 1e-6, 1)))
    assert surrogate(task, y, outs[0]) == pytest.approx(ce, rel=1e-4)
    blended = fit("weighted", outs, y, task)(outs)
    assert np.allclose(blended[:, :2].sum(1), 1) and np.allclose(blended[:, 2:].sum(1), 1)
    assert surrogate(task, y, blended) <= surrogate(task, y, np.mean(outs, axis=0)) + 1e-9
    assert "multihead" in applicable("stack", task, "log_loss")
def test_a_value_with_its_sigma_is_not_stacked(tmp_path):
    """The level-2 trees predict one value: an experiment of a Laplace head (value, sigma) is refused in one line
    pointing at the blends that mix it, before anything is written."""
    from comp.ensemble.stack import stack as run_stack

    cfg = load_config(None, [f"out_dir={tmp_path / 'run'}", "task=regression", "train.loss=laplace",
                             "metric=laplace_log_likelihood", "folds.n_folds=2"])
    exp = Experiment(cfg)
    for k in (0, 1):
        exp.fold(k).dir.mkdir(parents=True)
        pd.DataFrame({"id": [f"a{k}"], "label": [1.0], "value": [1.0], "sigma": [0.5]}).to_csv(exp.fold(k).oof,
                                                                                             index=False)
    with pytest.raises(UserError, match="stacking a value with its uncertainty .* blend it"):
        run_stack(cfg, tmp_path / "stack")
    assert not (tmp_path / "stack").exists()


def test_a_mil_experiment_stacks_as_any_rows(tmp_path_factory, tmp_path):
    """A MIL experiment (a row: a study of four series) stacks: its OOF rows are the competition's rows."""
    from mil_fold import trained_mil_fold

    mil = trained_mil_fold(tmp_path_factory, both=True)
    code, _, err = run_main("stack.py", "--config", mil["config"], "--out", str(tmp_path / "stack"),
                            "--min-samples-leaf", "1", *mil["overrides"])
    assert code == 0, err[-3000:]
    sub = pd.read_csv(tmp_path / "stack" / "submission.csv", dtype=str)
    assert list(sub.columns) == ["BraTS21ID", "MGMT_value"] and sorted(sub["BraTS21ID"]) == ["1", "13"]
