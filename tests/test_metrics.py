"""Metrics on hand-made predictions whose answers are worked out by hand here, plus bad-input checks."""
import json
import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, log_loss

from ltpipe.errors import ConfigError
from ltpipe.metrics import (
    compute_metrics,
    confusion_records,
    expected_calibration_error,
    per_class_table,
    shot_groups,
)

# 3 classes, 6 test samples. Predictions: class 0 -> 2/3 right, class 1 -> 1/2 right, class 2 -> never right.
LABELS = np.array([0, 0, 0, 1, 1, 2])
PREDS = np.array([0, 0, 1, 1, 0, 1])
NAMES = ["cat", "dog", "owl"]


def logits_for(preds, num_classes=3, high=2.0):
    """Logit `high` on the predicted class and 0 elsewhere, so softmax is known in closed form."""
    logits = np.zeros((len(preds), num_classes))
    logits[np.arange(len(preds)), preds] = high
    return logits


def approx(x):
    return pytest.approx(x, abs=1e-6)


def test_shot_groups_thresholds_are_medium():
    assert shot_groups([101, 100, 50, 20, 19, 0]).tolist() == ["many", "medium", "medium", "medium", "few", "few"]
    assert shot_groups([5, 6, 7], many_threshold=6, few_threshold=6).tolist() == ["few", "medium", "many"]


def test_overall_and_group_accuracy_all_groups():
    m = compute_metrics(logits_for(PREDS), LABELS, [150, 50, 5])
    assert m["accuracy"] == approx(3 / 6)
    assert m["many_shot"] == approx(2 / 3)
    assert m["medium_shot"] == approx(1 / 2)
    assert m["few_shot"] == 0.0
    assert (m["num_many"], m["num_medium"], m["num_few"], m["num_test"]) == (1, 1, 1, 6)


def test_empty_group_is_none_and_group_is_mean_of_class_accuracies():
    # 100 and 20 are both medium: the many group is empty.
    m = compute_metrics(logits_for(PREDS), LABELS, [100, 20, 5])
    assert m["many_shot"] is None
    # Mean of class accuracies 2/3 and 1/2, not the pooled 3/5 of the group's samples.
    assert m["medium_shot"] == approx((2 / 3 + 1 / 2) / 2)
    assert m["few_shot"] == 0.0
    assert (m["num_many"], m["num_medium"], m["num_few"]) == (0, 2, 1)


def test_class_absent_from_test_set_is_left_out_of_groups_and_recall_means():
    # Class 3 (the only many-shot class) has no test sample: its group is None, not 0.
    logits = logits_for(PREDS, num_classes=4)
    m = compute_metrics(logits, LABELS, [50, 50, 5, 500])
    assert m["many_shot"] is None and m["num_many"] == 1
    assert m["balanced_accuracy"] == approx((2 / 3 + 1 / 2 + 0) / 3)


def test_zero_recall_class_zeroes_geometric_and_harmonic_means():
    m = compute_metrics(logits_for(PREDS), LABELS, [150, 50, 5])
    assert m["min_recall"] == 0.0
    assert m["geometric_mean_recall"] == 0.0
    assert m["harmonic_mean_recall"] == 0.0
    assert m["balanced_accuracy"] == approx(balanced_accuracy_score(LABELS, PREDS))


def test_recall_means_without_zero_recall():
    preds = np.array([0, 0, 1, 1, 0, 2])  # recalls 2/3, 1/2, 1
    m = compute_metrics(logits_for(preds), LABELS, [150, 50, 5])
    recalls = [2 / 3, 1 / 2, 1.0]
    assert m["balanced_accuracy"] == approx(balanced_accuracy_score(LABELS, preds))
    assert m["harmonic_mean_recall"] == approx(3 / sum(1 / r for r in recalls))
    assert m["geometric_mean_recall"] == approx((recalls[0] * recalls[1] * recalls[2]) ** (1 / 3))
    assert m["min_recall"] == approx(1 / 2)


def test_nll_matches_hand_computation_and_sklearn():
    high = 2.0
    m = compute_metrics(logits_for(PREDS, high=high), LABELS, [150, 50, 5])
    p_pred = math.exp(high) / (math.exp(high) + 2)  # softmax of [high, 0, 0] at the predicted class
    p_other = 1 / (math.exp(high) + 2)
    right = PREDS == LABELS
    hand = -(right.sum() * math.log(p_pred) + (~right).sum() * math.log(p_other)) / len(LABELS)
    assert m["nll"] == approx(hand)
    logits = logits_for(PREDS, high=high)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert m["nll"] == approx(log_loss(LABELS, probs, labels=[0, 1, 2]))


def test_ece_hand_example():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 1])  # right, wrong, right, wrong
    # Bin (0.8, 0.9]: 2 samples, acc 1/2, conf 0.9. Bin (0.5, 0.6]: 2 samples, acc 1/2, conf 0.575.
    hand = 2 / 4 * abs(0.5 - 0.9) + 2 / 4 * abs(0.5 - 0.575)
    assert expected_calibration_error(probs, labels, bins=10) == approx(hand)
    # One bin: ECE is |accuracy - mean confidence|.
    assert expected_calibration_error(probs, labels, bins=1) == approx(abs(0.5 - (0.9 + 0.9 + 0.6 + 0.55) / 4))


def test_ece_in_compute_metrics_uses_softmax_confidence():
    high = 2.0
    m = compute_metrics(logits_for(PREDS, high=high), LABELS, [150, 50, 5], ece_bins=1)
    confidence = math.exp(high) / (math.exp(high) + 2)  # every row has the same max probability
    assert m["ece"] == approx(abs(3 / 6 - confidence))


def test_top5_rank_and_small_class_count():
    logits = np.tile(np.arange(7.0), (3, 1))  # class 6 is best, class 0 worst
    labels = np.array([6, 2, 1])  # ranks 0, 4, 5
    m = compute_metrics(logits, labels, [10] * 7)
    assert m["top5"] == approx(2 / 3)
    assert m["accuracy"] == approx(1 / 3)
    assert compute_metrics(logits_for(PREDS), LABELS, [150, 50, 5])["top5"] is None


def test_ties_go_to_lowest_index_for_top1():
    logits = np.zeros((2, 3))
    m = compute_metrics(logits, np.array([0, 1]), [5, 5, 5])
    assert m["accuracy"] == approx(1 / 2)
    assert confusion_records(logits, np.array([0, 1]), NAMES)["predicted"].tolist() == ["cat", "cat"]


def test_logit_adjustment_tau_zero_and_large_tau_flips_to_rare_class():
    logits = logits_for(PREDS)
    counts = [150, 50, 5]
    m = compute_metrics(logits, LABELS, counts, logit_adjust_tau=0.0)
    assert m["logit_adjusted_accuracy"] == m["accuracy"]

    counts = [1000, 10]
    logits = np.array([[1.0, 0.5], [6.0, 0.0]])
    labels = np.array([1, 0])
    prior = np.array(counts) / sum(counts)
    adjusted = logits - 1.0 * np.log(prior)  # row 0: 1.01 vs 5.12 flips to rare; row 1: 6.01 vs 4.62 stays
    assert adjusted[0].argmax() == 1 and adjusted[1].argmax() == 0
    m = compute_metrics(logits, labels, counts, logit_adjust_tau=1.0)
    assert m["accuracy"] == approx(1 / 2)
    assert m["logit_adjusted_accuracy"] == 1.0


def test_metrics_json_rounded_and_reproducible():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 6))
    labels = rng.integers(0, 6, size=40)
    counts = [300, 120, 60, 25, 10, 3]
    first = compute_metrics(logits, labels, counts)
    assert json.dumps(first, sort_keys=True) == json.dumps(compute_metrics(logits, labels, counts), sort_keys=True)
    for key, value in first.items():
        if isinstance(value, float):
            assert value == round(value, 6), key
    expected_keys = {"accuracy", "many_shot", "medium_shot", "few_shot", "balanced_accuracy", "harmonic_mean_recall",
                     "geometric_mean_recall", "min_recall", "nll", "ece", "top5", "logit_adjusted_accuracy",
                     "num_test", "num_many", "num_medium", "num_few"}
    assert set(first) == expected_keys


def test_per_class_table_values():
    table = per_class_table(logits_for(PREDS), LABELS, [150, 50, 5], NAMES)
    assert list(table.columns) == ["class", "train_count", "shot", "test_count", "accuracy", "precision", "recall"]
    assert table["class"].tolist() == NAMES
    assert table["train_count"].tolist() == [150, 50, 5]
    assert table["shot"].tolist() == ["many", "medium", "few"]
    assert table["test_count"].tolist() == [3, 2, 1]
    np.testing.assert_allclose(table["recall"], [2 / 3, 1 / 2, 0.0])
    np.testing.assert_allclose(table["accuracy"], table["recall"])
    # Class 0 predicted for samples 0, 1, 4 (2 right); class 1 for 2, 3, 5 (1 right); class 2 never predicted.
    np.testing.assert_allclose(table["precision"][:2], [2 / 3, 1 / 3])
    assert np.isnan(table["precision"][2])


def test_per_class_table_class_absent_from_test_has_nan_recall():
    table = per_class_table(logits_for(PREDS, num_classes=4), LABELS, [150, 50, 5, 7], NAMES + ["eel"])
    assert table["test_count"].tolist() == [3, 2, 1, 0]
    assert np.isnan(table["recall"][3]) and np.isnan(table["accuracy"][3])


def test_confusion_records():
    records = confusion_records(logits_for(PREDS), LABELS, NAMES)
    assert list(records.columns) == ["actual", "predicted"]
    assert records["actual"].tolist() == ["cat", "cat", "cat", "dog", "dog", "owl"]
    assert records["predicted"].tolist() == ["cat", "cat", "dog", "dog", "cat", "dog"]


@pytest.mark.parametrize("logits, labels, counts, match", [
    (logits_for(PREDS), LABELS[:5], [1, 2, 3], "one label per logits row"),
    (logits_for(PREDS), np.array([0, 0, 0, 1, 1, 3]), [1, 2, 3], r"\[0, 2\]"),
    (logits_for(PREDS), np.array([0, 0, -1, 1, 1, 2]), [1, 2, 3], r"\[0, 2\]"),
    (logits_for(PREDS), LABELS.astype(float), [1, 2, 3], "integers"),
    (logits_for(PREDS), LABELS, [1, 2], "must match"),
    (logits_for(PREDS), LABELS, [1, -2, 3], ">= 0"),
    (np.full((6, 3), np.nan), LABELS, [1, 2, 3], "finite"),
    (np.zeros(6), LABELS, [1, 2, 3], r"\(N, C\)"),
])
def test_bad_inputs_raise_config_error(logits, labels, counts, match):
    with pytest.raises(ConfigError, match=match):
        compute_metrics(logits, labels, counts)


def test_bad_thresholds_names_and_bins():
    with pytest.raises(ConfigError, match="few_threshold <= many_threshold"):
        shot_groups([1, 2], many_threshold=10, few_threshold=20)
    with pytest.raises(ConfigError, match="ece_bins"):
        compute_metrics(logits_for(PREDS), LABELS, [1, 2, 3], ece_bins=0)
    with pytest.raises(ConfigError, match="class_names has 2 entries"):
        per_class_table(logits_for(PREDS), LABELS, [1, 2, 3], NAMES[:2])
    with pytest.raises(ConfigError, match="one label per logits row"):
        confusion_records(logits_for(PREDS), LABELS[:4], NAMES)
