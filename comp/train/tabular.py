"""A value with its uncertainty fitted from tabular rows (`data.layout: visits`, scripts/tabular.py; OSIC
Pulmonary Fibrosis Progression): prepare (the visit tables, folds by group) -> fit per fold -> predict ->
the validated submission, with the kit's task (comp.tasks: task=regression, train.loss laplace | gaussian_nll:
two outputs, `value` and `sigma`) and metric (metric=laplace_log_likelihood).

Model: a small MLP (one hidden layer of HIDDEN ReLU units, model.drop_rate dropout) on the visit features of
comp.data.visits, numeric ones standardised with the training fold's mean and sd, categorical ones one-hot over
the training fold's values (an unseen test value: all zeros). OSIC's public solutions that scored well
(around -6.8 on the private leaderboard) were this small: a quantile-loss MLP or a linear model on these
features. Trained with AdamW (optim.lr, optim.weight_decay), a cosine schedule, `epochs` passes of
`batch_size` rows, seeded by `seed`, on the CPU (the table is small); the last epoch is kept (no epoch is
picked on the validation fold, so the OOF stays honest).

The experiment folder (comp.experiment.Experiment): folds.csv (id, group, fold: folds by group,
comp.data.folds.split stratified on the binned value), fold<K>/best.pt (the weights, the task and the feature
encoding: plain values, loadable with weights_only=True), fold<K>/oof.csv (the kit's OOF format: id, label,
value, sigma), cv.json and submission.csv (the sample's columns: its id, the value, the sigma; averaged over
the folds as a mixture: comp.likelihood).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from comp import io
from comp.data.folds import split
from comp.data.visits import Visits, last_visits, load_visits
from comp.errors import UserError
from comp.experiment import Experiment
from comp.experiment.oof import write_oof
from comp.log import log
from comp.metrics import score
from comp.predict.checks import validate
from comp.tasks import Task, make_task

HIDDEN = 64  # hidden units: enough for a handful of features and ~1,500 rows (OSIC's train.csv)


def _check(cfg: Any) -> None:
    if cfg.data.layout != "visits":
        raise UserError(f"scripts/tabular.py fits data.layout=visits (rows per group and time, OSIC); the config "
                        f"has data.layout={cfg.data.layout}")
    task = make_task(cfg, [cfg.data.label_column])
    if not task.scale:
        raise UserError(f"bad value for config key 'train.loss': {cfg.train.loss!r}; data.layout=visits predicts a "
                        f"value with its uncertainty: task=regression with train.loss laplace | gaussian_nll")


def prepare_visits(cfg: Any) -> tuple[Visits, pd.DataFrame]:
    """The visit tables (comp.data.visits.load_visits) and their folds: folds.csv of the experiment, written
    once (id, group, fold; folds.n_folds folds by group, folds.seed) and reused while it holds the same rows.

    Raises:
        UserError: see load_visits; fewer groups than folds; a folds.csv made for other rows."""
    _check(cfg)
    visits = load_visits(cfg)
    exp = Experiment(cfg)
    ids = visits.train["id"]
    if exp.split.csv.is_file():
        folds = pd.read_csv(exp.split.csv, dtype={"id": str, "group": str})
        if list(folds["id"]) != list(ids):
            raise UserError(f"{exp.split.csv} was made for other rows than {cfg.data.train_csv}'s visits; delete it "
                            f"(and the folds trained on it) or set another out_dir")
        return visits, folds
    table = visits.train[["label", "group"]]
    fold = split(table, int(cfg.folds.n_folds), int(cfg.folds.seed), grouped=True)
    folds = pd.DataFrame({"id": ids, "group": visits.train["group"], "fold": fold.to_numpy()})
    io.write_csv(exp.split.csv, folds)
    log(f"folds: {len(folds)} visits of {folds['group'].nunique()} {cfg.data.group_column}(s) in "
        f"{cfg.folds.n_folds} folds -> {exp.split.csv}")
    return visits, folds


def encoding(frame: pd.DataFrame, visits: Visits) -> dict[str, Any]:
    """The feature encoding fitted on the training rows `frame`: each numeric column's mean and sd, each
    categorical column's values (plain lists, kept in the checkpoint)."""
    num = {c: [float(frame[c].mean()), float(frame[c].std(ddof=0)) or 1.0] for c in visits.numeric}
    return {"numeric": num, "categories": {c: sorted(frame[c].dropna().unique()) for c in visits.categorical}}


def encode(frame: pd.DataFrame, enc: dict[str, Any]) -> torch.Tensor:
    """(N, F) float32 features of `frame` under `enc`: standardised numbers, then one-hot categories."""
    parts = [((frame[c].to_numpy(np.float64) - m) / s)[:, None] for c, (m, s) in enc["numeric"].items()]
    for c, cats in enc["categories"].items():
        known = frame[c].where(frame[c].isin(cats))  # a value unseen in training: all zeros
        parts.append(pd.get_dummies(pd.Categorical(known, categories=cats)).to_numpy(np.float64))
    return torch.tensor(np.concatenate(parts, 1), dtype=torch.float32)


def mlp(n_in: int, n_out: int, drop: float) -> nn.Module:
    """The MLP: Linear(n_in, HIDDEN) -> ReLU -> Dropout -> Linear(HIDDEN, n_out) (the task's logits)."""
    return nn.Sequential(nn.Linear(n_in, HIDDEN), nn.ReLU(), nn.Dropout(drop), nn.Linear(HIDDEN, n_out))


def _outputs(ckpt: dict[str, Any], frame: pd.DataFrame) -> np.ndarray:
    """(N, 2) [value, sigma] of a fold's checkpoint on `frame`."""
    task = Task.from_meta(ckpt["task"])
    net = mlp(ckpt["n_in"], task.num_logits, 0.0)
    net.load_state_dict(ckpt["model"])
    with torch.no_grad():
        return task.activate(net.eval()(encode(frame, ckpt["encoding"]))).double().numpy()


def fit_fold(cfg: Any, fold: int, visits: Visits | None = None, folds: pd.DataFrame | None = None) -> float:
    """Fit fold `fold` on the other folds' visits, write its best.pt and oof.csv, and return its validation
    score (cfg.metric over the fold's visits).

    Raises:
        UserError: see prepare_visits; a fold outside 0..folds.n_folds-1; a loss that is not finite."""
    if visits is None or folds is None:
        visits, folds = prepare_visits(cfg)
    if fold not in set(folds["fold"]):
        raise UserError(f"--fold {fold}: choose from {sorted(set(folds['fold']))} (folds.n_folds={cfg.folds.n_folds})")
    held = (folds["fold"] == fold).to_numpy()
    tr, va = visits.train[~held], visits.train[held]
    task = make_task(cfg, [cfg.data.label_column]).fit_norm(tr["label"].to_numpy())
    enc = encoding(tr, visits)
    x, y = encode(tr, enc), torch.tensor(tr["label"].to_numpy(), dtype=torch.float32)
    torch.manual_seed(int(cfg.seed))
    net = mlp(x.shape[1], task.num_logits, float(cfg.model.drop_rate))
    opt = torch.optim.AdamW(net.parameters(), lr=float(cfg.optim.lr), weight_decay=float(cfg.optim.weight_decay))
    batch = max(1, min(int(cfg.batch_size), len(x)))
    steps = int(cfg.epochs) * -(-len(x) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1), eta_min=float(cfg.optim.min_lr))
    gen = torch.Generator().manual_seed(int(cfg.seed))
    net.train()
    for _ in range(int(cfg.epochs)):
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            loss = task.loss(net(x[idx]), y[idx])
            if not torch.isfinite(loss):
                raise UserError(f"fold {fold}: the {task.loss_name} loss is {loss.item()}: a learning rate far too "
                                f"high? (optim.lr={cfg.optim.lr}); nothing of this fold is saved")
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    exp = Experiment(cfg)
    ckpt = {"model": net.state_dict(), "task": task.meta(), "encoding": enc, "n_in": int(x.shape[1])}
    io.save_torch(exp.fold(fold).best, ckpt)
    out = _outputs(ckpt, va)
    write_oof(exp.fold(fold).oof, va["id"].tolist(), va["label"].to_numpy(), out, task)
    s = score(cfg.metric, va["label"].to_numpy(), out, task=task)
    log(f"fold {fold}: {len(tr)} training visits, {len(va)} validation visits, {cfg.metric} {s:.4f} -> "
        f"{exp.fold(fold).dir}")
    return s


def cv(cfg: Any, visits: Visits, folds: pd.DataFrame) -> dict[str, float]:
    """The CV of the trained folds' OOF: cfg.metric over every visit (`all`) and over each group's last 3 visits
    (`last3`, the rows Kaggle scored OSIC on)."""
    exp = Experiment(cfg)
    frames = [pd.read_csv(exp.fold(k).oof, dtype={"id": str}) for k in sorted(set(folds["fold"]))]
    oof = pd.concat(frames).set_index("id").loc[visits.train["id"]]
    task = make_task(cfg, [cfg.data.label_column])
    y, out = oof["label"].to_numpy(np.float64), oof[task.output_columns()].to_numpy(np.float64)
    last = last_visits(visits.train)
    return {"all": score(cfg.metric, y, out, task=task), "last3": score(cfg.metric, y[last], out[last], task=task)}


def predict_visits(cfg: Any, visits: Visits | None = None) -> pd.DataFrame:
    """The submission: every sample row's value and sigma, the mixture of the trained folds' predictions
    (comp.likelihood: the mean of means; sigma from the mean of sigma^2 + mu^2), in the sample's columns and
    order, validated against the sample (comp.predict.checks.validate).

    Raises:
        UserError: a fold of folds.n_folds that is not trained, or the checks' refusals."""
    visits = visits or load_visits(cfg)
    exp = Experiment(cfg)
    paths = [exp.fold(k).best for k in range(int(cfg.folds.n_folds))]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise UserError(f"fold model {missing[0]} is missing: fit every fold first (scripts/tabular.py --config ...)")
    ckpts = [torch.load(p, weights_only=True) for p in paths]
    task = Task.from_meta(ckpts[0]["task"])
    out = task.mix([_outputs(c, visits.test) for c in ckpts])
    cols = list(visits.sample.columns)
    df = pd.DataFrame({cols[0]: visits.test["id"], cols[1]: out[:, 0], cols[2]: out[:, 1]})
    validate(df, visits.sample, cols[0], "value", [])
    return df


def run_visits(cfg: Any, folds_to_fit: list[int] | None = None) -> dict[str, Any]:
    """prepare -> fit each fold (all, or `folds_to_fit`) -> CV -> predict: writes the experiment's files (module
    doc) and returns the summary written to cv.json (each fold's score, the CV over all visits and over each
    group's last 3, the submission's path), the submission only once every fold is trained."""
    visits, folds = prepare_visits(cfg)
    exp = Experiment(cfg)
    ks = folds_to_fit if folds_to_fit is not None else sorted(set(folds["fold"]))
    summary: dict[str, Any] = {"metric": cfg.metric, "folds": {int(k): fit_fold(cfg, k, visits, folds) for k in ks}}
    if all(exp.fold(k).oof.is_file() for k in set(folds["fold"])):
        summary["cv"] = cv(cfg, visits, folds)
        sub = predict_visits(cfg, visits)
        summary["submission"] = str(io.write_csv(exp.file("submission"), sub))
        io.write_json(exp.file("visits_cv"), summary)
    return summary
