"""The weighted log losses of the RSNA competitions that score several targets per study (issue 27 item 5):
RSNA 2022 Cervical Spine Fracture Detection, RSNA 2023 Abdominal Trauma Detection and RSNA 2024 Lumbar Spine
Degenerative Classification. All three are lower-is-better, in nats.

Each function takes the competition's solution and submission as pandas DataFrames in the competition's own
format, as the host's `score(solution, submission, row_id_column_name)` does, and returns the score (the
`*_losses` functions: every term and the score). comp.metrics registers them as the metrics rsna2022_cervical
(task=multilabel), rsna2023_trauma and rsna2024_lumbar (task=multihead), building these tables from a task's
outputs. They sit apart from
comp.competition_metrics (one truth array against one prediction array) because they read whole tables.

Arithmetic shared by all three, as the hosts' code ran it: the hosts called sklearn.metrics.log_loss of
scikit-learn < 1.5 (Kaggle's image at the time), which clipped every probability to [1e-15, 1 - 1e-15] and
then divided each row by its sum; a 1-D prediction p was the two columns [1 - p, p]; the sample weights
gave the weighted mean sum(w l) / sum(w). scikit-learn >= 1.5 clips to the float's machine epsilon and no
longer renormalises, so `weighted_log_loss` does it here.

Inputs are not modified. A solution row id missing from the submission, a duplicated id, a missing column,
a NaN / infinite / negative prediction or a solution row that is not one-hot raise ValueError naming the
row or column (as comp.competition_metrics: the caller turns a user's bad file into a UserError).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

EPS = 1e-15  # scikit-learn < 1.3's log_loss default, the clip the hosts' scoring ran with


def weighted_log_loss(Y: np.ndarray, P: np.ndarray, weights: np.ndarray, eps: float = EPS) -> float:
    """Sample-weighted multi-class log loss, as scikit-learn < 1.5's log_loss(Y, P, sample_weight=weights):
    P clipped to [eps, 1 - eps], each row divided by its sum, l_i = -sum_c Y_ic log P_ic, and the score
    sum_i w_i l_i / sum_i w_i.

    Args:
        Y: (N, C) one-hot (or soft) truth rows. P: (N, C) non-negative predictions, or (N,) P(class 1) of a
            two-class target (then Y may be (N,) 0/1). weights: (N,) positive sample weights.

    Raises:
        ValueError: shapes differ, no rows, a non-finite value, a negative prediction, a zero total weight.
    """
    Y, P, w = (np.asarray(a, dtype=np.float64) for a in (Y, P, weights))
    if P.ndim == 1:
        P = np.stack([1 - P, P], axis=1)
        Y = np.stack([1 - Y, Y], axis=1) if Y.ndim == 1 else Y
    if Y.shape != P.shape or w.shape != (len(P),) or len(P) == 0:
        raise ValueError(f"expected (N, C) truth and prediction and (N,) weights, N > 0; got {Y.shape}, {P.shape}, "
                         f"{w.shape}")
    if not (np.isfinite(Y).all() and np.isfinite(P).all() and np.isfinite(w).all()):
        raise ValueError("truth, prediction or weight holds a NaN or infinite value")
    if (P < 0).any() or not w.sum() > 0:
        raise ValueError("a negative prediction, or weights that sum to 0")
    P = np.clip(P, eps, 1 - eps)
    P = P / P.sum(axis=1, keepdims=True)
    return float(np.sum(w * -(Y * np.log(P)).sum(axis=1)) / w.sum())


def _aligned(solution: pd.DataFrame, submission: pd.DataFrame, id_col: str,
             columns: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(solution, submission) indexed by `id_col`, the submission's rows in the solution's order (rows the
    solution lacks are left out) and its `columns` checked: numeric, finite, >= 0."""
    for name, df in (("solution", solution), ("submission", submission)):
        if id_col not in df.columns:
            raise ValueError(f"the {name} has no row id column {id_col!r}")
        dup = df[id_col][df[id_col].duplicated()]
        if len(dup):
            raise ValueError(f"the {name} repeats the row id {dup.iloc[0]!r}")
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise ValueError(f"the {name} has no column {missing[0]!r}")
    sol, sub = solution.set_index(id_col), submission.set_index(id_col)
    absent = sol.index.difference(sub.index)
    if len(absent):
        raise ValueError(f"the submission has no row {absent[0]!r} ({len(absent)} solution rows missing)")
    sub = sub.loc[sol.index, list(columns)].apply(pd.to_numeric, errors="coerce").astype(np.float64)
    ok = (np.isfinite(sub.to_numpy()) & (sub.to_numpy() >= 0)).all(axis=1)
    if not ok.all():
        raise ValueError(f"the submission's row {sub.index[np.argmin(ok)]!r} holds a value that is not a finite "
                         f"number >= 0")
    return sol, sub


def _one_hot(sol: pd.DataFrame, cols: Sequence[str]) -> np.ndarray:
    """The solution's `cols` as an (N, C) 0/1 array; ValueError naming the first row that is not one-hot."""
    Y = sol[list(cols)].to_numpy(dtype=np.float64)
    bad = ~(np.isin(Y, (0.0, 1.0)).all(axis=1) & (Y.sum(axis=1) == 1))
    if bad.any():
        raise ValueError(f"the solution's row {sol.index[np.argmax(bad)]!r} is not one-hot over {list(cols)}")
    return Y


# ------------------------------------------------------------------ RSNA 2023 Abdominal Trauma Detection

# target -> (its classes, the sample weight of each), from the competition's Evaluation page
TRAUMA_TARGETS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "bowel": (("healthy", "injury"), (1, 2)),
    "extravasation": (("healthy", "injury"), (1, 6)),
    "kidney": (("healthy", "low", "high"), (1, 2, 4)),
    "liver": (("healthy", "low", "high"), (1, 2, 4)),
    "spleen": (("healthy", "low", "high"), (1, 2, 4)),
}
TRAUMA_COLUMNS = tuple(f"{t}_{c}" for t, (classes, _) in TRAUMA_TARGETS.items() for c in classes)  # the 13
ANY_INJURY_WEIGHTS = (1, 6)  # any_injury healthy / injured


def abdominal_trauma_losses(solution: pd.DataFrame, submission: pd.DataFrame,
                            row_id_column_name: str = "patient_id") -> dict[str, float]:
    """Every term of RSNA 2023 Abdominal Trauma Detection's score and the score, as the host's metric
    notebook (kaggle.com/code/metric/rsna-trauma-metric) computes it:

    1. per target (bowel, extravasation: healthy / injury; kidney, liver, spleen: healthy / low / high),
       the submission's columns {target}_{class} divided by their row sum, then the sample-weighted log loss
       with the weight of the true class: bowel injury 2, extravasation injury 6, kidney / liver / spleen
       low 2, high 4, every healthy 1 (the Evaluation page; the host's solution file holds them as
       {target}_weight columns, derived here from the labels);
    2. any_injury: label max over the targets of 1 - {target}_healthy, prediction max over the targets of
       1 - the normalised P(healthy), weight 6 when injured else 1, the binary log loss;
    3. the score: the mean of the six losses.

    Args:
        solution: one row per patient, the 13 one-hot columns bowel_healthy ... spleen_high (train.csv's
            layout; its any_injury column, weight columns and any other column are ignored).
        submission: one row per patient, the same 13 columns, non-negative (rows need not sum to 1).
        row_id_column_name: the patient id column of both.

    Returns: {"bowel", "extravasation", "kidney", "liver", "spleen", "any_injury", "score"}: nats.
        Where the host's code raised on a one-class any_injury (sklearn's log_loss without labels, e.g. a
        fold with no injured patient) this scores it as labels=[0, 1] would.

    Raises:
        ValueError: a missing column or row, a duplicated id, a bad prediction, a target's predictions
            summing to 0 in a row (the host: "All rows must contain at least one non-zero prediction"), a
            solution row that is not one-hot over a target's classes.
    """
    sol, sub = _aligned(solution, submission, row_id_column_name, list(TRAUMA_COLUMNS))
    losses, labels_any, preds_any = {}, [], []
    for target, (classes, weights) in TRAUMA_TARGETS.items():
        group = [f"{target}_{c}" for c in classes]
        Y, P = _one_hot(sol, group), sub[group].to_numpy()
        total = P.sum(axis=1, keepdims=True)
        if (total == 0).any():
            raise ValueError(f"the submission's row {sub.index[np.argmax(total[:, 0] == 0)]!r} predicts 0 for every "
                             f"class of {target}")
        P = P / total
        losses[target] = weighted_log_loss(Y, P, Y @ np.asarray(weights, dtype=np.float64))
        labels_any.append(1 - Y[:, 0])
        preds_any.append(1 - P[:, 0])
    y_any, p_any = np.max(labels_any, axis=0), np.max(preds_any, axis=0)
    losses["any_injury"] = weighted_log_loss(y_any, p_any, np.where(y_any == 1, *ANY_INJURY_WEIGHTS[::-1]))
    losses["score"] = float(np.mean(list(losses.values())))
    return losses


def abdominal_trauma_score(solution: pd.DataFrame, submission: pd.DataFrame,
                           row_id_column_name: str = "patient_id") -> float:
    """RSNA 2023 Abdominal Trauma Detection's score (lower is better): `abdominal_trauma_losses`' "score"."""
    return abdominal_trauma_losses(solution, submission, row_id_column_name)["score"]


# ------------------------------------------------------------------ RSNA 2024 Lumbar Spine

LUMBAR_LEVELS = ("normal_mild", "moderate", "severe")
LUMBAR_WEIGHTS = (1, 2, 4)
LUMBAR_CONDITIONS = ("spinal", "foraminal", "subarticular")  # the host's get_condition, tried in this order


def lumbar_spine_losses(solution: pd.DataFrame, submission: pd.DataFrame, row_id_column_name: str = "row_id",
                        any_severe_scalar: float = 1.0) -> dict[str, float]:
    """Every term of RSNA 2024 Lumbar Spine Degenerative Classification's score and the score, as the host's
    metric (Kaggle metric "RSNA 2024 Lumbar Spine", `score(..., any_severe_scalar=1.0)`) computes it:

    1. each row is one study x condition x level (row_id "{study_id}_{condition}_{level}", e.g.
       "4003253_spinal_canal_stenosis_l1_l2"); its condition group is the first of spinal / foraminal /
       subarticular in the row id;
    2. per group, the sample-weighted log loss over normal_mild / moderate / severe, weights 1 / 2 / 4 by
       the true severity (the solution's sample_weight column; derived here from the labels);
    3. any_severe_spinal, per study with spinal rows: label max of its spinal rows' severe, prediction max
       of its submitted (raw, not renormalised) severe probabilities, weight the max of its spinal rows'
       sample weights (so 4 with a severe level, 2 with a moderate but no severe one, else 1: the host's
       code, not a 4/1 split), the binary log loss;
    4. the score: the average of the four losses with weights 1, 1, 1, any_severe_scalar (1 on Kaggle).

    Args:
        solution: long format, one row per labelled study x condition x level: the row id column and
            one-hot normal_mild, moderate, severe (a sample_weight column is ignored).
        submission: the row id column and normal_mild, moderate, severe, non-negative; rows the solution
            lacks (an unlabelled level) are left out. Rows need not sum to 1: the host left that to
            sklearn's log_loss, which clipped each value to 1 - 1e-15 first (so [1, 1, 2] scores as thirds).
        row_id_column_name: the row id column of both; any_severe_scalar: any_severe_spinal's weight.

    Returns: {"spinal", "foraminal", "subarticular", "any_severe_spinal", "score"}: nats. A group with no
        row in the solution (a subset of the conditions) is NaN and left out of the score (the host's
        code raised there).

    Raises:
        ValueError: a missing column or row, a duplicated id, a bad prediction, a solution row that is not
            one-hot, a row id naming none of the three conditions (the host: "condition not found").
    """
    sol, sub = _aligned(solution, submission, row_id_column_name, LUMBAR_LEVELS)
    ids = sol.index.astype(str)
    condition = np.array([next((c for c in LUMBAR_CONDITIONS if c in i), "") for i in ids])
    if (condition == "").any():
        raise ValueError(f"the row id {ids[np.argmax(condition == '')]!r} names no condition {LUMBAR_CONDITIONS}")
    study = np.array([i.split("_")[0] for i in ids])
    Y, P = _one_hot(sol, LUMBAR_LEVELS), sub.to_numpy()
    w = Y @ np.asarray(LUMBAR_WEIGHTS, dtype=np.float64)
    losses, weights = {}, []
    for c in LUMBAR_CONDITIONS:
        rows = condition == c
        losses[c] = weighted_log_loss(Y[rows], P[rows], w[rows]) if rows.any() else float("nan")
        weights.append(1.0)
    spinal = pd.DataFrame({"study": study, "y": Y[:, 2], "p": P[:, 2], "w": w})[condition == "spinal"]
    if len(spinal):
        per_study = spinal.groupby("study")[["y", "p", "w"]].max()
        losses["any_severe_spinal"] = weighted_log_loss(per_study["y"], per_study["p"], per_study["w"])
    else:
        losses["any_severe_spinal"] = float("nan")
    weights.append(float(any_severe_scalar))
    values = np.array(list(losses.values()))
    kept = ~np.isnan(values)
    losses["score"] = float(np.average(values[kept], weights=np.array(weights)[kept])) if kept.any() else float("nan")
    return losses


def lumbar_spine_score(solution: pd.DataFrame, submission: pd.DataFrame, row_id_column_name: str = "row_id",
                       any_severe_scalar: float = 1.0) -> float:
    """RSNA 2024 Lumbar Spine's score (lower is better): `lumbar_spine_losses`' "score"."""
    return lumbar_spine_losses(solution, submission, row_id_column_name, any_severe_scalar)["score"]


# ------------------------------------------------------------------ RSNA 2022 Cervical Spine Fracture Detection

CERVICAL_TYPES = ("patient_overall", "C1", "C2", "C3", "C4", "C5", "C6", "C7")
CERVICAL_WEIGHTS = {"patient_overall": (7, 14), "vertebra": (1, 2)}  # (negative, positive)


def cervical_spine_score(solution: pd.DataFrame, submission: pd.DataFrame, row_id_column_name: str = "row_id",
                         target_column: str = "fractured") -> float:
    """RSNA 2022 Cervical Spine Fracture Detection's weighted multi-label log loss (lower is better).

    Source: the Evaluation page ("weighted multi-label logarithmic loss ... The any label [patient_overall]
    is weighted more highly"), the weights from the host's answer in the competition's discussion 340392
    (patient_overall negative 7, positive 14; C1-C7 negative 1, positive 2), the aggregation as participants
    reproduced the leaderboard (discussions 341854 and 344565; the host published no scoring code): per study
    s, L_s = sum_j w_sj l_sj / sum_j w_sj over its 8 targets j, l the binary log loss of P(fractured) clipped
    to [1e-15, 1 - 1e-15]; the score is the mean of L_s over the studies. (Not the weighted mean over all
    rows: a study's weights are normalised within the study.)

    Args:
        solution: long format, one row per study x target: the row id "{StudyInstanceUID}_{target}" (target
            patient_overall or C1..C7; the UID holds no underscore) and `target_column` 0/1. Every study
            needs all 8 rows.
        submission: the row id column and `target_column`, a probability in [0, 1]; extra rows are left out.
        row_id_column_name, target_column: the columns' names (Kaggle's row_id, fractured).

    Raises:
        ValueError: a missing column or row, a duplicated id, a prediction outside [0, 1] or not finite, a
            label other than 0/1, a row id naming no target, a study without all 8 targets.
    """
    sol, sub = _aligned(solution, submission, row_id_column_name, [target_column])
    y = sol[target_column].to_numpy(dtype=np.float64)
    p = sub[target_column].to_numpy()
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError(f"the solution's row {sol.index[np.argmax(~np.isin(y, (0.0, 1.0)))]!r} is not 0/1")
    if (p > 1).any():
        raise ValueError(f"the submission's row {sub.index[np.argmax(p > 1)]!r} holds a probability above 1")
    parts = sol.index.astype(str).str.split("_", n=1)
    table = pd.DataFrame({"study": parts.str[0], "target": parts.str[1], "y": y, "p": p})
    bad = ~table["target"].isin(CERVICAL_TYPES)
    if bad.any():
        raise ValueError(f"the row id {sol.index[np.argmax(bad.to_numpy())]!r} names none of {list(CERVICAL_TYPES)}")
    counts = table.groupby("study")["target"].nunique()
    if (counts < len(CERVICAL_TYPES)).any():
        raise ValueError(f"the study {counts.index[np.argmax(counts.to_numpy() < len(CERVICAL_TYPES))]!r} lacks some "
                         f"of the targets {list(CERVICAL_TYPES)}")
    overall = (table["target"] == "patient_overall").to_numpy()
    (po_neg, po_pos), (v_neg, v_pos) = CERVICAL_WEIGHTS["patient_overall"], CERVICAL_WEIGHTS["vertebra"]
    table["w"] = np.where(table["y"] == 1, np.where(overall, po_pos, v_pos), np.where(overall, po_neg, v_neg))
    q = np.clip(table["p"].to_numpy(), EPS, 1 - EPS)
    table["wl"] = table["w"] * -(table["y"] * np.log(q) + (1 - table["y"]) * np.log(1 - q))
    per_study = table.groupby("study")[["wl", "w"]].sum()
    return float(np.mean(per_study["wl"] / per_study["w"]))
