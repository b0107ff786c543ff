"""Every metric against scikit-learn and against a direct implementation of its definition, on random
inputs (binary and multi-class, with and without absent classes)."""

import numpy as np
import pytest
from sklearn import metrics as skm

from comp.errors import UserError
from comp.metrics import METRICS, check_metric, classification_report, confusion, score_all


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
