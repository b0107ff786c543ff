"""comp.metrics and comp.competition_metrics against known values: scikit-learn, SciPy, a direct
implementation of each definition on random inputs (binary and multi-class, with and without absent
classes), hand-computed examples, and the competitions' published metric code re-implemented here
independently of the modules. Every metric is computed over the competition's C classes, whatever classes a
fold happens to hold, and the kit's two QWKs (the metric, the cut-point search's) agree."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special
from sklearn import metrics as skm

from comp import competition_metrics as cm
from comp.errors import UserError
from comp.experiment import load_config
from comp.metrics import (
    METRICS,
    auc,
    check_metric,
    classification_report,
    confusion,
    higher_is_better,
    positive_index,
    score,
    score_all,
)
from comp.predict import thresholds

# ==================================================================== comp.metrics

def random_case(seed: int, n: int, c: int, drop_class: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    if drop_class:
        y[y == c - 1] = 0  # a class absent from the labels, as in a small validation fold
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[y] * rng.random((n, 1))  # informative, not perfect
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return y, p


def qwk_by_definition(y, pred, c):
    """Cohen's kappa with quadratic weights: 1 - sum(W*O) / sum(W*E)."""
    o = np.zeros((c, c))
    np.add.at(o, (y, pred), 1)
    e = np.outer(o.sum(1), o.sum(0)) / o.sum()
    w = (np.arange(c)[:, None] - np.arange(c)[None, :]) ** 2
    return 1 - (w * o).sum() / (w * e).sum()


def auc_by_ranks(pos_scores, neg_scores):
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney U)."""
    diff = pos_scores[:, None] - neg_scores[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def f1_by_definition(y, pred, k):
    tp, fp, fn = ((pred == k) & (y == k)).sum(), ((pred == k) & (y != k)).sum(), ((pred != k) & (y == k)).sum()
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


CASES = [(seed, n, c, drop) for seed, (n, c, drop) in enumerate([(50, 2, False), (200, 5, False), (97, 3, False),
                                                                   (120, 4, True), (31, 6, False)])]


@pytest.mark.parametrize("seed,n,c,drop", CASES)
def test_metrics_match_definitions_and_sklearn(seed, n, c, drop):
    y, p = random_case(seed, n, c, drop)
    pred = p.argmax(1)
    s = score_all(y, p)
    assert set(s) == {"accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "qwk", "auc", "log_loss"}
    labels = np.unique(np.concatenate([y, pred]))
    present = np.unique(y)

    assert s["accuracy"] == pytest.approx((pred == y).mean(), abs=1e-12)
    assert s["accuracy"] == pytest.approx(skm.accuracy_score(y, pred), abs=1e-12)
    recalls = [((pred == k) & (y == k)).sum() / (y == k).sum() for k in present]
    assert s["balanced_accuracy"] == pytest.approx(np.mean(recalls), abs=1e-12)
    f1s = np.array([f1_by_definition(y, pred, k) for k in labels])
    assert s["f1_macro"] == pytest.approx(f1s.mean(), abs=1e-12)
    support = np.array([(y == k).sum() for k in labels])
    assert s["f1_weighted"] == pytest.approx((f1s * support).sum() / support.sum(), abs=1e-12)
    assert s["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro"), abs=1e-12)
    assert s["qwk"] == pytest.approx(qwk_by_definition(y, pred, c), abs=1e-12)
    assert s["qwk"] == pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic", labels=range(c)), abs=1e-12)

    if c == 2:
        expect = auc_by_ranks(p[y == 1, 1], p[y == 0, 1])
        assert s["auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]), abs=1e-12)
    else:
        expect = np.mean([auc_by_ranks(p[y == k, k], p[y != k, k]) for k in present])
        if not drop:
            assert s["auc"] == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr"), abs=1e-12)
    assert s["auc"] == pytest.approx(expect, abs=1e-12)


def test_undefined_auc_is_nan_and_unknown_metric_is_refused():
    y, p = random_case(0, 20, 3)
    assert np.isnan(METRICS["auc"](np.zeros(20, int), p))
    with pytest.raises(UserError, match="'metric'.*'kappa'"):
        check_metric("kappa")


def test_report_and_confusion_match_sklearn():
    y, p = random_case(3, 150, 4)
    pred = p.argmax(1)
    classes = ["a", "b", "c", "d"]
    rep = classification_report(y, pred, classes)
    p_, r_, f_, s_ = skm.precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    np.testing.assert_allclose(rep.loc[classes, "precision"], p_)
    np.testing.assert_allclose(rep.loc[classes, "recall"], r_)
    np.testing.assert_allclose(rep.loc[classes, "f1-score"], f_)
    assert list(rep.loc[classes, "support"]) == list(s_)
    cm = confusion(y, pred, 4)
    assert cm.sum() == 150 and all(cm[i, j] == ((y == i) & (pred == j)).sum() for i in range(4) for j in range(4))
    np.testing.assert_allclose(confusion(y, pred, 4, normalize="true").sum(1), 1.0)


# ---- over the competition's classes, whatever a fold holds ----


def test_qwk_weights_span_every_grade_even_one_absent_from_the_fold():
    y = np.array([0, 0, 1, 1, 2, 2, 4, 4, 4, 0])  # grade 3 neither true nor predicted
    pred = np.array([0, 1, 1, 2, 2, 4, 4, 4, 2, 0])
    probs = np.eye(5)[pred]
    assert METRICS["qwk"](y, probs) == pytest.approx(0.7916666666666666, abs=1e-12)  # 0.8519 over grades {0,1,2,4}
    assert thresholds.qwk(y, pred, 5) == pytest.approx(0.7916666666666666, abs=1e-12)


@st.composite
def graded(draw):
    """Labels and predictions over C grades, each side drawn from its own random subset of the grades."""
    c = draw(st.integers(2, 7))
    n = draw(st.integers(1, 60))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    y_grades = rng.choice(c, draw(st.integers(1, c)), replace=False)
    p_grades = rng.choice(c, draw(st.integers(1, c)), replace=False)
    return c, rng.choice(y_grades, n), rng.choice(p_grades, n)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@settings(max_examples=200, deadline=None)
@given(graded())
def test_both_kit_qwks_equal_scikit_learn_over_all_grades(case):
    c, y, pred = case
    want = skm.cohen_kappa_score(y, pred, weights="quadratic", labels=range(c))
    kit = METRICS["qwk"](y, np.eye(c)[pred])
    fast = thresholds.qwk(y, pred, c)
    if np.isnan(want):  # one grade on both sides: undefined (the search's fast version scores it 0)
        assert np.isnan(kit) and fast == 0.0
    else:
        assert kit == pytest.approx(want, abs=1e-12) and fast == pytest.approx(want, abs=1e-12)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.UndefinedMetricWarning")
@pytest.mark.filterwarnings("ignore:.*(single label|not in y_true).*:UserWarning")
@settings(max_examples=40, deadline=None)
@given(graded())
def test_class_averages_follow_their_definitions_over_all_classes(case):
    """F1 of a class predicted but absent from the truth counts 0; a class neither true nor predicted has no
    F1 and no recall and is left out; the report's averages are the metrics' values."""
    c, y, pred = case
    probs = np.eye(c)[pred]
    s = score_all(y, probs)
    f1 = {k: 2 * tp / (2 * tp + fp + fn) for k in range(c)
          if (tp := np.sum((pred == k) & (y == k))) + (fp := np.sum((pred == k) & (y != k)))
          + (fn := np.sum((pred != k) & (y == k))) > 0}
    assert s["f1_macro"] == pytest.approx(np.mean(list(f1.values())), abs=1e-12)
    support = {k: np.sum(y == k) for k in f1}
    assert s["f1_weighted"] == pytest.approx(sum(f1[k] * support[k] for k in f1) / len(y), abs=1e-12)
    recalls = [np.mean(pred[y == k] == k) for k in np.unique(y)]
    assert s["balanced_accuracy"] == pytest.approx(np.mean(recalls), abs=1e-12)
    assert s["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)
    names = [f"g{k}" for k in range(c)]
    rep = classification_report(y, pred, names)
    assert list(rep.index[:c]) == names
    assert rep.loc["macro avg", "f1-score"] == pytest.approx(s["f1_macro"], abs=1e-12)
    assert rep.loc["weighted avg", "f1-score"] == pytest.approx(s["f1_weighted"], abs=1e-12)
    assert rep.loc["macro avg", "recall"] == pytest.approx(s["balanced_accuracy"], abs=1e-12)
    assert confusion(y, pred, c).shape == (c, c) and confusion(y, pred, c).sum() == len(y)


def test_binary_auc_ranks_the_positive_class_by_its_own_column():
    y = np.array([0, 0, 1, 1, 0])
    # saturated softmax: P(class 1) rounds to 1.0 for two rows whose P(class 0) still differ
    p0 = np.array([1e-9, 1e-12, 1e-15, 0.4, 0.7])
    probs = np.stack([p0, np.float32(1) - p0.astype(np.float32)], 1).astype(np.float64)
    assert auc(y, probs, positive=0) == pytest.approx(skm.roc_auc_score(y == 0, probs[:, 0]), abs=1e-12)
    assert auc(y, probs, positive=1) == pytest.approx(skm.roc_auc_score(y == 1, probs[:, 1]), abs=1e-12)
    assert auc(y, probs, positive=0) != auc(y, probs, positive=1)  # the ties differ: the column matters


# ---- the positive class of a two-class AUC ----


def test_positive_class_defaults_and_validation():
    assert positive_index("", ["0", "1"], [0, 1]) == 1
    assert positive_index("", ["malignant", "benign"], [1, 0]) == 0
    assert positive_index("", ["yes", "no"], ["True", "False"]) == 0
    assert positive_index("", ["NORMAL", "PNEUMONIA"], ["NORMAL", "PNEUMONIA"]) == 1  # no 1/True: the second
    assert positive_index("benign", ["malignant", "benign"], [1, 0]) == 1
    assert positive_index("0", ["malignant", "benign"], [1, 0]) == 1  # by value
    with pytest.raises(UserError, match="'data.positive_class': 'melanoma' is not one of the classes"):
        positive_index("melanoma", ["malignant", "benign"], [1, 0])
    with pytest.raises(UserError, match="'data.positive_class'"):
        load_config(None, ["data.classes=[malignant,benign]", "data.class_values=[1,0]", "data.positive_class=x"])


# ==================================================================== comp.competition_metrics

RNG = np.random.default_rng(0)


# ---- reference implementations, written from the competitions' published code ----

def isic_reference(y: np.ndarray, score: np.ndarray, min_tpr: float = 0.80) -> float:
    """ISIC 2024's later published scorer: roc_curve of the flipped problem, a point interpolated at
    max_fpr, sklearn.metrics.auc of the curve up to it."""
    v_gt, v_pred = np.abs(y - 1), -1.0 * score
    max_fpr = abs(1 - min_tpr)
    fpr, tpr, _ = skm.roc_curve(v_gt, v_pred)
    stop = np.searchsorted(fpr, max_fpr, "right")
    tpr = np.append(tpr[:stop], np.interp(max_fpr, [fpr[stop - 1], fpr[stop]], [tpr[stop - 1], tpr[stop]]))
    fpr = np.append(fpr[:stop], max_fpr)
    return float(skm.auc(fpr, tpr))


def area_above_tpr(y: np.ndarray, score: np.ndarray, min_tpr: float) -> float:
    """The definition itself: the area between the (piecewise-linear) ROC curve and the line TPR = min_tpr,
    integrated exactly segment by segment (a segment crossing the line is cut where it crosses)."""
    fpr, tpr, _ = skm.roc_curve(y, score, drop_intermediate=False)
    area = 0.0
    for f0, f1, t0, t1 in zip(fpr[:-1], fpr[1:], tpr[:-1], tpr[1:], strict=True):
        a, b = t0 - min_tpr, t1 - min_tpr
        if f1 == f0 or (a <= 0 and b <= 0):
            continue
        if a >= 0 and b >= 0:
            area += (f1 - f0) * (a + b) / 2
        else:  # crosses the line: only the triangle above it counts
            area += (f1 - f0) * max(a, b) ** 2 / (2 * abs(b - a))
    return area


def rsna_pfbeta(labels, predictions, beta: float) -> float:
    """The RSNA Breast Cancer Detection host's pfbeta, a loop over the cases."""
    y_true_count = ctp = cfp = 0.0
    for label, pred in zip(labels, predictions, strict=True):
        pred = min(max(pred, 0), 1)
        if label:
            y_true_count += 1
            ctp += pred
        else:
            cfp += pred
    precision, recall = ctp / (ctp + cfp), ctp / y_true_count
    if precision > 0 and recall > 0:
        return (1 + beta**2) * precision * recall / (beta**2 * precision + recall)
    return 0.0


def hms_kl(Y: np.ndarray, P: np.ndarray, eps: float = 1e-15) -> float:
    """HMS's kaggle_kl_div (micro average): per column, clip the submission, Y*log(Y/P) where Y != 0."""
    out = np.zeros_like(Y)
    for c in range(Y.shape[1]):
        sub = np.clip(P[:, c], eps, 1 - eps)
        nz = Y[:, c] != 0
        out[nz, c] = Y[nz, c] * np.log(Y[nz, c] / sub[nz])
    return float(np.average(out.sum(axis=1)))


# ---- log loss ----

def test_log_loss_hand_example_renormalises_and_clips():
    p = np.array([[0.5, 0.25, 0.25], [0.2, 0.2, 0.6]])
    want = -(math.log(0.5) + math.log(0.6)) / 2
    assert cm.log_loss(np.array([0, 2]), p) == pytest.approx(want, abs=1e-12)
    assert cm.log_loss(np.array([0, 2]), p * [[0.5], [0.1]]) == pytest.approx(want, abs=1e-12)  # rows renormalised
    # clipped to [eps, 1-eps] first, renormalised after (Kaggle's order): (2, 1, 1) -> (1/3, 1/3, 1/3)
    assert cm.log_loss(np.array([0]), np.array([[2.0, 1.0, 1.0]])) == pytest.approx(math.log(3), abs=1e-12)
    # a confident wrong answer costs -log(1e-15 / (1 + 1e-15)), not infinity
    assert cm.log_loss(np.array([1]), np.array([[1.0, 0.0, 0.0]])) == pytest.approx(-math.log(1e-15 / (1 + 1e-15)))


def test_log_loss_matches_sklearn_with_absent_classes():
    p = RNG.dirichlet(np.ones(5), size=40)
    y = RNG.integers(0, 3, size=40)  # classes 3 and 4 never occur
    assert cm.log_loss(y, p) == pytest.approx(skm.log_loss(y, p, labels=range(5)), abs=1e-12)
    with pytest.raises(ValueError, match="class indices"):
        cm.log_loss(np.array([5]), p[:1])


# ---- AUCs ----

def test_binary_auc_and_nan_on_one_class():
    y, s = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert cm.binary_auc(y, s) == pytest.approx(0.75)
    assert math.isnan(cm.binary_auc(np.ones(4), s))


def test_partial_auc_known_values():
    y = np.array([0] * 50 + [1] * 50)
    assert cm.partial_auc(y, y + 0.0) == pytest.approx(0.2, abs=1e-12)  # perfect: 1 - min_tpr
    assert cm.partial_auc(y, -y + 0.0) == pytest.approx(0.0, abs=1e-12)  # fully inverted
    assert cm.partial_auc(y, np.full(100, 0.5)) == pytest.approx(0.02, abs=1e-12)  # chance diagonal: 0.2^2 / 2
    # by hand: ROC (0,0) (0,.5) (.5,.5) (.5,1) (1,1): TPR >= 0.8 only on FPR 0.5..1 at TPR 1 -> 0.5 * 0.2
    assert cm.partial_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.1)
    assert cm.partial_auc(y, y + 0.0, min_tpr=0.5) == pytest.approx(0.5, abs=1e-12)
    assert math.isnan(cm.partial_auc(np.zeros(10), RNG.random(10)))
    with pytest.raises(ValueError, match="min_tpr"):
        cm.partial_auc(y, y + 0.0, min_tpr=1.0)


@pytest.mark.parametrize("seed", range(6))
def test_partial_auc_equals_published_code_and_the_integral(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    y = (rng.random(n) < rng.uniform(0.05, 0.5)).astype(int)
    y[:2] = [0, 1]
    score = y * rng.uniform(0, 2) + rng.normal(size=n)
    if seed % 2:
        score = np.round(score, 1)  # ties
    for min_tpr in (0.8, 0.6):
        got = cm.partial_auc(y, score, min_tpr)
        assert got == pytest.approx(isic_reference(y, score, min_tpr), abs=1e-9)
        assert got == pytest.approx(area_above_tpr(y, score, min_tpr), abs=1e-9)
        assert 0.0 <= got <= 1 - min_tpr + 1e-12


def test_mean_column_auc_leaves_out_one_class_columns():
    Y = (RNG.random((60, 4)) < 0.4).astype(int)
    P = Y * 0.3 + RNG.random((60, 4))
    assert cm.mean_column_auc(Y, P) == pytest.approx(skm.roc_auc_score(Y, P, average="macro"), abs=1e-12)
    Y[:, 2] = 0
    want = np.mean([skm.roc_auc_score(Y[:, k], P[:, k]) for k in (0, 1, 3)])
    assert cm.mean_column_auc(Y, P) == pytest.approx(want, abs=1e-12)
    assert math.isnan(cm.mean_column_auc(np.zeros((5, 3)), RNG.random((5, 3))))


# ---- probabilistic F1 ----

def test_probabilistic_f1_hand_example():
    y, p = np.array([1, 0, 1, 0]), np.array([0.9, 0.2, 0.6, 0.5])
    # ctp = 1.5, cfp = 0.7: P = 15/22, R = 3/4 -> F1 = 5/7, F2 = 25/34
    assert cm.probabilistic_f1(y, p) == pytest.approx(5 / 7, abs=1e-12)
    assert cm.probabilistic_f1(y, p, beta=2.0) == pytest.approx(25 / 34, abs=1e-12)
    assert cm.probabilistic_f1(y, p + [0.5, 0, 0, -0.7]) == pytest.approx(cm.probabilistic_f1(y, [1, 0.2, 0.6, 0]))
    assert cm.probabilistic_f1(y, np.zeros(4)) == 0.0
    assert math.isnan(cm.probabilistic_f1(np.zeros(4), p))


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_probabilistic_f1_equals_host_code_and_sklearn_on_hard_predictions(beta):
    y = (RNG.random(300) < 0.1).astype(int)
    y[0] = 1
    p = np.clip(y * 0.3 + RNG.normal(0.2, 0.3, size=300), -0.2, 1.2)  # some outside [0, 1]: clipped
    assert cm.probabilistic_f1(y, p, beta) == pytest.approx(rsna_pfbeta(y, p, beta), abs=1e-12)
    hard = (p > 0.4).astype(float)
    assert cm.probabilistic_f1(y, hard, beta) == pytest.approx(skm.fbeta_score(y, hard, beta=beta), abs=1e-12)


# ---- multi-label log loss, KL ----

def test_mean_column_log_loss():
    Y = np.array([[1, 0], [0, 0], [1, 0]])
    P = np.array([[0.8, 0.1], [0.3, 0.0], [0.6, 0.2]])
    col0 = -(math.log(0.8) + math.log(0.7) + math.log(0.6)) / 3
    col1 = -(math.log(0.9) + math.log(1 - 1e-15) + math.log(0.8)) / 3  # a one-class column is still scored
    assert cm.mean_column_log_loss(Y, P) == pytest.approx((col0 + col1) / 2, abs=1e-12)
    Y, P = (RNG.random((50, 3)) < 0.3).astype(int), RNG.random((50, 3))
    want = np.mean([skm.log_loss(Y[:, k], P[:, k]) for k in range(3)])
    assert cm.mean_column_log_loss(Y, P) == pytest.approx(want, abs=1e-12)


def test_kl_divergence_matches_scipy_and_the_hms_code():
    votes = RNG.integers(0, 4, size=(30, 6)).astype(float)
    votes[:, 0] += 1  # no row of zeros; many zero entries
    Y = votes / votes.sum(axis=1, keepdims=True)
    P = RNG.dirichlet(np.ones(6), size=30)
    want = special.rel_entr(Y, P).sum(axis=1).mean()
    assert cm.kl_divergence(Y, P) == pytest.approx(want, abs=1e-12)
    assert cm.kl_divergence(votes, P) == pytest.approx(want, abs=1e-12)  # vote counts normalised per row
    P[0] = [1.0, 0, 0, 0, 0, 0]  # zeros: clipped, so finite where scipy gives inf
    assert cm.kl_divergence(Y, P) == pytest.approx(hms_kl(Y, P), abs=1e-12)
    # by hand: Y = (1/2, 1/2, 0), P = (1/4, 1/2, 1/4) -> 1/2 log 2
    assert cm.kl_divergence(np.array([[1, 1, 0]]), np.array([[0.25, 0.5, 0.25]])) == pytest.approx(0.5 * math.log(2))
    with pytest.raises(ValueError, match="summing to 0"):
        cm.kl_divergence(np.zeros((1, 3)), P[:1, :3])


# ---- regression ----

def test_regression_hand_example():
    y, v = np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 5.0])
    assert cm.rmse(y, v) == pytest.approx(math.sqrt(4 / 3))
    assert cm.mae(y, v) == pytest.approx(2 / 3)
    assert cm.r2(y, v) == pytest.approx(1 - 4 / 2)
    assert math.isnan(cm.r2(y[:1], v[:1]))



def test_laplace_log_likelihood_hand_examples_clip_sigma_at_70_and_the_error_at_1000():
    """OSIC's metric: -sqrt(2) min(|y - v|, 1000) / max(sigma, 70) - ln(sqrt(2) max(sigma, 70)), averaged."""
    r2 = math.sqrt(2)
    y = np.array([2000.0, 2000.0, 2000.0, 2000.0])
    out = np.array([[2000.0, 100.0],  # exact: -ln(100 sqrt 2)
                    [2100.0, 100.0],  # off by 100: -sqrt2 - ln(100 sqrt 2)
                    [2000.0, 10.0],  # sigma 10 is scored as 70
                    [5000.0, 200.0]])  # off by 3000, scored as 1000
    rows = [-math.log(100 * r2), -r2 - math.log(100 * r2), -math.log(70 * r2), -r2 * 1000 / 200 - math.log(200 * r2)]
    assert cm.laplace_log_likelihood(y, out) == pytest.approx(np.mean(rows))
    assert cm.laplace_log_likelihood(y[:1], out[:1]) == pytest.approx(-4.9517, abs=1e-4)  # the -4.95 ceiling at 100
    with pytest.raises(ValueError, match="value and sigma"):
        cm.laplace_log_likelihood(y, out[:, :1])


def test_laplace_log_likelihood_is_registered_for_a_value_with_its_uncertainty():
    from comp.tasks import Task

    scale = Task("regression", ["FVC"], "regression", loss_name="laplace")
    y, out = np.array([2000.0, 2500.0]), np.array([[2000.0, 100.0], [2400.0, 150.0]])
    assert score("laplace_log_likelihood", y, out, task=scale) == pytest.approx(cm.laplace_log_likelihood(y, out))
    assert higher_is_better("laplace_log_likelihood")
    assert "laplace_log_likelihood" in score_all(y, out, task=scale)
    assert score("mae", y, out, task=scale) == pytest.approx(50.0)  # the value column alone
    load_config(None, ["task=regression", "train.loss=laplace", "metric=laplace_log_likelihood"])
    with pytest.raises(UserError, match="'laplace_log_likelihood' does not score task=regression"):
        load_config(None, ["task=regression", "metric=laplace_log_likelihood"])  # no sigma without a scale


# ---- input checks: the kit's bugs raise ValueError ----

@pytest.mark.parametrize("fn, a, b", [
    (cm.log_loss, np.array([0, 1]), np.full((3, 2), 0.5)),
    (cm.partial_auc, np.array([0, 1]), np.zeros(3)),
    (cm.binary_auc, np.array([0, 1]), np.zeros(3)),
    (cm.probabilistic_f1, np.array([0, 1]), np.zeros(3)),
    (cm.mean_column_auc, np.zeros((2, 2)), np.zeros((3, 2))),
    (cm.mean_column_auc, np.zeros((2, 2)), np.zeros((2, 3))),
    (cm.mean_column_log_loss, np.zeros((2, 2)), np.zeros((3, 2))),
    (cm.kl_divergence, np.ones((2, 2)), np.ones((3, 2))),
    (cm.rmse, np.zeros(2), np.zeros(3)),
    (cm.mae, np.zeros(2), np.zeros(3)),
    (cm.r2, np.zeros(2), np.zeros(3)),
    (cm.binary_auc, np.array([0, 1]), np.zeros((2, 1))),  # wrong ndim
    (cm.binary_auc, np.array([0, 2]), np.zeros(2)),  # not 0/1
    (cm.rmse, np.zeros(2), np.array([0.0, np.nan])),  # not finite
    (cm.mae, np.zeros(0), np.zeros(0)),  # empty
])
def test_bad_inputs_raise_value_error(fn, a, b):
    with pytest.raises(ValueError):
        fn(a, b)
