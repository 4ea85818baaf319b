import math

import numpy as np
import pytest
import torch

from ltpipe.data.imbalance import class_order, class_ranks, largest_feasible_n_max, long_tailed_counts, \
    per_class_counts, stream_generator
from ltpipe.errors import ConfigError


# Train-set sizes published with the LDAM CIFAR-LT subsets (Cao et al., NeurIPS 2019).
@pytest.mark.parametrize("num_classes, n_max, factor, total", [
    (10, 5000, 100, 12406), (10, 5000, 50, 13996), (10, 5000, 10, 20431),
    (100, 500, 100, 10847), (100, 500, 50, 12608), (100, 500, 10, 19573),
])
def test_exp_matches_ldam_totals(num_classes, n_max, factor, total):
    counts = long_tailed_counts(num_classes, n_max, "exp", factor)
    assert sum(counts) == total
    assert counts[0] == n_max and counts[-1] == int(n_max / factor)


@pytest.mark.parametrize("num_classes, n_max, factor", [(10, 5000, 100), (7, 333, 3.5), (100, 500, 20), (2, 9, 2)])
def test_exp_formula(num_classes, n_max, factor):
    expected = [math.floor(n_max * factor ** (-i / (num_classes - 1))) for i in range(num_classes)]
    assert long_tailed_counts(num_classes, n_max, "exp", factor) == expected


@pytest.mark.parametrize("num_classes", [10, 7, 2])
def test_step_and_none(num_classes):
    half = num_classes // 2
    assert long_tailed_counts(num_classes, 1000, "step", 10) == [1000] * half + [100] * (num_classes - half)
    assert long_tailed_counts(num_classes, 1000, "none", 10) == [1000] * num_classes
    assert long_tailed_counts(1, 50, "exp", 10) == [50]


def test_bad_inputs_name_choices():
    with pytest.raises(ConfigError, match="exp, step, none"):
        long_tailed_counts(10, 100, "linear", 10)
    with pytest.raises(ConfigError, match=r"factor.*\[1.0, inf\]"):
        long_tailed_counts(10, 100, "exp", 0.5)
    with pytest.raises(ConfigError, match="n_max"):
        long_tailed_counts(10, 0, "exp", 10)
    with pytest.raises(ConfigError, match="'cat'.*0 training images"):
        long_tailed_counts(3, 5, "exp", 10, names=["dog", "bird", "cat"])
    with pytest.raises(ConfigError, match="index, shuffle"):
        class_order(3, "random", 0)


def test_class_order_shuffle_is_seeded_permutation():
    assert class_order(5, "index", 0) == [0, 1, 2, 3, 4]
    a, b = class_order(50, "shuffle", 1), class_order(50, "shuffle", 2)
    assert sorted(a) == list(range(50)) and a == class_order(50, "shuffle", 1) and a != b


def test_class_ranks_are_per_class_permutations():
    labels = np.array([2, 0, 1, 2, 2, 0, 1, 2, 0, 0, 2])
    ranks = class_ranks(labels, 3, stream_generator(0, "train"))
    for c in range(3):
        assert sorted(ranks[labels == c]) == list(range((labels == c).sum()))
    assert np.array_equal(ranks, class_ranks(labels, 3, stream_generator(0, "train")))
    many = np.repeat(np.arange(4), 50)
    assert not np.array_equal(class_ranks(many, 4, stream_generator(0, "train")),
                              class_ranks(many, 4, stream_generator(1, "train")))


def test_streams_are_independent():
    draws = {s: torch.rand(4, generator=stream_generator(3, s)) for s in ("test", "val", "train")}
    assert not torch.equal(draws["test"], draws["train"]) and not torch.equal(draws["val"], draws["train"])


def brute_force_n_max(available_by_rank, factor):
    c = len(available_by_rank)
    feasible = [m for m in range(1, max(available_by_rank) + 1)
                if all(int(m * factor ** (-i / (c - 1))) <= a for i, a in enumerate(available_by_rank))]
    return max(feasible, default=1)


@pytest.mark.parametrize("available", [[100, 50, 80], [30, 200, 200, 5], [7, 7, 7]])
def test_default_n_max_is_largest_feasible(available):
    expected = brute_force_n_max(available, 4)
    assert largest_feasible_n_max(available, "exp", 4) == expected
    counts = per_class_counts(available, ["a", "b", "c", "d"][: len(available)], profile="exp", factor=4, n_max=None,
                              order=list(range(len(available))))
    assert counts[0] == expected and all(n <= a for n, a in zip(counts, available))


def test_per_class_counts_follow_order_and_check_supply():
    counts = per_class_counts([500, 500, 500], ["a", "b", "c"], profile="exp", factor=100, n_max=500, order=[2, 0, 1])
    assert counts == [50, 5, 500]
    assert per_class_counts([9, 4, 1], ["a", "b", "c"], profile="none", factor=1, n_max=None, order=[0, 1, 2]) == [9, 4, 1]
    with pytest.raises(ConfigError, match="class 'b' needs 300.*only 200.*try this"):
        per_class_counts([500, 200, 500], ["a", "b", "c"], profile="step", factor=2, n_max=300, order=[1, 0, 2],
                         hint="; try this")
