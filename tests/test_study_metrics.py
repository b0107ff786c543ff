"""comp.study_metrics against hand-worked examples (each term worked in the comments, with the natural logs
ln 2 = 0.693147, -ln 0.8 = 0.223144, -ln 0.9 = 0.105361, -ln 0.75 = 0.287682, -ln 0.6 = 0.510826,
-ln 0.7 = 0.356675, -ln 0.25 = 1.386294), against sklearn.metrics.log_loss per target with its sample
weights on random tables, and against the hosts' arithmetic re-done here independently of the module."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from comp import study_metrics as sm
from comp.errors import UserError

L = math.log

# ==================================================================== weighted_log_loss


def test_weighted_log_loss_clips_renormalises_and_weights():
    # row 0: truth class 0, P [2, 2] -> [0.5, 0.5]: ln 2, weight 1; row 1: truth class 1, P [0.2, 0.8]: -ln 0.8,
    # weight 3. (ln 2 + 3 (-ln 0.8)) / 4 = (0.693147 + 0.669431) / 4 = 0.340645
    got = sm.weighted_log_loss(np.array([[1, 0], [0, 1]]), np.array([[2.0, 2.0], [0.2, 0.8]]), np.array([1, 3]))
    assert got == pytest.approx((L(2) - 3 * L(0.8)) / 4) == pytest.approx(0.340645, abs=1e-6)
    # a 1-D prediction is P(class 1); a zero is clipped to 1e-15, not log(0)
    assert sm.weighted_log_loss(np.array([1]), np.array([0.0]), np.array([1])) == pytest.approx(-L(1e-15))
    with pytest.raises(ValueError, match="negative"):
        sm.weighted_log_loss(np.array([[1, 0]]), np.array([[-0.1, 1.1]]), np.array([1]))


# ==================================================================== RSNA 2023 abdominal trauma

TRAUMA_COLS = [f"{t}_{c}" for t, (cs, _) in sm.TRAUMA_TARGETS.items() for c in cs]


def trauma_table(rows: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([[pid, *v] for pid, v in rows.items()], columns=["patient_id", *TRAUMA_COLS])


# patient 10: all healthy; patient 11: bowel injury, kidney low, spleen high (extravasation, liver healthy)
#                 bowel     extravasation  kidney          liver          spleen
TRAUMA_SOLUTION = trauma_table({
    10: [1, 0,     1, 0,          1, 0, 0,        1, 0, 0,       1, 0, 0],
    11: [0, 1,     1, 0,          0, 1, 0,        1, 0, 0,       0, 0, 1],
})
TRAUMA_SUBMISSION = trauma_table({  # not normalised: 11's bowel [1, 1], extravasation [0.6, 0.2], kidney [2, 6, 2]
    10: [0.8, 0.2, 0.9, 0.1,      0.5, 0.25, 0.25, 1.0, 0.0, 0.0, 0.6, 0.3, 0.1],
    11: [1.0, 1.0, 0.6, 0.2,      2.0, 6.0, 2.0,   0.7, 0.2, 0.1, 0.2, 0.3, 0.5],
})


def test_abdominal_trauma_by_hand():
    got = sm.abdominal_trauma_losses(TRAUMA_SOLUTION.copy(), TRAUMA_SUBMISSION.copy())
    # bowel: 10 healthy at 0.8, weight 1; 11 injury at 1/(1+1) = 0.5, weight 2: (0.223144 + 2 * 0.693147) / 3
    bowel = (-L(0.8) + 2 * L(2)) / 3
    # extravasation: 10 healthy at 0.9, w 1; 11 healthy at 0.6/0.8 = 0.75, w 1 (healthy): (0.105361 + 0.287682) / 2
    extravasation = (-L(0.9) - L(0.75)) / 2
    # kidney: 10 healthy at 0.5, w 1; 11 low at 6/10 = 0.6 (divided before any clip), w 2: (0.693147 + 2 * 0.510826) / 3
    kidney = (L(2) - 2 * L(0.6)) / 3
    # liver: 10 healthy at 1 (clipped: ~2e-15, nil), w 1; 11 healthy at 0.7, w 1: 0.356675 / 2
    liver = (0 - L(0.7)) / 2
    # spleen: 10 healthy at 0.6, w 1; 11 high at 0.5, w 4: (0.510826 + 4 * 0.693147) / 5
    spleen = (-L(0.6) + 4 * L(2)) / 5
    # any_injury: 10 label 0, prediction max(1-0.8, 1-0.9, 1-0.5, 1-1, 1-0.6) = 0.5, w 1: ln 2;
    #             11 label 1, prediction max(1-0.5, 1-0.75, 1-0.2, 1-0.7, 1-0.2) = 0.8, w 6: 6 * 0.223144
    any_injury = (L(2) - 6 * L(0.8)) / 7
    want = dict(bowel=bowel, extravasation=extravasation, kidney=kidney, liver=liver, spleen=spleen,
                any_injury=any_injury)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
    # the mean of the six: (0.536479 + 0.196521 + 0.571599 + 0.178337 + 0.656683 + 0.290287) / 6 = 0.404985
    assert got["score"] == pytest.approx(np.mean(list(want.values())), abs=1e-12)
    assert got["score"] == pytest.approx(0.404985, abs=1e-6)
    assert sm.abdominal_trauma_score(TRAUMA_SOLUTION, TRAUMA_SUBMISSION) == got["score"]


def test_abdominal_trauma_matches_sklearn_per_target():
    rng = np.random.default_rng(3)
    n = 40
    sol, sub = {"patient_id": np.arange(n)}, {"patient_id": np.arange(n)}
    losses, any_y, any_p = {}, [], []
    for target, (classes, weights) in sm.TRAUMA_TARGETS.items():
        y = rng.choice(len(classes), n, p=[0.8] + [0.2 / (len(classes) - 1)] * (len(classes) - 1))
        p = rng.uniform(0.05, 1.0, (n, len(classes)))
        for k, c in enumerate(classes):
            sol[f"{target}_{c}"], sub[f"{target}_{c}"] = (y == k).astype(int), p[:, k]
        q = p / p.sum(1, keepdims=True)  # the host's normalize_probabilities_to_one
        losses[target] = skm.log_loss(y, q, labels=range(len(classes)), sample_weight=np.take(weights, y))
        any_y.append(y > 0)
        any_p.append(1 - q[:, 0])
    y_any, p_any = np.max(any_y, 0).astype(int), np.max(any_p, 0)
    losses["any_injury"] = skm.log_loss(y_any, np.c_[1 - p_any, p_any], labels=[0, 1],
                                        sample_weight=np.where(y_any == 1, 6, 1))
    shuffled = pd.DataFrame(sub).sample(frac=1.0, random_state=0)  # row order is the id's business
    got = sm.abdominal_trauma_losses(pd.DataFrame(sol), shuffled)
    for k, v in losses.items():
        assert got[k] == pytest.approx(v, rel=1e-9), k
    assert got["score"] == pytest.approx(np.mean(list(losses.values())), rel=1e-9)


def test_abdominal_trauma_refuses_bad_tables():
    sub = TRAUMA_SUBMISSION.copy()
    sub.loc[0, ["kidney_healthy", "kidney_low", "kidney_high"]] = 0.0
    with pytest.raises(ValueError, match="row 10 predicts 0 for every class of kidney"):
        sm.abdominal_trauma_score(TRAUMA_SOLUTION, sub)
    with pytest.raises(ValueError, match="submission has no row 11"):
        sm.abdominal_trauma_score(TRAUMA_SOLUTION, TRAUMA_SUBMISSION.iloc[:1])
    with pytest.raises(ValueError, match="no column 'spleen_high'"):
        sm.abdominal_trauma_score(TRAUMA_SOLUTION, TRAUMA_SUBMISSION.drop(columns="spleen_high"))
    sub = TRAUMA_SUBMISSION.copy()
    sub.loc[1, "liver_low"] = np.nan
    with pytest.raises(ValueError, match="row 11 holds a value that is not a finite number"):
        sm.abdominal_trauma_score(TRAUMA_SOLUTION, sub)
    sol = TRAUMA_SOLUTION.copy()
    sol.loc[1, "liver_low"] = 1
    with pytest.raises(ValueError, match="row 11 is not one-hot"):
        sm.abdominal_trauma_score(sol, TRAUMA_SUBMISSION)
    before = TRAUMA_SUBMISSION.copy()
    sm.abdominal_trauma_score(TRAUMA_SOLUTION, TRAUMA_SUBMISSION)
    pd.testing.assert_frame_equal(TRAUMA_SUBMISSION, before)  # not normalised in place (the host's code was)


# ==================================================================== RSNA 2024 lumbar spine

def lumbar(rows: list[tuple[str, list[float]]]) -> pd.DataFrame:
    return pd.DataFrame([[i, *v] for i, v in rows], columns=["row_id", *sm.LUMBAR_LEVELS])


LUMBAR_SOLUTION = lumbar([
    ("1_spinal_canal_stenosis_l1_l2", [1, 0, 0]),
    ("1_spinal_canal_stenosis_l2_l3", [0, 0, 1]),
    ("1_left_neural_foraminal_narrowing_l4_l5", [0, 1, 0]),
    ("1_left_subarticular_stenosis_l5_s1", [1, 0, 0]),
    ("2_spinal_canal_stenosis_l1_l2", [0, 1, 0]),
    ("2_right_neural_foraminal_narrowing_l5_s1", [1, 0, 0]),
    ("2_right_subarticular_stenosis_l4_l5", [0, 0, 1]),
])
LUMBAR_SUBMISSION = lumbar([
    ("2_right_subarticular_stenosis_l4_l5", [0.2, 0.2, 0.4]),  # not normalised: [0.25, 0.25, 0.5]
    ("1_spinal_canal_stenosis_l1_l2", [0.8, 0.1, 0.1]),
    ("1_spinal_canal_stenosis_l2_l3", [0.2, 0.3, 0.5]),
    ("1_left_neural_foraminal_narrowing_l4_l5", [0.2, 0.6, 0.2]),
    ("1_left_subarticular_stenosis_l5_s1", [0.5, 0.5, 0.0]),
    ("2_spinal_canal_stenosis_l1_l2", [0.5, 0.25, 0.25]),
    ("2_right_neural_foraminal_narrowing_l5_s1", [0.9, 0.05, 0.05]),
    ("2_spinal_canal_stenosis_l3_l4", [0.1, 0.1, 0.8]),  # no label in the solution: left out
])


def test_lumbar_spine_by_hand():
    got = sm.lumbar_spine_losses(LUMBAR_SOLUTION, LUMBAR_SUBMISSION)
    # spinal: 1 l1_l2 normal at 0.8, w 1; 1 l2_l3 severe at 0.5, w 4; 2 l1_l2 moderate at 0.25, w 2:
    #   (0.223144 + 4 * 0.693147 + 2 * 1.386294) / 7 = 0.824046
    spinal = (-L(0.8) + 4 * L(2) - 2 * L(0.25)) / 7
    # foraminal: 1 moderate at 0.6, w 2; 2 normal at 0.9, w 1: (2 * 0.510826 + 0.105361) / 3 = 0.375671
    foraminal = (-2 * L(0.6) - L(0.9)) / 3
    # subarticular: 1 normal at 0.5 (the 0 clipped to 1e-15), w 1; 2 severe at 0.4/0.8 = 0.5, w 4: ln 2
    subarticular = (L(2) + 4 * L(2)) / 5
    # any_severe_spinal: study 1 label 1 (l2_l3 severe), prediction max(0.1, 0.5) = 0.5, weight max(1, 4) = 4;
    # study 2 label 0, prediction 0.25 (its l3_l4 row has no label, so not 0.8), weight max(2) = 2 (moderate:
    # the host's max of the sample weights, not 1): (4 * 0.693147 + 2 * 0.287682) / 6 = 0.557992
    any_severe = (4 * L(2) - 2 * L(0.75)) / 6
    want = dict(spinal=spinal, foraminal=foraminal, subarticular=subarticular, any_severe_spinal=any_severe)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-12), k
    # (0.824046 + 0.375671 + 0.693147 + 0.557992) / 4 = 0.612714
    assert got["score"] == pytest.approx(np.mean(list(want.values())), abs=1e-12)
    assert got["score"] == pytest.approx(0.612714, abs=1e-6)
    # any_severe_scalar weights the fourth term: (s + f + sa + 2 a) / 5
    assert sm.lumbar_spine_score(LUMBAR_SOLUTION, LUMBAR_SUBMISSION, any_severe_scalar=2.0) == pytest.approx(
        (spinal + foraminal + subarticular + 2 * any_severe) / 5, abs=1e-12)
    # the host left the renormalising to sklearn's log_loss, which clipped to 1 - 1e-15 first: a row [1, 1, 2]
    # is [1/3, 1/3, 1/3], not [0.25, 0.25, 0.5] (subarticular: (ln 2 + 4 ln 3) / 5)
    over = LUMBAR_SUBMISSION.copy()
    over.loc[0, list(sm.LUMBAR_LEVELS)] = [1.0, 1.0, 2.0]
    assert sm.lumbar_spine_losses(LUMBAR_SOLUTION, over)["subarticular"] == pytest.approx((L(2) + 4 * L(3)) / 5)
    # a solution of the spinal canal only: the other groups are NaN and out of the mean
    only = sm.lumbar_spine_losses(LUMBAR_SOLUTION.iloc[[0, 1, 4]], LUMBAR_SUBMISSION)
    assert math.isnan(only["foraminal"]) and only["score"] == pytest.approx((spinal + any_severe) / 2, abs=1e-12)


def test_lumbar_spine_matches_sklearn_per_group():
    rng = np.random.default_rng(5)
    conditions = ["spinal_canal_stenosis", "left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing",
                  "left_subarticular_stenosis", "right_subarticular_stenosis"]
    levels = ["l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1"]
    ids = [f"{s}_{c}_{lv}" for s in range(100, 130) for c in conditions for lv in levels]
    y = rng.choice(3, len(ids), p=[0.7, 0.2, 0.1])
    p = rng.dirichlet(np.ones(3), len(ids)) * 0.97 + 0.01  # rows sum to 1, inside [0.01, 0.98]
    sol = pd.DataFrame({"row_id": ids, **{lv: (y == k).astype(int) for k, lv in enumerate(sm.LUMBAR_LEVELS)}})
    sub = pd.DataFrame({"row_id": ids, **{lv: p[:, k] for k, lv in enumerate(sm.LUMBAR_LEVELS)}})
    group = np.array([next(g for g in sm.LUMBAR_CONDITIONS if g in i) for i in ids])
    w = np.take([1, 2, 4], y)
    want = [skm.log_loss(y[group == g], p[group == g], labels=[0, 1, 2], sample_weight=w[group == g])
            for g in sm.LUMBAR_CONDITIONS]
    spinal = pd.DataFrame({"s": [i.split("_")[0] for i in ids], "y": y == 2, "p": p[:, 2], "w": w})[group == "spinal"]
    per = spinal.groupby("s").max()
    want.append(skm.log_loss(per["y"].astype(int), np.c_[1 - per["p"], per["p"]], labels=[0, 1],
                             sample_weight=per["w"]))
    assert sm.lumbar_spine_score(sol, sub) == pytest.approx(np.mean(want), rel=1e-9)


def test_lumbar_spine_refuses_a_row_id_without_condition():
    bad = lumbar([("1_spinal_canal_stenosis_l1_l2", [1, 0, 0]), ("1_something_else_l1_l2", [1, 0, 0])])
    with pytest.raises(ValueError, match="row id '1_something_else_l1_l2' names no condition"):
        sm.lumbar_spine_score(bad, bad)


# ==================================================================== RSNA 2022 cervical spine

def cervical_long(wide: dict[str, list[float]]) -> pd.DataFrame:
    """train.csv's wide rows (StudyInstanceUID -> patient_overall, C1..C7) as the long row_id / fractured."""
    return pd.DataFrame([(f"{uid}_{t}", v) for uid, vals in wide.items() for t, v in zip(sm.CERVICAL_TYPES, vals,
                                                                                        strict=True)],
                        columns=["row_id", "fractured"])


#                                   overall C1  C2   C3   C4   C5   C6   C7
CERVICAL_SOLUTION = cervical_long({"1.2.826.0.1.3680043.6200": [0, 0, 0, 0, 0, 0, 0, 0],
                                   "1.2.826.0.1.3680043.10633": [1, 0, 1, 0, 0, 0, 0, 0]})
CERVICAL_SUBMISSION = cervical_long({"1.2.826.0.1.3680043.6200": [0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1],
                                     "1.2.826.0.1.3680043.10633": [0.5, 0.1, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1]})


def test_cervical_spine_by_hand():
    # study 6200, all negative: overall at 0.8, w 7; C1-C7 at 0.9, w 1 each; weights sum 14:
    #   (7 * 0.223144 + 7 * 0.105361) / 14 = 0.164252
    a = (-7 * L(0.8) - 7 * L(0.9)) / 14
    # study 10633, overall and C2 fractured: overall at 0.5, w 14; C2 at 0.5, w 2; six others at 0.9, w 1; sum 22:
    #   (14 * 0.693147 + 2 * 0.693147 + 6 * 0.105361) / 22 = 0.532842
    b = (16 * L(2) - 6 * L(0.9)) / 22
    got = sm.cervical_spine_score(CERVICAL_SOLUTION, CERVICAL_SUBMISSION.iloc[::-1])
    assert got == pytest.approx((a + b) / 2, abs=1e-12) == pytest.approx(0.348547, abs=1e-6)
    # not the weighted mean over all 16 rows (14.022 / 36 = 0.389501): each study's weights are its own
    flat = skm.log_loss(CERVICAL_SOLUTION["fractured"], CERVICAL_SUBMISSION["fractured"], labels=[0, 1],
                        sample_weight=[7, 1, 1, 1, 1, 1, 1, 1, 14, 1, 2, 1, 1, 1, 1, 1])
    assert flat == pytest.approx(0.389501, abs=1e-6) and abs(flat - got) > 0.04


def test_cervical_spine_matches_the_per_study_reference():
    rng = np.random.default_rng(7)
    uids = [f"1.2.826.0.1.{k}" for k in range(25)]
    Y = (rng.random((25, 8)) < 0.3).astype(int)
    Y[:, 0] = Y[:, 1:].max(1)  # patient_overall = any vertebra
    P = rng.uniform(0.02, 0.98, (25, 8))
    W = np.where(Y == 1, [14, 2, 2, 2, 2, 2, 2, 2], [7, 1, 1, 1, 1, 1, 1, 1])
    # each study: sklearn's weighted binary log loss over its 8 targets; then the mean over the studies
    want = np.mean([skm.log_loss(Y[s], np.c_[1 - P[s], P[s]], labels=[0, 1], sample_weight=W[s]) for s in range(25)])
    got = sm.cervical_spine_score(cervical_long(dict(zip(uids, Y.tolist(), strict=True))),
                                  cervical_long(dict(zip(uids, P.tolist(), strict=True))))
    assert got == pytest.approx(want, rel=1e-9)


def test_cervical_spine_refuses_bad_tables():
    with pytest.raises(ValueError, match="study '1.2.826.0.1.3680043.10633' lacks some of the targets"):
        sm.cervical_spine_score(CERVICAL_SOLUTION.iloc[:-1], CERVICAL_SUBMISSION)
    sub = CERVICAL_SUBMISSION.copy()
    sub.loc[3, "fractured"] = 1.5
    with pytest.raises(ValueError, match="'1.2.826.0.1.3680043.6200_C3' holds a probability above 1"):
        sm.cervical_spine_score(CERVICAL_SOLUTION, sub)
    with pytest.raises(ValueError, match="repeats the row id"):
        sm.cervical_spine_score(CERVICAL_SOLUTION, pd.concat([CERVICAL_SUBMISSION, CERVICAL_SUBMISSION.iloc[:1]]))
    sol = CERVICAL_SOLUTION.copy()
    sol.loc[0, "row_id"] = "1.2.826.0.1.3680043.6200_C8"
    with pytest.raises(ValueError, match="names none of"):
        sm.cervical_spine_score(sol, sol)


# ==================================================================== registered as comp.metrics' metrics

def _wide(long: pd.DataFrame, columns: list[str]) -> tuple[list[str], np.ndarray]:
    """A long table (row_id `<study>_<target>`, `columns`) as (targets, (studies, targets x columns)),
    all zeros where a study has no row for a target."""
    parts = long["row_id"].str.split("_", n=1)
    targets = sorted(set(parts.str[1]))
    studies = sorted(set(parts.str[0]))
    out = np.zeros((len(studies), len(targets) * len(columns)))
    for (s, t), row in zip(zip(parts.str[0], parts.str[1], strict=True), long[columns].to_numpy(), strict=True):
        j = targets.index(t) * len(columns)
        out[studies.index(s), j:j + len(columns)] = row
    return targets, out


def test_registered_metrics_score_a_tasks_outputs_as_the_hosts_formulas():
    """rsna2022_cervical (task=multilabel), rsna2023_trauma and rsna2024_lumbar (task=multihead) from a task's
    wide outputs give the hand-worked scores above; each is lower-is-better and scores only the tasks whose
    outputs it reads."""
    from comp.metrics import applies, check_metric, higher_is_better, score_task
    from comp.tasks import Task

    names = [c for c in TRAUMA_SOLUTION.columns if c != "patient_id"]
    heads = [[t, len(c)] for t, (c, _) in sm.TRAUMA_TARGETS.items()]
    trauma = Task("multihead", names, "multihead", heads=heads)
    got = score_task("rsna2023_trauma", trauma, TRAUMA_SOLUTION[names].to_numpy(), TRAUMA_SUBMISSION[names].to_numpy())
    assert got == pytest.approx(0.404985, abs=1e-6)

    levels = list(sm.LUMBAR_LEVELS)
    targets, Y = _wide(LUMBAR_SOLUTION, levels)
    sub = LUMBAR_SUBMISSION[LUMBAR_SUBMISSION["row_id"].str.split("_", n=1).str[1].isin(targets)]
    _, P = _wide(sub, levels)
    lumbar = Task("multihead", [f"{t}_{c}" for t in targets for c in levels], "multihead",
                  heads=[[t, 3] for t in targets])
    assert score_task("rsna2024_lumbar", lumbar, Y, P) == pytest.approx(0.612714, abs=1e-6)  # unlabelled: left out

    types, Yc = _wide(CERVICAL_SOLUTION.assign(row_id=CERVICAL_SOLUTION["row_id"].str.replace(
        "1.2.826.0.1.3680043.", "", regex=False)), ["fractured"])
    _, Pc = _wide(CERVICAL_SUBMISSION.assign(row_id=CERVICAL_SUBMISSION["row_id"].str.replace(
        "1.2.826.0.1.3680043.", "", regex=False)), ["fractured"])
    cervical = Task("multilabel", types, "sigmoid")
    assert score_task("rsna2022_cervical", cervical, Yc, Pc) == pytest.approx(0.348547, abs=1e-6)

    for name, task in (("rsna2022_cervical", cervical), ("rsna2023_trauma", trauma), ("rsna2024_lumbar", lumbar)):
        assert applies(name, task) and not higher_is_better(name)
    assert not applies("rsna2024_lumbar", trauma) and not applies("rsna2023_trauma", lumbar)
    assert not applies("rsna2022_cervical", Task("multilabel", ["C1", "C2"], "sigmoid"))
    with pytest.raises(UserError, match="patient_overall, C1..C7"):
        check_metric("rsna2022_cervical", Task("multilabel", ["C1", "C2"], "sigmoid"))
