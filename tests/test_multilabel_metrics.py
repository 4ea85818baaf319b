import numpy as np
import pytest
from sklearn.metrics import f1_score

from ltpipe.errors import ConfigError
from ltpipe.multilabel.metrics import (VALIDATION_METRICS, average_precisions, choose_thresholds, class_groups,
                                       f1_scores, map_metrics, per_class_table)
from ltpipe.tasks import TASKS
from ltpipe.tables import frequency_ranked

# 4 test images, 4 classes; class c2 has no positive test image.
SCORES = np.array([
    [0.9, 0.1, 0.3, 0.1],
    [0.8, 0.4, 0.2, 0.9],
    [0.7, 0.3, 0.1, 0.5],
    [0.6, 0.2, 0.4, 0.3],
])
TARGETS = np.array([
    [1, 0, 0, 1],
    [0, 1, 0, 0],
    [1, 1, 0, 0],
    [0, 1, 0, 0],
])
TRAIN_COUNTS = [150, 50, 5, 10]  # head, medium, tail, tail
CLASSES = ["c0", "c1", "c2", "c3"]
# AP by hand (precision at each positive's rank, averaged over positives):
# c0: positives at ranks 1 and 3 -> (1/1 + 2/3) / 2; c1: ranks 1, 2, 3 -> 1; c2: none; c3: rank 4 -> 1/4
AP = [(1 + 2 / 3) / 2, 1.0, np.nan, 0.25]


def test_average_precisions_by_hand():
    np.testing.assert_allclose(average_precisions(SCORES, TARGETS), AP)


def test_map_metrics_by_hand_with_a_class_without_positives():
    out = map_metrics(SCORES, TARGETS, TRAIN_COUNTS, CLASSES)
    assert out["mAP"] == round((AP[0] + AP[1] + AP[3]) / 3, 6)
    assert out["head_mAP"] == round(AP[0], 6) and out["medium_mAP"] == 1.0 and out["tail_mAP"] == 0.25
    assert (out["num_head"], out["num_medium"], out["num_tail"]) == (1, 1, 2)
    assert out["num_test"] == 4
    assert out["num_classes_without_positives"] == 1 and out["classes_without_positives"] == ["c2"]


def test_group_without_rated_class_is_none():
    out = map_metrics(SCORES, TARGETS, [150, 150, 5, 150], CLASSES)  # only c2 is tail, and it has no positive
    assert out["tail_mAP"] is None and out["medium_mAP"] is None


def test_class_groups_boundaries_and_custom_thresholds():
    counts = [100, 99, 20, 19, 0]
    assert class_groups(counts).tolist() == ["head", "medium", "medium", "tail", "tail"]
    assert class_groups(counts, head_threshold=20, tail_threshold=1).tolist() == \
        ["head", "head", "head", "medium", "tail"]
    with pytest.raises(ConfigError, match="tail_threshold <= head_threshold"):
        class_groups(counts, head_threshold=10, tail_threshold=20)


def test_ap_is_invariant_to_positive_per_class_scaling():
    # why tau-norm and LWS leave mAP unchanged
    scaled = SCORES * np.array([3.0, 0.5, 2.0, 7.0])
    np.testing.assert_allclose(average_precisions(scaled, TARGETS), AP)


def test_per_class_table_by_hand():
    thresholds = choose_thresholds(SCORES, TARGETS)
    table = frequency_ranked(per_class_table(SCORES, TARGETS, TRAIN_COUNTS, CLASSES, thresholds=thresholds))
    assert list(table.columns) == ["rank", "class", "train_count", "group", "test_positives", "ap", "threshold",
                                   "precision", "recall", "f1", "accuracy"]
    assert table["class"].tolist() == ["c0", "c1", "c3", "c2"] and table["rank"].tolist() == [0, 1, 2, 3]
    assert table["test_positives"].tolist() == [2, 3, 1, 0]
    np.testing.assert_allclose(table["ap"], [AP[0], AP[1], AP[3], np.nan])
    np.testing.assert_allclose(table["f1"], [0.8, 1.0, 0.4, np.nan])  # c2: never predicted, no positive
    # thresholds 0.7, 0.2, 0.1 (c2: inf): c0 predicts images 0-2 (2 of them positive), c1 images 1-3, c3 all four
    np.testing.assert_allclose(table["precision"], [2 / 3, 1.0, 0.25, np.nan])
    np.testing.assert_allclose(table["recall"], [1.0, 1.0, 1.0, np.nan])
    np.testing.assert_array_equal(table["accuracy"], table["recall"])
    assert "threshold" not in per_class_table(SCORES, TARGETS, TRAIN_COUNTS, CLASSES).columns


def test_per_class_thresholds_by_hand():
    # c0 sorted: .9(+) .8 .7(+) .6 -> F1 at cuts 2/3, 1/2, 4/5, 2/3 -> 0.7; c1: all three positives on top -> 0.2;
    # c2: no positive -> never predicted; c3 sorted: .9 .5 .3 .1(+) -> only the last cut has F1 > 0 -> 0.1
    np.testing.assert_allclose(choose_thresholds(SCORES, TARGETS), [0.7, 0.2, np.inf, 0.1])


def test_f1_by_hand_and_against_sklearn():
    thresholds = np.array([0.7, 0.2, np.inf, 0.1])
    out = f1_scores(SCORES, TARGETS, thresholds)
    # TP 2+3+0+1 = 6, FP 1+0+0+3 = 4, FN 0 -> micro 12/16; macro over rated classes (0.8 + 1 + 0.4) / 3
    assert out == {"micro_f1": 0.75, "macro_f1": round(2.2 / 3, 6)}
    predicted = SCORES >= thresholds
    assert out["micro_f1"] == round(f1_score(TARGETS, predicted, average="micro"), 6)
    rated = TARGETS.any(axis=0)
    assert out["macro_f1"] == round(f1_score(TARGETS[:, rated], predicted[:, rated], average="macro"), 6)


def brute_force_best(scores, targets):
    """The observed score whose cut "score >= t" has the best binary F1 (ties -> highest), tried one by one with
    sklearn; over raveled (image, class) pairs this is the best micro F1."""
    best, best_t = -1.0, None
    for t in sorted(set(scores), reverse=True):
        f1 = f1_score(targets, scores >= t, zero_division=0)
        if f1 > best + 1e-12:
            best, best_t = f1, t
    return best_t


@pytest.mark.parametrize("seed", range(3))
def test_thresholds_match_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random((40, 3)), 1)  # many ties
    targets = rng.random((40, 3)) < np.array([0.5, 0.2, 0.05])
    targets[0] = True
    per_class = choose_thresholds(scores, targets)
    for j in range(3):
        assert per_class[j] == brute_force_best(scores[:, j], targets[:, j])
    global_t = choose_thresholds(scores, targets, per_class=False)
    assert np.all(global_t == brute_force_best(scores.ravel(), targets.ravel()))


def test_input_errors():
    with pytest.raises(ConfigError, match="every entry 0 or 1"):
        average_precisions(SCORES, 2 * TARGETS)
    with pytest.raises(ConfigError, match="shape"):
        average_precisions(SCORES, TARGETS[:, :2])
    with pytest.raises(ConfigError, match="NaN or inf"):
        average_precisions(np.where(SCORES > 0.85, np.nan, SCORES), TARGETS)
    with pytest.raises(ConfigError, match=r"thresholds must be a \(4,\) array"):
        f1_scores(SCORES, TARGETS, np.zeros(3))
    with pytest.raises(ConfigError, match="one entry per score column"):
        map_metrics(SCORES, TARGETS, TRAIN_COUNTS[:3], CLASSES)


def test_validation_metrics_by_hand():
    # top-scoring class per image: c0 (+), c3 (-), c0 (+), c0 (-) -> 2 / 4
    assert VALIDATION_METRICS["acc"](SCORES, TARGETS) == 0.5
    assert VALIDATION_METRICS["map"](SCORES, TARGETS) == pytest.approx((AP[0] + AP[1] + AP[3]) / 3)
    # the best global threshold of the raveled scores, F1 of it
    t = choose_thresholds(SCORES, TARGETS, per_class=False)
    assert VALIDATION_METRICS["micro_f1"](SCORES, TARGETS) == f1_scores(SCORES, TARGETS, t)["micro_f1"]
    # one label per image: top-1 accuracy of its one-hot targets
    labels = np.array([0, 3, 0, 1])
    one_hot = np.eye(4, dtype=bool)[labels]
    assert VALIDATION_METRICS["acc"](SCORES, one_hot) == np.mean(SCORES.argmax(1) == labels)
    # balanced_acc: the mean over classes 0, 1, 3 (2 has no image) of their images' top-1 hit rates
    predicted = SCORES.argmax(1)
    recalls = [np.mean(predicted[labels == c] == c) for c in (0, 1, 3)]
    assert VALIDATION_METRICS["balanced_acc"](SCORES, one_hot) == pytest.approx(np.mean(recalls))
    # multi-label: per class, the fraction of the images holding it whose top-scoring class is one of their labels
    hits = TARGETS[np.arange(len(SCORES)), predicted].astype(bool)
    per_class = [hits[TARGETS[:, c].astype(bool)].mean() for c in range(4) if TARGETS[:, c].any()]
    assert VALIDATION_METRICS["balanced_acc"](SCORES, TARGETS) == pytest.approx(np.mean(per_class))


def test_every_task_logs_and_selects_by_known_validation_metrics():
    for name in TASKS.names():
        task = TASKS.get(name)
        assert {task.selection_metric, *task.val_metrics} <= VALIDATION_METRICS.keys(), name
        assert task.epoch_metric in task.val_metrics, name  # best_val needs it logged every epoch
