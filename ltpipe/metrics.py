"""Evaluation metrics for long-tailed classification: overall, many/medium/few-shot, worst-class and calibration.

Shot groups follow Liu et al., "Large-Scale Long-Tailed Recognition in an Open World" (CVPR 2019) and Kang et al.,
"Decoupling Representation and Classifier for Long-Tailed Recognition" (ICLR 2020): a class is "many" with more than
100 training images, "few" with fewer than 20, else "medium". A group's accuracy is the MEAN OF THE PER-CLASS
ACCURACIES (recalls) of the group's classes that appear in the test set, as in the Decoupling code; on a balanced test
set it equals the pooled accuracy of the group's samples, on an unbalanced one it does not weight big classes more.
Undefined values (a group with no test class, precision of a never-predicted class) are None / NaN, never 0.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import precision_recall_fscore_support

from ltpipe.checks import check_train_counts
from ltpipe.errors import ConfigError
from ltpipe.priors import posthoc_logit_adjust

SHOTS = ("many", "medium", "few")
_DECIMALS = 6


def shot_groups(train_counts: Sequence[int], many_threshold: int = 100, few_threshold: int = 20) -> np.ndarray:
    """Shot group of each class: "many" if n > many_threshold, "few" if n < few_threshold, else "medium"."""
    if not 0 <= few_threshold <= many_threshold:
        raise ConfigError(f"shot thresholds need 0 <= few_threshold <= many_threshold, "
                          f"got few_threshold={few_threshold}, many_threshold={many_threshold}")
    counts = check_train_counts(train_counts)
    return np.where(counts > many_threshold, "many", np.where(counts < few_threshold, "few", "medium"))


def compute_metrics(logits: np.ndarray, labels: np.ndarray, train_counts: Sequence[int], *,
                    many_threshold: int = 100, few_threshold: int = 20, logit_adjust_tau: float = 1.0,
                    ece_bins: int = 15, probabilistic: bool = True) -> Dict[str, Any]:
    """All scalar test metrics as a JSON-able dict, floats rounded to 6 decimals so the file is byte-reproducible.

    - accuracy: pooled top-1; top5: true class among the 5 highest logits (None if C < 5).
    - many_shot / medium_shot / few_shot: mean per-class accuracy of the group's test classes (None if none).
    - balanced_accuracy, harmonic_mean_recall, geometric_mean_recall, min_recall over the test classes: Du et al.,
      "No One Left Behind: Improving the Worst Categories in Long-Tailed Learning" (CVPR 2023); HM = K / sum_k 1/r_k,
      GM = (prod_k r_k)^(1/K), both 0 as soon as one class has zero recall.
    - nll: mean_i -log softmax(z_i)_{y_i}, computed in float64 without clipping; None (with ece) when the scores
      are not logits of a probability model (`probabilistic=False`, e.g. NCM's cosine similarities).
    - ece: Guo et al., "On Calibration of Modern Neural Networks" (ICML 2017); sum_b |B_b|/N |acc(B_b) - conf(B_b)|
      over `ece_bins` equal-width bins (lo, hi] of the max softmax probability.
    - logit_adjusted_accuracy: top-1 of z_y - tau * log pi_y (Menon et al., ICLR 2021), pi from train_counts.
    - num_test, num_many / num_medium / num_few: test samples, and classes per group among ALL training classes.
    Ties between logits go to the lowest class index, for top-1 and top-5 alike.
    """
    logits, labels = _check_inputs(logits, labels, train_counts)
    if not isinstance(ece_bins, (int, np.integer)) or ece_bins < 1:
        raise ConfigError(f"ece_bins must be an integer >= 1, got {ece_bins!r}")
    if not np.isfinite(logit_adjust_tau):
        raise ConfigError(f"logit_adjust_tau must be a finite float, got {logit_adjust_tau!r}")
    groups = shot_groups(train_counts, many_threshold, few_threshold)
    _, recall, support = _per_class_scores(logits, labels)
    tested = support > 0
    rank = _true_class_rank(logits, labels)
    log_probs = torch.log_softmax(torch.from_numpy(logits), dim=1).numpy()
    adjusted = posthoc_logit_adjust(torch.from_numpy(logits), train_counts, float(logit_adjust_tau)).numpy()

    out: Dict[str, Optional[float]] = {"accuracy": float(np.mean(rank == 0))}
    for shot in SHOTS:
        members = tested & (groups == shot)
        out[f"{shot}_shot"] = float(recall[members].mean()) if members.any() else None
    out.update(_recall_summaries(recall[tested]))
    out["nll"] = float(-log_probs[np.arange(len(labels)), labels].mean()) if probabilistic else None
    out["ece"] = expected_calibration_error(np.exp(log_probs), labels, ece_bins) if probabilistic else None
    out["top5"] = float(np.mean(rank < 5)) if logits.shape[1] >= 5 else None
    out["logit_adjusted_accuracy"] = float(np.mean(_argmax(adjusted) == labels))
    metrics: Dict[str, Any] = {k: (None if v is None else round(v, _DECIMALS)) for k, v in out.items()}
    metrics["num_test"] = len(labels)
    metrics.update({f"num_{shot}": int(np.sum(groups == shot)) for shot in SHOTS})
    return metrics


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Guo et al. (ICML 2017): sum_b |B_b|/N |acc(B_b) - conf(B_b)|, equal-width bins (lo, hi] of the max prob."""
    confidence = probs.max(axis=1)
    correct = (_argmax(probs) == labels).astype(np.float64)
    # ceil(c*B)-1 puts c in bin (b/B, (b+1)/B]; the clip sends c == 0 to the first bin.
    bin_of = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    # |B_b| * |acc_b - conf_b| is |sum over the bin of (correct - confidence)|, so no per-bin means are needed.
    gap = np.bincount(bin_of, weights=correct - confidence, minlength=bins)
    return float(np.abs(gap).sum() / len(labels))


def per_class_table(logits: np.ndarray, labels: np.ndarray, train_counts: Sequence[int], class_names: Sequence[str],
                    *, many_threshold: int = 100, few_threshold: int = 20) -> pd.DataFrame:
    """One row per class in class-index order: class, train_count, shot, test_count, accuracy (= recall), precision,
    recall. Recall of a class absent from the test set and precision of a never-predicted class are NaN."""
    logits, labels = _check_inputs(logits, labels, train_counts)
    names = _check_names(class_names, logits.shape[1])
    precision, recall, support = _per_class_scores(logits, labels)
    return pd.DataFrame({
        "class": names,
        "train_count": check_train_counts(train_counts),
        "shot": shot_groups(train_counts, many_threshold, few_threshold),
        "test_count": support.astype(np.int64),
        "accuracy": recall,
        "precision": precision,
        "recall": recall,
    })


def confusion_records(logits: np.ndarray, labels: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """One row per test sample in test order, columns actual / predicted (class names), for DVC's confusion plot."""
    logits, labels = _check_logits_labels(logits, labels)
    names = np.asarray(_check_names(class_names, logits.shape[1]), dtype=object)
    return pd.DataFrame({"actual": names[labels], "predicted": names[_argmax(logits)]})


def _argmax(scores: np.ndarray) -> np.ndarray:
    return np.argmax(scores, axis=1)


def _true_class_rank(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """0-based rank of the true class, ties broken toward the lower index so rank 0 matches np.argmax."""
    true = logits[np.arange(len(labels)), labels][:, None]
    lower_index = np.arange(logits.shape[1])[None, :] < labels[:, None]
    return (logits > true).sum(axis=1) + ((logits == true) & lower_index).sum(axis=1)


def _per_class_scores(logits: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall (NaN where undefined) and test support for every class index."""
    precision, recall, _, support = precision_recall_fscore_support(
        labels, _argmax(logits), labels=np.arange(logits.shape[1]), average=None, zero_division=np.nan)
    return precision.astype(np.float64), recall.astype(np.float64), support


def _recall_summaries(recall: np.ndarray) -> Dict[str, float]:
    """Mean, harmonic, geometric and min of the per-class recalls of the test classes (Du et al., CVPR 2023)."""
    if np.any(recall == 0):
        harmonic = geometric = 0.0
    else:
        harmonic = float(len(recall) / np.sum(1.0 / recall))
        geometric = float(np.exp(np.mean(np.log(recall))))
    return {"balanced_accuracy": float(recall.mean()), "harmonic_mean_recall": harmonic,
            "geometric_mean_recall": geometric, "min_recall": float(recall.min())}


def _check_logits_labels(logits: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ConfigError(f"logits must be a non-empty (N, C) array, got shape {logits.shape}")
    if labels.ndim != 1 or len(labels) != len(logits):
        raise ConfigError(f"labels must be a 1-D array with one label per logits row ({len(logits)}), "
                          f"got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ConfigError(f"labels must be integers in [0, {logits.shape[1] - 1}], got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ConfigError(f"labels must lie in [0, {logits.shape[1] - 1}] for {logits.shape[1]} classes, "
                          f"got range [{labels.min()}, {labels.max()}]")
    if not np.all(np.isfinite(logits)):
        raise ConfigError("logits contain NaN or inf; valid logits are finite floats")
    return logits, labels.astype(np.int64)


def _check_inputs(logits: np.ndarray, labels: np.ndarray,
                  train_counts: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    logits, labels = _check_logits_labels(logits, labels)
    if len(check_train_counts(train_counts)) != logits.shape[1]:
        raise ConfigError(f"train_counts has {len(train_counts)} classes but logits have {logits.shape[1]}; "
                          f"they must match")
    return logits, labels


def _check_names(class_names: Sequence[str], num_classes: int) -> list:
    names = list(class_names)
    if len(names) != num_classes:
        raise ConfigError(f"class_names has {len(names)} entries but logits have {num_classes} classes; "
                          f"they must match")
    return names
