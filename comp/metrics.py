"""Competition metrics over scikit-learn and the competitions' published formulas
(comp.competition_metrics), for every task (comp.tasks).

`METRICS` names each metric with what it needs (hard classes, probabilities, values, target rows), the
tasks it scores and its direction (log loss, KL divergence, RMSE and MAE: lower is better; OSIC's
Laplace log-likelihood scores a value with its uncertainty, higher is better). The
competition's metric (`metric` in the config) picks the best checkpoint and is the CV score.

Every metric is computed over the competition's C classes, C = probs.shape[1], never over the classes
that happen to occur in `y_true` or in the predictions: scikit-learn infers the class set from the data
unless given `labels`, and for quadratic kappa that changes the weights themselves (a grade absent from
a validation fold moves its neighbours closer together: y=[0,0,1,1,2,2,4,4,4,0] against
pred=[0,1,1,2,2,4,4,4,2,0] scores 0.8519 over the grades present and 0.7917 over the grades 0..4).
A per-class score that is undefined (F1 of a class neither present nor predicted, recall of a class
absent from `y_true`, AUC of a class absent from `y_true`) is left out of its average, as scikit-learn
does with `zero_division=np.nan`: a correct "never this class" is neither rewarded nor punished.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from comp import competition_metrics as cm
from comp import study_metrics as sm
from comp.errors import UserError
from comp.tasks import Task

# values that mean "positive" in a two-class competition's own spelling (a 0/1 target, a True/False column)
TRUE_VALUES = {"1", "1.0", "true", "t", "yes", "y", "positive", "pos"}


def positive_index(positive_class: str, classes: Sequence[Any], values: Sequence[Any]) -> int:
    """The index of a two-class competition's positive class: the one whose probability an AUC
    submission holds and whose scores rank the AUC.

    Args:
        positive_class: the `data.positive_class` config value, a class name or its value; "" = the class
            whose value is 1 / "1" / True-like (TRUE_VALUES), else the second class in order.
        classes: the class names in label order; values: the competition's value of each (same order).

    Raises:
        UserError: `positive_class` is neither a class name nor a class value, naming the key.
    """
    if positive_class != "":
        for spelt in ([str(c) for c in classes], [str(v) for v in values]):
            if positive_class in spelt:
                return spelt.index(positive_class)
        raise UserError(f"bad value for config key 'data.positive_class': {positive_class!r} is not one of the "
                        f"classes {[str(c) for c in classes]} (or their values {[str(v) for v in values]})")
    true_like = [i for i, v in enumerate(values) if str(v).strip().lower() in TRUE_VALUES]
    return true_like[0] if len(true_like) == 1 else min(1, len(classes) - 1)


def _labels(p: np.ndarray) -> range:
    return range(p.shape[1])


def qwk(y: np.ndarray, p: np.ndarray) -> float:
    """Quadratic weighted kappa of the argmax over the grades 0..C-1 (weights (i-j)^2 of the full grid);
    NaN when undefined (one grade on both sides). comp.predict.thresholds.qwk is the fast equivalent for
    its search (tests/test_metrics.py proves them equal)."""
    return _qwk_pred(y, p.argmax(1), p.shape[1])


def _qwk_pred(y: np.ndarray, pred: np.ndarray, num_classes: int) -> float:
    return float(skm.cohen_kappa_score(y, pred, weights="quadratic", labels=range(num_classes)))


def auc(y: np.ndarray, p: np.ndarray, positive: int = 1) -> float:
    """ROC-AUC. Two classes: of the positive class (index `positive`, see `positive_index`), ranked by its
    own probability column, as the leaderboard ranks the submitted P(positive). More classes: the
    one-vs-rest macro average (scikit-learn's multi_class='ovr') over the classes present in `y` (a class
    absent from a small validation fold has no AUC of its own); NaN when fewer than two are present."""
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    if p.shape[1] == 2:
        return float(skm.roc_auc_score(y == positive, p[:, positive]))
    return float(np.mean([skm.roc_auc_score(y == c, p[:, c]) for c in present]))


CLASS_TASKS = frozenset({"multiclass", "binary", "ordinal"})


@dataclass(frozen=True)
class Metric:
    """One metric: `fn(y, x)` over what `needs` names, the tasks it scores, and its direction.

    needs: `pred` (N,) hard classes vs (N,) class indices; `probs` (N, C) class probabilities; `values`
    (N,) numbers (regression values, or an ordinal model's value / expected grade); `rows` (N, K) outputs
    vs (N, K) target rows (multi-label probabilities, soft-target distributions); `binary` (N,) 0/1
    truth vs (N,) P(positive); `table` fn(task, Y, P) over the task's named outputs (a competition's
    multi-target score, comp.study_metrics), for the tasks whose outputs `fits` accepts; `scale` (N,) values
    vs (N, 2) value and sigma (a head with a scale)."""

    fn: Callable[..., float]
    needs: str
    kinds: frozenset[str]
    higher: bool = True
    soft_only: bool = False  # multiclass soft targets only (KL divergence)
    fits: Callable[[Task], bool] | None = None  # needs=table: the task's outputs are the ones the score reads

    def __call__(self, y: np.ndarray, probs: np.ndarray) -> float:
        """The metric of a multiclass softmax's (N, C) probabilities (the kit's first task)."""
        return score_task(self, _softmax_task(probs.shape[1]), y, probs)


def _f1_rows(y: np.ndarray, p: np.ndarray, average: str) -> float:
    return float(skm.f1_score(y.astype(int), (p >= 0.5).astype(int), average=average, zero_division=np.nan))


def heads_log_loss(task: Task, Y: np.ndarray, P: np.ndarray) -> float:
    """task=multihead: the mean over heads of each head's log loss (comp.competition_metrics.log_loss: clipped,
    renormalised) over the rows that label it; heads no row labels are left out (NaN when none is left)."""
    losses = []
    for s in task.slices():
        y = np.asarray(Y, np.float64)[:, s]
        rows = y.sum(axis=1) > 0
        if rows.any():
            losses.append(cm.log_loss(y[rows].argmax(1), np.asarray(P, np.float64)[rows][:, s]))
    return float(np.mean(losses)) if losses else float("nan")


def _columns(task: Task, Y: np.ndarray, P: np.ndarray, names: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(solution, submission) frames of the outputs `names` (columns of Y and P by task.names), row ids 0..N-1."""
    k = [task.names.index(n) for n in names]
    ids = pd.Series(np.arange(len(P)).astype(str), name="id")
    sol = pd.concat([ids, pd.DataFrame(np.asarray(Y, np.float64)[:, k], columns=names)], axis=1)
    sub = pd.concat([ids, pd.DataFrame(np.asarray(P, np.float64)[:, k], columns=names)], axis=1)
    return sol, sub


def _long(sol: pd.DataFrame, sub: pd.DataFrame, labels: list[str], values: list[str]) -> tuple[pd.DataFrame, ...]:
    """Wide (id + `labels` x `values` columns `<label>_<value>`, or `<label>` for values [""]) → long frames
    with row_id `<id>_<label>` and the `values` columns, rows whose solution is all 0 (not labelled) left out."""
    out = []
    for df in (sol, sub):
        parts = []
        for lab in labels:
            cols = [f"{lab}_{v}" if v else lab for v in values]
            part = df[cols].set_axis([v or "value" for v in values], axis=1)
            parts.append(part.assign(row_id=df["id"] + "_" + lab, labelled=sol[cols].sum(axis=1).to_numpy() > 0))
        out.append(pd.concat(parts, ignore_index=True))
    keep = out[0]["labelled"].to_numpy() | (len(values) == 1)
    return tuple(f[keep].drop(columns="labelled").reset_index(drop=True) for f in out)


def _cervical(task: Task, Y: np.ndarray, P: np.ndarray) -> float:
    sol, sub = _columns(task, Y, P, list(sm.CERVICAL_TYPES))
    sol, sub = _long(sol, sub, list(sm.CERVICAL_TYPES), [""])
    return sm.cervical_spine_score(sol, sub, "row_id", "value")


def _trauma(task: Task, Y: np.ndarray, P: np.ndarray) -> float:
    """RSNA 2023 over the rows that label all five targets (the solution's rows; NaN when none does)."""
    sol, sub = _columns(task, Y, P, list(sm.TRAUMA_COLUMNS))
    groups = [[f"{t}_{c}" for c in classes] for t, (classes, _) in sm.TRAUMA_TARGETS.items()]
    full = np.all([sol[g].sum(axis=1).to_numpy() > 0 for g in groups], axis=0)
    if not full.any():
        return float("nan")
    return sm.abdominal_trauma_score(sol[full], sub[full], "id")


def _lumbar(task: Task, Y: np.ndarray, P: np.ndarray) -> float:
    targets = [t for t, _ in task.heads]
    names = [f"{t}_{c}" for t in targets for c in sm.LUMBAR_LEVELS]
    sol, sub = _columns(task, Y, P, names)
    sol, sub = _long(sol, sub, targets, list(sm.LUMBAR_LEVELS))
    if sol.empty:
        return float("nan")
    return sm.lumbar_spine_score(sol, sub, "row_id")


def _fits_cervical(task: Task) -> bool:
    return set(sm.CERVICAL_TYPES) <= set(task.names)


def _fits_trauma(task: Task) -> bool:
    return all(
        [n for n in task.names if n.startswith(f"{t}_")] == [f"{t}_{c}" for c in classes]
        for t, (classes, _) in sm.TRAUMA_TARGETS.items())


def _fits_lumbar(task: Task) -> bool:
    levels = list(sm.LUMBAR_LEVELS)
    return bool(task.heads) and task.names == [f"{t}_{c}" for t, _ in task.heads for c in levels] and all(
        n == len(levels) and any(c in t for c in sm.LUMBAR_CONDITIONS) for t, n in task.heads)


WANTS = {  # what each competition score reads, for the message of a task whose outputs do not fit
    "rsna2022_cervical": "task=multilabel with the labels patient_overall, C1..C7 (data.label_columns)",
    "rsna2023_trauma": "task=multihead with data.heads bowel, extravasation: [healthy, injury] and kidney, liver, "
                       "spleen: [healthy, low, high]",
    "rsna2024_lumbar": "task=multihead whose every target names spinal, foraminal or subarticular, each with the "
                       "classes [normal_mild, moderate, severe]",
}

METRICS: dict[str, Metric] = {
    "accuracy": Metric(lambda y, pred, c: float(skm.accuracy_score(y, pred)), "pred", CLASS_TASKS),
    # mean recall over the classes present in y (scikit-learn's balanced_accuracy_score)
    "balanced_accuracy": Metric(lambda y, pred, c: float(skm.recall_score(y, pred, labels=range(c), average="macro",
                                                                          zero_division=np.nan)), "pred", CLASS_TASKS),
    "f1_macro": Metric(lambda y, pred, c: float(skm.f1_score(y, pred, labels=range(c), average="macro",
                                                             zero_division=np.nan)), "pred", CLASS_TASKS),
    "f1_weighted": Metric(lambda y, pred, c: float(skm.f1_score(y, pred, labels=range(c), average="weighted",
                                                                zero_division=np.nan)), "pred", CLASS_TASKS),
    "f1": Metric(lambda y, p: float(skm.f1_score(y, p >= 0.5, zero_division=np.nan)), "binary", frozenset({"binary"})),
    "f1_macro_labels": Metric(lambda y, p: _f1_rows(y, p, "macro"), "rows", frozenset({"multilabel"})),
    "qwk": Metric(lambda y, pred, c: _qwk_pred(y, pred, c), "pred", frozenset({"multiclass", "ordinal"})),
    "auc": Metric(None, "auc", frozenset({"multiclass", "binary", "ordinal", "multilabel"})),  # type: ignore[arg-type]
    "pauc": Metric(cm.partial_auc, "binary", frozenset({"binary"})),
    "pf1": Metric(cm.probabilistic_f1, "binary", frozenset({"binary"})),
    "log_loss": Metric(None, "log_loss", frozenset({"multiclass", "binary", "ordinal", "multilabel",  # type: ignore
                                                    "multihead"}), higher=False),
    # the competitions' own scores (comp.study_metrics), each over the outputs it names
    "rsna2022_cervical": Metric(_cervical, "table", frozenset({"multilabel"}), higher=False, fits=_fits_cervical),
    "rsna2023_trauma": Metric(_trauma, "table", frozenset({"multihead"}), higher=False, fits=_fits_trauma),
    "rsna2024_lumbar": Metric(_lumbar, "table", frozenset({"multihead"}), higher=False, fits=_fits_lumbar),
    "kl_divergence": Metric(cm.kl_divergence, "rows", frozenset({"multiclass"}), higher=False, soft_only=True),
    "rmse": Metric(cm.rmse, "values", frozenset({"regression", "ordinal"}), higher=False),
    "mae": Metric(cm.mae, "values", frozenset({"regression", "ordinal"}), higher=False),
    "r2": Metric(cm.r2, "values", frozenset({"regression"})),
    # a value with its uncertainty (train.loss=laplace | gaussian_nll): OSIC's Laplace log-likelihood
    "laplace_log_likelihood": Metric(cm.laplace_log_likelihood, "scale", frozenset({"regression"})),
}


def _softmax_task(c: int, positive: int = 1) -> Task:
    return Task(kind="multiclass", names=[str(i) for i in range(c)], head="softmax", positive=positive)


def applies(name: str, task: Task) -> bool:
    """Whether metric `name` scores `task` (its kind, its head: no probabilities from a regression head,
    KL divergence only for soft targets)."""
    m = METRICS[name]
    if task.kind not in m.kinds or (m.soft_only and not task.soft):
        return False
    if m.fits is not None and not m.fits(task):
        return False
    if m.needs in ("probs", "auc", "log_loss", "binary") and task.head == "regression":
        return False
    if m.needs == "scale" and not task.scale:
        return False
    return not (task.soft and m.needs in ("auc", "log_loss"))


def check_metric(name: str, task: Task | None = None) -> str:
    """`name` when it is a metric (of `task`, when given).

    Raises:
        UserError: an unknown metric, or one that cannot score the task, naming the ones that can."""
    if name not in METRICS:
        raise UserError(f"bad value for config key 'metric': {name!r}; choose from {sorted(METRICS)}")
    if task is not None and not applies(name, task):
        ok = sorted(n for n in METRICS if applies(n, task))
        if task.kind in METRICS[name].kinds and METRICS[name].fits is not None:
            raise UserError(f"bad value for config key 'metric': {name!r} scores {WANTS[name]}; this task's outputs "
                            f"are {task.names[:8]}{'...' if len(task.names) > 8 else ''}; choose from {ok}")
        raise UserError(f"bad value for config key 'metric': {name!r} does not score task={task.kind}"
                        f"{' (' + task.head + ' head)' if task.kind == 'ordinal' else ''}; choose from {ok}")
    return name


def score_task(metric: Metric | str, task: Task, y: np.ndarray, out: np.ndarray, min_tpr: float = 0.8) -> float:
    """One metric of the outputs `out` (N, K) (comp.tasks.Task.activate) against the targets `y`: (N,)
    class indices or values, or (N, K) target rows (multi-label, soft targets)."""
    m = METRICS[metric] if isinstance(metric, str) else metric
    y = np.asarray(y)
    cls = y.argmax(1) if task.soft else y
    if m.needs == "pred":
        return m.fn(cls.astype(np.int64), task.decode(out), len(task.names))
    if m.needs == "values":
        return m.fn(y.astype(np.float64), task.values(out))
    if m.needs == "rows":
        return m.fn(y, out)
    if m.needs == "table":
        return m.fn(task, y, out)
    if m.needs == "scale":
        return m.fn(y.astype(np.float64).reshape(len(y), -1)[:, 0], out[:, :2])
    if m.needs == "binary":
        truth = (cls == task.positive).astype(np.int64)
        extra = (min_tpr,) if m.fn is cm.partial_auc else ()
        return m.fn(truth, out[:, task.positive], *extra)
    if m.needs == "auc":
        return cm.mean_column_auc(y, out) if task.kind == "multilabel" else auc(cls, out, task.positive)
    if task.kind == "multilabel":  # log_loss
        return cm.mean_column_log_loss(y, out)
    if task.kind == "multihead":
        return heads_log_loss(task, y, out)
    return cm.log_loss(cls.astype(np.int64), out)


def score(name: str, y: np.ndarray, out: np.ndarray, positive: int = 1, task: Task | None = None,
          min_tpr: float = 0.8) -> float:
    """One metric (`score_task`); without `task`, of a multiclass softmax whose positive class (for a
    two-class AUC) is `positive` (`positive_index`)."""
    return score_task(name, task or _softmax_task(out.shape[1], positive), y, out, min_tpr)


def score_all(y: np.ndarray, out: np.ndarray, positive: int = 1, task: Task | None = None,
              min_tpr: float = 0.8) -> dict[str, float]:
    """Every metric that scores the task (the columns of metrics.csv). Quiet: scikit-learn's warnings about a
    class never predicted (early epochs) or an undefined kappa would repeat every epoch."""
    task = task or _softmax_task(out.shape[1], positive)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {name: score_task(name, task, y, out, min_tpr) for name in METRICS if applies(name, task)}


def higher_is_better(name: str) -> bool:
    """Whether a larger value of metric `name` is better (False for log loss, KL divergence, RMSE, MAE): the
    one direction every ranking asks (best epoch, early stop, tuning, fold weights, blends, reports)."""
    return METRICS[name].higher


def classification_report(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Per-class precision, recall, F1 and support over every class of `classes`, as a DataFrame indexed
    by class name. An undefined entry (the precision of a class never predicted, the recall of a class
    absent from `y`) is NaN and left out of the averages, so the `macro avg` row's F1 and recall are
    METRICS' f1_macro and balanced_accuracy, and the `weighted avg` F1 is f1_weighted."""
    rep = skm.classification_report(y, pred, labels=range(len(classes)), target_names=classes,
                                    output_dict=True, zero_division=np.nan)
    table = pd.DataFrame(rep).T
    if "accuracy" in table.index:  # scikit-learn repeats the accuracy in every column of its row
        table.loc["accuracy", ["precision", "recall"]] = np.nan
        table.loc["accuracy", "support"] = len(y)
    return table.astype({"support": int})


def confusion(y: np.ndarray, pred: np.ndarray, num_classes: int, normalize: str | None = None) -> np.ndarray:
    """(C, C) confusion matrix over every class (rows: true class); `normalize='true'` divides each row
    by its count (a class absent from `y` keeps a row of zeros)."""
    return skm.confusion_matrix(y, pred, labels=range(num_classes), normalize=normalize)
