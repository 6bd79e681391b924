"""Image-level detection metrics: small pure functions over (labels, scores), via scikit-learn."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve


class MetricError(ValueError):
    """Raised when a metric is undefined for the given labels (e.g. only one class present)."""


def _check(labels, scores):
    labels = np.asarray(labels).astype(int).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise MetricError(f"{len(labels)} labels but {len(scores)} scores")
    if not np.all(np.isfinite(scores)):
        raise MetricError("scores contain NaN or infinity; the model diverged or an image is broken")
    classes = set(np.unique(labels).tolist())
    if classes != {0, 1}:
        raise MetricError(f"need both good (0) and defective (1) images, got only {sorted(classes)}")
    return labels, scores


def auroc(labels, scores) -> float:
    """Area under the ROC curve; higher scores mean more anomalous."""
    labels, scores = _check(labels, scores)
    return float(roc_auc_score(labels, scores))


def max_balanced_accuracy(labels, scores) -> tuple[float, float]:
    """max over thresholds of (TPR + TNR) / 2 and the threshold reaching it (predict ``score >= t``)."""
    labels, scores = _check(labels, scores)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    bal = (tpr + 1.0 - fpr) / 2.0
    i = int(np.argmax(bal))
    return float(bal[i]), float(thresholds[i])


def f1_max(labels, scores) -> tuple[float, float]:
    """max over thresholds of the F1 score of the defective class, and its threshold."""
    labels, scores = _check(labels, scores)
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    i = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(f1[i]), float(thresholds[i]) if len(thresholds) else float("nan")


def at_threshold(labels, scores, threshold: float) -> dict:
    """Precision, recall, F1, balanced accuracy and false-alarm rate (the share of good images flagged)
    of the decision ``score > threshold``."""
    labels, scores = _check(labels, scores)
    pred = scores > threshold
    tp = int(np.sum(pred & (labels == 1)))
    fp = int(np.sum(pred & (labels == 0)))
    fn = int(np.sum(~pred & (labels == 1)))
    tn = int(np.sum(~pred & (labels == 0)))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1,
            "balanced_accuracy": (recall + tn / (tn + fp)) / 2.0, "false_alarm_rate": fp / (fp + tn)}


def image_metrics(labels, scores) -> dict:
    """The paper's two metrics plus F1-max, as one dict."""
    bal, thr = max_balanced_accuracy(labels, scores)
    f1, f1_thr = f1_max(labels, scores)
    return {"auroc": auroc(labels, scores), "max_balanced_accuracy": bal, "mba_threshold": thr,
            "f1_max": f1, "f1_threshold": f1_thr}
