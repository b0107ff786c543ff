"""Blending the outputs of several experiments: mean, weighted mean, rank mean and a level-2 model, each
fitted on out-of-fold (OOF) predictions and scored honestly.

Every member's outputs are (N, K) arrays in the task's format (comp.tasks: probabilities per class or label,
or a regression head's (N, 1) value), aligned on the same rows.

- `mean`: the plain average (a value with its sigma: the mixture's mean and sd, comp.likelihood; `mean` and
  `weighted` only).
- `weighted`: non-negative weights summing to 1, fitted by scipy.optimize.minimize (SLSQP, the simplex as
  bounds and one equality constraint) minimising a smooth surrogate of the competition metric on the OOF
  rows: the cross-entropy of the blended probabilities (softmax: against the class or the soft row;
  sigmoid: the binary cross-entropy per label) or the squared error of a regression head's value. Metrics
  such as accuracy, QWK or AUC are piecewise constant in the weights, so a gradient method stalls on them;
  the surrogate is what Kaggle blends were fitted on since the Netflix prize (Töscher & Jahrer 2009: least
  squares on the probe set), and the honest score below judges the result by the metric itself.
- `rank`: the mean of each member's per-column ranks scaled to (0, 1] (scipy.stats.rankdata), for metrics
  that only rank (AUC, pAUC): members with different calibrations then count alike.
- `stack`: a level-2 model on the members' outputs: scikit-learn's LogisticRegression on their logits
  (class tasks: multinomial over the classes; binary and each multi-label column: one model on the members'
  logit of that column) or Ridge on their values (a regression head).

`honest` fits a method on the OOF rows of K-1 folds and predicts the held-out fold, fold by fold: the
blend's honest CV is scored on those predictions. Scored on the rows it was fitted on (`in_sample`), any
fitted blend looks better than it is (a member of pure noise can still lower the in-sample loss a little).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.stats import rankdata
from sklearn.linear_model import LogisticRegression, Ridge

from comp.errors import UserError
from comp.tasks import Task

METHODS = ("mean", "weighted", "rank", "stack")
RANK_METRICS = ("auc", "pauc")  # metrics of the order of the scores alone: rank blending is for them
EPS = 1e-6


def applicable(method: str, task: Task, metric: str) -> str | None:
    """None when `method` can blend this task for this metric, else why not (one phrase)."""
    if method == "rank" and metric not in RANK_METRICS:
        return f"rank blending scores only the order (metric auc or pauc), not metric={metric}"
    if method == "stack" and task.soft:
        return "a level-2 logistic regression needs class targets, not soft (per-class distribution) targets"
    if method == "stack" and task.kind == "multihead":
        return "a level-2 model per head is not built for task=multihead (mean and weighted blend it)"
    if method in ("rank", "stack") and task.scale:
        return "a value with its uncertainty (value, sigma) blends as a mixture: method mean or weighted"
    return None


def rank_mean(outs: list[np.ndarray]) -> np.ndarray:
    """(N, K): the mean over members of each column's ranks divided by N (ties: the average rank)."""
    return np.mean([rankdata(o, axis=0) / len(o) for o in outs], axis=0)


def surrogate(task: Task, y: np.ndarray, out: np.ndarray) -> float:
    """The smooth loss `weighted` minimises (module doc): cross-entropy for probabilities, mean squared error
    for a regression head's value. y: (N,) classes or values, or (N, K) target rows."""
    if task.head == "regression":
        return float(np.mean((out[:, 0] - np.asarray(y, np.float64).reshape(len(out), -1)[:, 0]) ** 2))
    p = np.clip(out, EPS, 1 - EPS)
    if task.head in ("softmax", "multihead"):  # multihead: the sum of the heads' cross-entropies
        rows = y if y.ndim == 2 else np.eye(out.shape[1])[np.asarray(y, np.int64)]
        return float(-np.mean(np.sum(rows * np.log(p), axis=1)))
    t = y.astype(np.float64) if y.ndim == 2 else (np.asarray(y) == task.positive).astype(np.float64)[:, None]
    q = p if y.ndim == 2 else p[:, [task.positive]]
    return float(-np.mean(t * np.log(q) + (1 - t) * np.log(1 - q)))


def fit_weights(outs: list[np.ndarray], y: np.ndarray, task: Task) -> np.ndarray:
    """(M,) non-negative weights summing to 1 minimising `surrogate` of Σ_m w_m out_m (SLSQP from equal
    weights; numerical gradients, M is small)."""
    m = len(outs)
    stacked = np.stack(outs)  # (M, N, K)

    def loss(w: np.ndarray) -> float:
        return surrogate(task, y, np.tensordot(w, stacked, axes=1))

    res = minimize(loss, np.full(m, 1.0 / m), method="SLSQP", bounds=[(0.0, 1.0)] * m,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0}],
                   options={"ftol": 1e-10, "maxiter": 200})
    w = np.clip(res.x, 0.0, None)
    return w / w.sum() if w.sum() > 0 else np.full(m, 1.0 / m)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, EPS, 1 - EPS)
    return np.log(p / (1 - p))


class Stack:
    """The level-2 model of `stack` (module doc), fitted on members' OOF outputs, applied to any rows."""

    def __init__(self, task: Task):
        self.task = task
        self.models: list[Any] = []

    def _features(self, outs: list[np.ndarray], column: int | None = None) -> np.ndarray:
        if self.task.head == "regression":
            return np.stack([o[:, 0] for o in outs], axis=1)
        if column is not None:
            return np.stack([_logit(o[:, column]) for o in outs], axis=1)
        return np.concatenate([np.log(np.clip(o, EPS, 1.0)) for o in outs], axis=1)

    def fit(self, outs: list[np.ndarray], y: np.ndarray) -> Stack:
        task = self.task
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence notes of tiny folds
            if task.head == "regression":
                self.models = [Ridge(alpha=1.0).fit(self._features(outs), np.asarray(y, np.float64).reshape(-1))]
            elif task.kind == "multilabel":
                self.models = [self._binary(self._features(outs, j), y[:, j]) for j in range(y.shape[1])]
            elif task.kind == "binary":
                self.models = [self._binary(self._features(outs, task.positive), np.asarray(y) == task.positive)]
            else:
                y = np.asarray(y, np.int64)
                self.models = [LogisticRegression(C=1.0, max_iter=1000).fit(self._features(outs), y)
                               if len(np.unique(y)) > 1 else float(y[0])]
        return self

    @staticmethod
    def _binary(x: np.ndarray, t: np.ndarray) -> Any:
        t = np.asarray(t).astype(np.int64)
        if len(np.unique(t)) < 2:  # a label constant in the training folds: its rate
            return float(t.mean())
        return LogisticRegression(C=1.0, max_iter=1000).fit(x, t)

    def predict(self, outs: list[np.ndarray]) -> np.ndarray:
        """(N, K) outputs in the task's format."""
        task, n = self.task, len(outs[0])
        if task.head == "regression":
            return self.models[0].predict(self._features(outs))[:, None]

        def p1(model: Any, x: np.ndarray) -> np.ndarray:
            return np.full(len(x), model) if isinstance(model, float) else model.predict_proba(x)[:, 1]

        if task.kind == "multilabel":
            return np.stack([p1(mdl, self._features(outs, j)) for j, mdl in enumerate(self.models)], axis=1)
        if task.kind == "binary":
            p = p1(self.models[0], self._features(outs, task.positive))
            return np.stack([p, 1 - p] if task.positive == 0 else [1 - p, p], axis=1)
        k, model = outs[0].shape[1], self.models[0]
        full = np.zeros((n, k))
        if isinstance(model, float):  # one class in the training folds
            full[:, int(model)] = 1.0
            return full
        full[:, model.classes_] = model.predict_proba(self._features(outs))  # classes absent there: 0
        return full


def fit(method: str, outs: list[np.ndarray], y: np.ndarray, task: Task) -> Callable[[list[np.ndarray]], np.ndarray]:
    """The blend `method` fitted on members' OOF `outs` against targets `y`, as a function of members'
    outputs on any rows (OOF or test) → (N, K) blended outputs."""
    if method == "mean":
        return lambda o: task.mix(o)  # the mean; a scale head's mixture (comp.likelihood)
    if method == "rank":
        return rank_mean
    if method == "weighted":
        w = fit_weights(outs, y, task)
        return lambda o: task.mix(o, w)
    if method == "stack":
        return Stack(task).fit(outs, y).predict
    raise UserError(f"--method {method!r}: choose from {list(METHODS)}")


def in_sample(method: str, outs: list[np.ndarray], y: np.ndarray, task: Task) -> np.ndarray:
    """(N, K): the blend fitted on every OOF row, applied to the same rows (optimistic for fitted methods)."""
    return fit(method, outs, y, task)(outs)


def honest(method: str, outs: list[np.ndarray], y: np.ndarray, folds: np.ndarray, task: Task) -> np.ndarray:
    """(N, K): each fold's rows blended by the method fitted on the other folds' OOF rows only (cross-fitted;
    `folds` (N,) the fold of each row, at least two distinct). `rank` fits nothing: its ranks are those of
    all OOF rows together, as the pooled CV ranks them."""
    if method in ("mean", "rank"):
        return in_sample(method, outs, y, task)
    folds = np.asarray(folds)
    if len(np.unique(folds)) < 2:
        raise UserError(f"--method {method}: an honest score needs at least two folds' OOF predictions")
    y = np.asarray(y)
    result = np.zeros_like(outs[0], dtype=np.float64)
    for k in np.unique(folds):
        held = folds == k
        blend = fit(method, [o[~held] for o in outs], y[~held], task)
        result[held] = blend([o[held] for o in outs])
    return result


def weights(outs: list[np.ndarray], y: np.ndarray, task: Task) -> np.ndarray:
    """The `weighted` method's (M,) weights fitted on every OOF row (for the report)."""
    return fit_weights(outs, y, task)


def correlation(outs: list[np.ndarray], task: Task) -> np.ndarray:
    """(M, M) Pearson correlation of members' OOF outputs: the positive class's probability (binary), the
    value (regression head), else every column flattened. Low correlation is the diversity that makes
    blending pay."""
    if task.kind == "binary":
        flat = [o[:, task.positive] for o in outs]
    else:
        flat = [o.reshape(-1) for o in outs]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.corrcoef(np.stack(flat))
