"""Image-level metrics against scikit-learn and brute force, on hand-made scores with ties."""

import numpy as np
import pytest
from sklearn.metrics import (balanced_accuracy_score, f1_score, precision_score, recall_score,
                             roc_auc_score)

from cbigan.scoring.metrics import MetricError, at_threshold, auroc, f1_max, image_metrics, max_balanced_accuracy


def brute_force_mba(labels, scores):
    """max over every threshold (each distinct score and +inf) of (TPR + TNR) / 2, predicting >= t."""
    labels, scores = np.asarray(labels), np.asarray(scores, float)
    best = -1.0
    for t in np.concatenate([np.unique(scores), [np.inf]]):
        pred = scores >= t
        tpr = np.mean(pred[labels == 1])
        tnr = np.mean(~pred[labels == 0])
        best = max(best, (tpr + tnr) / 2)
    return best


def brute_force_f1(labels, scores):
    labels, scores = np.asarray(labels), np.asarray(scores, float)
    return max(f1_score(labels, scores >= t, zero_division=0.0) for t in np.unique(scores))


def balanced_at(labels, scores, t):
    pred = np.asarray(scores) >= t
    labels = np.asarray(labels)
    return (np.mean(pred[labels == 1]) + np.mean(~pred[labels == 0])) / 2


CASES = {
    "hand": ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]),
    "all_tied": ([0, 1, 0, 1], [1.0, 1.0, 1.0, 1.0]),
    "ties_across_classes": ([0, 0, 0, 1, 1, 1, 0, 1], [1, 2, 2, 2, 3, 3, 3, 5]),
    "perfect": ([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.9, 1.0]),
    "inverted": ([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]),
    "one_defect": ([0, 0, 0, 0, 1], [5.0, 1.0, 2.0, 3.0, 4.0]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_against_sklearn_and_brute_force(name):
    labels, scores = CASES[name]
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    bal, thr = max_balanced_accuracy(labels, scores)
    assert bal == pytest.approx(brute_force_mba(labels, scores))
    assert balanced_at(labels, scores, thr) == pytest.approx(bal)  # the threshold reaches it
    f1, f1_thr = f1_max(labels, scores)
    assert f1 == pytest.approx(brute_force_f1(labels, scores))
    assert f1_score(labels, np.asarray(scores) >= f1_thr) == pytest.approx(f1)


def test_hand_computed_values():
    labels, scores = CASES["hand"]
    assert auroc(labels, scores) == pytest.approx(0.75)
    assert max_balanced_accuracy(labels, scores)[0] == pytest.approx(0.75)
    assert auroc(*CASES["all_tied"]) == pytest.approx(0.5)
    assert max_balanced_accuracy(*CASES["all_tied"])[0] == pytest.approx(0.5)
    assert auroc(*CASES["perfect"]) == 1.0 and max_balanced_accuracy(*CASES["perfect"])[0] == 1.0
    assert auroc(*CASES["inverted"]) == 0.0
    assert max_balanced_accuracy(*CASES["inverted"])[0] == pytest.approx(0.5)  # predict all one class


def test_random_scores_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = rng.integers(5, 60)
        labels = rng.integers(0, 2, n)
        labels[:2] = [0, 1]
        scores = np.round(rng.normal(size=n) + labels * rng.uniform(0, 2), 1)  # rounding makes ties
        assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
        assert max_balanced_accuracy(labels, scores)[0] == pytest.approx(brute_force_mba(labels, scores))
        assert f1_max(labels, scores)[0] == pytest.approx(brute_force_f1(labels, scores))


@pytest.mark.parametrize("t", [0.0, 0.35, 0.4, 2.0])
def test_at_threshold_matches_sklearn(t):
    labels, scores = np.array([0, 0, 1, 1, 0, 1]), np.array([0.1, 0.4, 0.35, 0.8, 0.35, 0.9])
    pred = scores > t
    m = at_threshold(labels, scores, t)
    assert m["precision"] == pytest.approx(precision_score(labels, pred, zero_division=0.0))
    assert m["recall"] == pytest.approx(recall_score(labels, pred))
    assert m["f1"] == pytest.approx(f1_score(labels, pred, zero_division=0.0))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
@pytest.mark.parametrize("fn", [auroc, max_balanced_accuracy, f1_max, image_metrics,
                                lambda l, s: at_threshold(l, s, 0.5)])
def test_one_class_is_a_clear_error(labels, fn):
    with pytest.raises(MetricError, match="need both good"):
        fn(labels, [0.1, 0.5, 0.9])


def test_bad_inputs():
    with pytest.raises(MetricError, match="labels but"):
        auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(MetricError, match="NaN"):
        auroc([0, 1], [0.1, float("nan")])
