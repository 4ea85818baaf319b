"""Multi-label evaluation: mAP overall and per head / medium / tail group, a per-class AP table, and micro / macro F1
at thresholds chosen on the validation split; and the validation metrics stages 1 and 2 monitor or select by
(`VALIDATION_METRICS`), which work for one label per image too, given its one-hot targets.

Groups follow Wu et al. (ECCV 2020): head >= 100 training images, tail < 20, medium in between (thresholds are
arguments). AP is scikit-learn's `average_precision_score` (sum_k (R_k - R_{k-1}) P_k, no interpolation), per class.
A class with no positive test image has no AP: it is left out of every mean and reported by name. Scores can be
logits or probabilities (AP only uses their order); thresholds apply to whatever kind they were chosen on.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import numpy as np
import pandas as pd

from ltpipe.checks import check_train_counts
from ltpipe.errors import ConfigError

GROUPS = ("head", "medium", "tail")
_DECIMALS = 6


def class_groups(train_counts: Sequence[int], *, head_threshold: int = 100, tail_threshold: int = 20) -> np.ndarray:
    """Group of each class: "head" if n >= head_threshold, "tail" if n < tail_threshold, else "medium"."""
    if not 0 <= tail_threshold <= head_threshold:
        raise ConfigError(f"group thresholds need 0 <= tail_threshold <= head_threshold, got "
                          f"tail_threshold={tail_threshold}, head_threshold={head_threshold}")
    counts = check_train_counts(train_counts)
    return np.where(counts >= head_threshold, "head", np.where(counts < tail_threshold, "tail", "medium"))


def average_precisions(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(C,) float64 AP per class; NaN for a class with no positive image."""
    # Imported here: every stage imports this module (through the stage-2 registry the params schema checks against),
    # and sklearn.metrics would add about a second to the start of each, for the stages that never compute an AP.
    from sklearn.metrics import average_precision_score

    scores, targets = _check_scores(scores, targets)
    ap = np.full(scores.shape[1], np.nan)
    rated = targets.any(axis=0)
    if rated.any():
        ap[rated] = average_precision_score(targets[:, rated], scores[:, rated], average=None)
    return ap


def map_metrics(scores: np.ndarray, targets: np.ndarray, train_counts: Sequence[int], classes: Sequence[str], *,
                head_threshold: int = 100, tail_threshold: int = 20) -> Dict[str, Any]:
    """JSON-able dict, floats rounded to 6 decimals: mAP, head_mAP, medium_mAP, tail_mAP (None for a group without a
    rated class), num_head / num_medium / num_tail (all training classes), num_test, and
    num_classes_without_positives with their names in classes_without_positives."""
    ap = average_precisions(scores, targets)
    groups = _groups_for(ap, train_counts, classes, head_threshold, tail_threshold)
    rated = ~np.isnan(ap)
    out: Dict[str, Any] = {"mAP": _mean(ap[rated])}
    out.update({f"{g}_mAP": _mean(ap[rated & (groups == g)]) for g in GROUPS})
    out.update({f"num_{g}": int(np.sum(groups == g)) for g in GROUPS})
    out["num_test"] = int(np.asarray(targets).shape[0])
    out["num_classes_without_positives"] = int(np.sum(~rated))
    out["classes_without_positives"] = [classes[j] for j in np.flatnonzero(~rated)]
    return out


def per_class_table(scores: np.ndarray, targets: np.ndarray, train_counts: Sequence[int], classes: Sequence[str], *,
                    thresholds: np.ndarray | None = None, head_threshold: int = 100,
                    tail_threshold: int = 20) -> pd.DataFrame:
    """One row per class in class-index order: class, train_count, group, test_positives, ap (NaN without positives)
    and, with `thresholds`, threshold, precision, recall, f1 and accuracy at it.

    accuracy is the recall (the fraction of the class's test images predicted to hold it), as the single-label table's
    per-class accuracy is; precision is NaN for a class never predicted, recall for one without positives."""
    ap = average_precisions(scores, targets)
    scores, targets = _check_scores(scores, targets)
    table = pd.DataFrame({
        "class": list(classes),
        "train_count": check_train_counts(train_counts),
        "group": _groups_for(ap, train_counts, classes, head_threshold, tail_threshold),
        "test_positives": targets.sum(axis=0, dtype=np.int64),
        "ap": ap,
    })
    if thresholds is not None:
        thresholds = _check_thresholds(thresholds, scores.shape[1])
        tp, fp, fn = (v.astype(np.float64) for v in _confusion(scores, targets, thresholds))
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan)
        table["threshold"] = thresholds
        table["precision"] = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan)
        table["recall"] = recall
        table["f1"] = np.where(tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan)
        table["accuracy"] = recall
    return table


def choose_thresholds(val_scores: np.ndarray, val_targets: np.ndarray, *, per_class: bool = True) -> np.ndarray:
    """(C,) thresholds (predict score >= t) that maximise F1 on the validation split.

    per_class: each class's F1 separately (the maximiser of macro F1); otherwise one global threshold maximising
    micro F1 over all (image, class) pairs, repeated C times. The candidates are the observed scores; ties in F1 go to
    the highest threshold (fewest predictions). A class with no validation positive gets +inf (never predicted).
    """
    scores, targets = _check_scores(val_scores, val_targets)
    if per_class:
        return _best_thresholds(scores, targets)
    return np.repeat(_best_thresholds(scores.reshape(-1, 1), targets.reshape(-1, 1)), scores.shape[1])


def f1_scores(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> Dict[str, Any]:
    """micro_f1 = 2 TP / (2 TP + FP + FN) summed over all classes (None if there is nothing to count); macro_f1 =
    mean of the per-class F1 over the classes with a positive image (None if there is none). Rounded to 6 decimals."""
    scores, targets = _check_scores(scores, targets)
    tp, fp, fn = _confusion(scores, targets, thresholds)
    denominator = 2 * tp.sum() + fp.sum() + fn.sum()
    rated = targets.any(axis=0)
    per_class = 2 * tp[rated] / (2 * tp[rated] + fp[rated] + fn[rated])
    return {"micro_f1": round(float(2 * tp.sum() / denominator), _DECIMALS) if denominator else None,
            "macro_f1": _mean(per_class)}


# --------------------------------------------------------------------------------------------------- validation

def top1_accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """The fraction of images whose highest-scoring class is one of their labels (ties: the lowest class index): for
    one label per image the top-1 accuracy, for multi-label data precision@1."""
    scores, targets = _check_scores(scores, targets)
    return float(targets[np.arange(len(scores)), np.argmax(scores, axis=1)].mean())


def mean_class_top1(scores: np.ndarray, targets: np.ndarray) -> float:
    """The mean over classes of the fraction of a class's images whose highest-scoring class is one of their labels,
    over the classes with an image: for one label per image the balanced accuracy (mean per-class recall), the score
    classifier-balancing's tau_norm.py reports for each tau; it equals top-1 accuracy on a class-balanced split and,
    unlike it, does not let the head classes outvote the tail on an imbalanced one."""
    scores, targets = _check_scores(scores, targets)
    hits = targets[np.arange(len(scores)), np.argmax(scores, axis=1)]
    held = targets.sum(axis=0)
    present = held > 0
    return float(((targets & hits[:, None]).sum(axis=0)[present] / held[present]).mean()) if present.any() else 0.0


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP over the classes with a positive image (NaN if none has one); scores of one label per image should be
    probabilities (softmax), since a class's AP ranks the images by its column alone."""
    ap = average_precisions(scores, targets)
    return float(np.nanmean(ap)) if not np.isnan(ap).all() else float("nan")


def best_micro_f1(scores: np.ndarray, targets: np.ndarray) -> float:
    """micro F1 at the one threshold, shared by every class, that maximises it on these scores (0 without positives)."""
    return f1_scores(scores, targets, choose_thresholds(scores, targets, per_class=False))["micro_f1"] or 0.0


# What a stage can monitor or choose by on the validation split: name -> f(scores (N, C), multi-hot targets (N, C)).
VALIDATION_METRICS = {"acc": top1_accuracy, "balanced_acc": mean_class_top1, "map": mean_average_precision,
                      "micro_f1": best_micro_f1}


# --------------------------------------------------------------------------------------------------- helpers

def _best_thresholds(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per column: the score s whose cut "predict >= s" maximises F1, vectorised over columns.

    Sorted by decreasing score, cutting after row r predicts r + 1 images, TP_r = cumsum(y)_r and
    F1_r = 2 TP_r / (r + 1 + P); only the last row of a run of tied scores is a possible cut.
    """
    n = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    ranked = np.take_along_axis(scores, order, axis=0)
    tp = np.cumsum(np.take_along_axis(targets, order, axis=0), axis=0)
    positives = targets.sum(axis=0)
    f1 = 2 * tp / (np.arange(1, n + 1)[:, None] + positives[None, :])
    cut = np.ones_like(ranked, dtype=bool)
    cut[:-1] = ranked[:-1] != ranked[1:]
    best = np.argmax(np.where(cut, f1, -1.0), axis=0)
    return np.where(positives > 0, ranked[best, np.arange(scores.shape[1])], np.inf)


def _confusion(scores: np.ndarray, targets: np.ndarray, thresholds: np.ndarray) -> Tuple[np.ndarray, ...]:
    predicted = scores >= _check_thresholds(thresholds, scores.shape[1])[None, :]
    tp = (predicted & targets).sum(axis=0)
    fp = (predicted & ~targets).sum(axis=0)
    fn = (~predicted & targets).sum(axis=0)
    return tp, fp, fn


def _mean(values: np.ndarray) -> float | None:
    return round(float(np.mean(values)), _DECIMALS) if len(values) else None


def _groups_for(ap: np.ndarray, train_counts, classes, head_threshold: int, tail_threshold: int) -> np.ndarray:
    groups = class_groups(train_counts, head_threshold=head_threshold, tail_threshold=tail_threshold)
    if len(groups) != len(ap) or len(classes) != len(ap):
        raise ConfigError(f"train_counts ({len(groups)}) and classes ({len(classes)}) must have one entry per score "
                          f"column ({len(ap)})")
    return groups


def _check_scores(scores: np.ndarray, targets: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ConfigError(f"scores must be a non-empty (N, C) array, got shape {scores.shape}")
    if targets.shape != scores.shape:
        raise ConfigError(f"targets must be a multi-hot array of the scores' shape {scores.shape}, got "
                          f"{targets.shape}")
    if not np.isin(targets, (0, 1)).all():
        raise ConfigError("targets must be multi-hot: every entry 0 or 1")
    if not np.isfinite(scores).all():
        raise ConfigError("scores contain NaN or inf; valid scores are finite floats")
    return scores, targets.astype(bool)


def _check_thresholds(thresholds: np.ndarray, num_classes: int) -> np.ndarray:
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if thresholds.shape != (num_classes,) or np.isnan(thresholds).any():
        raise ConfigError(f"thresholds must be a ({num_classes},) array without NaN, got shape {thresholds.shape}")
    return thresholds
