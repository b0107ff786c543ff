"""Blending experiments (comp.ensemble.methods, comp.ensemble.blend, scripts/blend.py): leak-free fitting (a
member of pure noise gets ~0 weight; the honest CV is never above the in-sample one), every task's output
shape through synthetic OOF files, one real pair of tiny trained recipes end to end to a validated
submission (the script run in-process), and the refusal of experiments trained on different folds."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from helpers import FAST, one_error, run_main, write_tiny_competition

from comp.config import to_yaml
from comp.ensemble import blend as sb
from comp.ensemble import methods as bl
from comp.errors import UserError
from comp.experiment import Experiment, load_config
from comp.experiment.oof import write_oof
from comp.tasks import Task
from comp.train.loop import fit

N_FOLDS = 4


def write_member(root: Path, name: str, y: np.ndarray, out: np.ndarray, task: Task, over: list[str],
                 folds: np.ndarray) -> object:
    """A synthetic experiment: folds.csv and every fold's oof.csv written as training writes them."""
    out_dir = root / name
    ids = [f"im{i:04d}" for i in range(len(y))]
    out_dir.mkdir(parents=True)
    pd.DataFrame({"id": ids, "fold": folds}).to_csv(out_dir / "folds.csv", index=False)
    for k in range(N_FOLDS):
        sel = folds == k
        write_oof(out_dir / f"fold{k}" / "oof.csv", [i for i, s in zip(ids, sel, strict=True) if s], y[sel],
                  out[sel], task)
    return load_config(None, [f"out_dir={out_dir}", f"folds.n_folds={N_FOLDS}", *over])


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_noise_member_gets_no_weight_and_honest_cv_is_not_above_in_sample(tmp_path):
    rng = np.random.default_rng(0)
    n, c = 400, 3
    y = rng.integers(0, c, n)
    folds = np.arange(n) % N_FOLDS
    task = Task(kind="multiclass", names=["a", "b", "c"], head="softmax")
    model = softmax(2.0 * np.eye(c)[y] + rng.normal(0, 1.2, (n, c)))  # a real, imperfect model
    noise = rng.dirichlet(np.ones(c), n)  # carries nothing
    cfgs = [write_member(tmp_path, nm, y, o, task, ["metric=log_loss"], folds)
            for nm, o in (("model", model), ("noise", noise))]
    members = [sb.load_member(cfg) for cfg in cfgs]
    sb.check_compatible(members)
    res = sb.evaluate(members)
    w = res.weights
    assert w[1] < 0.03 and abs(sum(w) - 1) < 1e-9 and min(w) >= 0, w
    t = res.table.set_index("name")
    for method in ("weighted", "stack"):  # log loss: lower is better; honest is never better than in-sample
        assert t.loc[f"blend:{method}", "cv_honest"] >= t.loc[f"blend:{method}", "cv_in_sample"] - 1e-9
    # the weighted blend stays within noise of the real model; the plain mean is dragged down by the noise
    assert t.loc["blend:weighted", "cv_honest"] < t.loc["model", "cv_honest"] + 0.01
    assert t.loc["blend:mean", "cv_honest"] > t.loc["model", "cv_honest"] + 0.05
    assert "blend:rank" not in t.index  # log loss is not a rank metric
    assert res.method in ("weighted", "stack") and res.corr.shape == (2, 2)
    # each fold's weights come from the other folds only: the held-out fold's own rows (moved here) never
    # enter them, so fold 0 is blended with the weights of folds 1..3, moved or not
    moved = [model.copy(), noise.copy()]
    moved[0][folds == 0] = np.roll(moved[0][folds == 0], 1, axis=1)
    b = bl.honest("weighted", moved, y, folds, task)
    w_rest = bl.fit_weights([model[folds != 0], noise[folds != 0]], y[folds != 0], task)
    assert np.allclose(b[folds == 0], np.tensordot(w_rest, np.stack(moved)[:, folds == 0], axes=1))


def _case(kind: str, rng: np.random.Generator, n: int):
    if kind == "multilabel":
        y = (rng.random((n, 3)) < 0.4).astype(float)
        task = Task(kind="multilabel", names=["ett", "ngt", "cvc"], head="sigmoid")
        outs = [np.clip(y * 0.5 + rng.random((n, 3)) * s, 0.01, 0.99) for s in (0.6, 0.9)]
        return y, task, outs, ["task=multilabel", "data.label_columns=[ett,ngt,cvc]", "metric=auc"]
    if kind == "regression":
        y = rng.normal(100, 30, n)
        task = Task(kind="regression", names=["boneage"], head="regression")
        outs = [(y + rng.normal(0, s, n))[:, None] for s in (10, 20)]
        return y, task, outs, ["task=regression", "data.label_column=boneage", "metric=mae"]
    if kind in ("binary", "binary_f1"):
        y = rng.integers(0, 2, n)
        task = Task(kind="binary", names=["0", "1"], head="sigmoid")
        ps = [1 / (1 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(0, s, n)))) for s in (1.5, 2.5)]
        metric = "f1" if kind == "binary_f1" else "auc"
        return y, task, [np.stack([1 - p, p], 1) for p in ps], ["task=binary", f"metric={metric}"]
    y = rng.integers(0, 4, n)  # ordinal, a regression head on the grade; qwk with refitted cut-points
    task = Task(kind="ordinal", names=["0", "1", "2", "3"], head="regression")
    outs = [(y + rng.normal(0, s, n) - 0.3)[:, None] for s in (0.6, 0.9)]
    return y, task, outs, ["task=ordinal", "model.head=regression", "metric=qwk"]


@pytest.mark.parametrize("kind", ["multilabel", "regression", "binary", "binary_f1", "ordinal"])
def test_every_task_blends_and_the_blend_is_an_experiment(tmp_path, kind):
    rng = np.random.default_rng(1)
    n = 160
    folds = np.arange(n) % N_FOLDS
    y, task, outs, over = _case(kind, rng, n)
    members = [sb.load_member(write_member(tmp_path, f"m{i}", y, o, task, over, folds)) for i, o in enumerate(outs)]
    sb.check_compatible(members)
    res = sb.evaluate(members)
    t = res.table.set_index("name")
    assert ("blend:rank" in t.index) == (kind in ("multilabel", "binary"))  # rank: AUC metrics only
    honest = t.loc[t["kind"] == "blend", "cv_honest"]  # the chosen blend is the best in the metric's direction
    assert f"blend:{res.method}" == (honest.idxmin() if kind == "regression" else honest.idxmax())  # mae: lowest
    assert np.isfinite(t["cv_honest"]).all() and res.oof.shape == outs[0].shape
    if kind == "ordinal":  # cut-points refitted on the blend's OOF
        assert res.decoding is not None and res.decoding["num_classes"] == 4
    if kind == "binary_f1":  # a decision threshold refitted on the blend's OOF
        assert res.decoding is not None and res.decoding["method"] in ("cutoff", "probs")
    test = SimpleNamespace(test=pd.DataFrame({"id": ["t0", "t1"]}))
    test_probs = sb.blend_test(members, [o[:2] for o in outs], res.method)
    assert test_probs.shape == (2, outs[0].shape[1])
    out = tmp_path / "blend"
    sb.write(out, members, res, test_probs, test, "id,x\n")
    again = sb.load_member(load_config(out / "config.yaml"))  # the blend reloads as an experiment...
    columns = "value" if kind in ("regression", "ordinal") else "prob_"
    assert np.allclose(again.oof.filter(like=columns).to_numpy(), res.oof, atol=1e-6)
    sb.check_compatible([again, members[0]])  # ...on the same folds: it can be blended again
    assert len(Experiment.open(out).oof()) == n


def test_two_trained_recipes_blend_end_to_end_and_other_folds_are_refused(tmp_path):
    root = write_tiny_competition(tmp_path / "data", n_per_class=8, n_test=6)
    common = [o for o in FAST if not o.startswith("image_size")] + [
        f"data.root={root}", "data.source=competition", "data.solution_csv=solution.csv", "aug.tta=[identity]"]
    configs = []
    for name, size in (("r16", 16), ("r24", 24)):  # the default recipe and one at another image size
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"out_dir: {tmp_path / name}\nimage_size: {size}\n")
        cfg = load_config(path, common)
        for k in range(2):
            fit(cfg, k)
        configs.append(str(path))
    out = tmp_path / "blend"
    code, stdout, err = run_main("blend.py", *configs, *common, "--out", str(out))
    assert code == 0, err[-3000:]
    assert "blend:weighted" in stdout and "r16" in stdout and "chosen:" in stdout
    sub = pd.read_csv(out / "submission.csv")
    assert list(sub.columns) == ["id", "label"] and len(sub) == 6
    assert (out / "blend.png").stat().st_size > 0 and (out / "fold1" / "oof.csv").is_file()
    with pytest.raises(UserError, match="exists.*--force"):  # never overwritten without --force
        sb.check_out(out, [], force=False)
    # an experiment whose folds.csv puts the images in other folds
    other = tmp_path / "other"
    other.mkdir()
    for f in ("fold0", "fold1"):
        (other / f).mkdir()
        (other / f / "oof.csv").write_bytes((tmp_path / "r24" / f / "oof.csv").read_bytes())
    folds = pd.read_csv(tmp_path / "r24" / "folds.csv")
    folds.assign(fold=1 - folds["fold"]).to_csv(other / "folds.csv", index=False)
    (tmp_path / "o.yaml").write_text(f"out_dir: {other}\nimage_size: 24\n")
    code, _, err = run_main("blend.py", configs[0], str(tmp_path / "o.yaml"), *common, "--out", str(tmp_path / "b2"))
    one_error(code, err, "different folds", str(tmp_path / "r16"), str(other))
    assert not (tmp_path / "b2").exists()
    # one experiment twice (another config file naming its out_dir): refused, not a "blend"
    (tmp_path / "again.yaml").write_text(f"out_dir: {tmp_path / 'r16'}\nimage_size: 16\n")
    with pytest.raises(UserError, match="name the same experiment"):
        sb.load_members([configs[0], str(tmp_path / "again.yaml")], common)


def test_values_with_their_sigma_blend_as_a_mixture_and_refuse_rank_and_stack():
    task = Task("regression", ["FVC"], "regression", loss_name="laplace")
    a, b = np.array([[100.0, 10.0], [50.0, 5.0]]), np.array([[120.0, 20.0], [50.0, 5.0]])
    y = np.array([110.0, 50.0])
    out = bl.fit("mean", [a, b], y, task)([a, b])
    np.testing.assert_allclose(out, [[110.0, np.sqrt(350.0)], [50.0, 5.0]])
    w = bl.fit_weights([a, b], y, task)
    np.testing.assert_allclose(bl.fit("weighted", [a, b], y, task)([a, b]), task.mix([a, b], w))
    assert "mixture" in bl.applicable("rank", task, "auc") and "mixture" in bl.applicable("stack", task, "mae")
    assert bl.applicable("mean", task, "laplace_log_likelihood") is None


def test_mil_experiments_blend_as_any_rows(tmp_path_factory, tmp_path):
    """Two MIL experiments (a row: a study of four series) on the same folds blend: OOF rows are rows."""
    import shutil

    from mil_fold import trained_mil_fold

    mil = trained_mil_fold(tmp_path_factory, both=True)
    other = tmp_path / "other"
    shutil.copytree(mil["out"], other)
    for name, out in (("a", mil["out"]), ("b", other)):
        (tmp_path / f"{name}.yaml").write_text(to_yaml(load_config(mil["config"], [*mil["overrides"],
                                                                                   f"out_dir={out}"])))
    code, out, err = run_main("blend.py", str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml"), "--out",
                              str(tmp_path / "blend"), "--method", "mean")
    assert code == 0, err[-3000:]
    sub = pd.read_csv(tmp_path / "blend" / "submission.csv", dtype=str)
    assert list(sub.columns) == ["BraTS21ID", "MGMT_value"] and sorted(sub["BraTS21ID"]) == ["1", "13"]
