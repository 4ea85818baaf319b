import numpy as np
import pytest
from scipy.stats import pareto

from ltpipe.errors import ConfigError
from ltpipe.multilabel.data import class_counts
from ltpipe.multilabel.imbalance import long_tailed_subset, pareto_counts, visit_order


def rows(*groups):
    """Multi-hot matrix from (repeat, labels) pairs, e.g. rows((3, [0]), (2, [0, 1]))."""
    width = 1 + max(c for _, labels in groups for c in labels)
    out = []
    for repeat, labels in groups:
        row = np.zeros(width, dtype=bool)
        row[labels] = True
        out += [row] * repeat
    return np.array(out)


# --------------------------------------------------------------------------------------------------- the profile
@pytest.mark.parametrize("num_classes, n_max, n_min", [(20, 800, 1), (80, 1200, 1), (10, 400, 1), (7, 50, 3)])
def test_pareto_counts_match_the_db_code(num_classes, n_max, n_min):
    # create_longtail_dataset.pareto_dist, written out: rv.pdf(linspace(ppf(0), ppf(0.99))) * (max-min) / b + min
    b = 6
    x = np.linspace(pareto.ppf(0.0, b), pareto.ppf(0.99, b), num_classes)
    reference = (pareto(b).pdf(x) * (n_max - n_min) / b + n_min).astype(int)
    got = pareto_counts(num_classes, n_max=n_max, n_min=n_min)
    np.testing.assert_array_equal(got, reference)
    assert got[0] == n_max and np.all(np.diff(got) <= 0)


def test_voc_lt_profile_spans_800_to_4():
    counts = pareto_counts(20, n_max=800)
    assert counts[0] == 800 and counts[-1] == 4


# --------------------------------------------------------------------------------------------------- visit order
def test_visit_order_follows_co_occurrence_not_frequency():
    # class 0 is the most frequent but alone; class 1 comes with 2 and 3. Sums of P(j | i) over i:
    # j=0: 1; j=1: 1 + 2/3 + 1 = 2.67; j=2: 2/3 + 1 = 1.67; j=3: 1/3 + 1 = 1.33
    targets = rows((5, [0]), (2, [1, 2]), (1, [1, 3]), (1, [2]))
    np.testing.assert_array_equal(visit_order(targets), [1, 2, 3, 0])


def test_visit_order_ties_keep_class_order():
    np.testing.assert_array_equal(visit_order(rows((3, [2]), (1, [0]), (2, [1]))), [0, 1, 2])


# --------------------------------------------------------------------------------------------------- the builder
def test_without_co_occurrence_counts_hit_the_profile_exactly():
    targets = rows(*[(30, [c]) for c in range(5)])
    subset = long_tailed_subset(targets, list("abcde"), n_max=25, seed=3)
    wanted = pareto_counts(5, n_max=25)  # all columns tie, so classes are visited in index order
    np.testing.assert_array_equal(subset.targets, wanted)
    np.testing.assert_array_equal(subset.counts, wanted)
    np.testing.assert_array_equal(class_counts(targets[subset.indices]), wanted)
    assert len(subset.indices) == wanted.sum() and np.all(np.diff(subset.indices) > 0)


def test_co_occurrence_drift_of_earlier_classes():
    # Order [0, 1, 2], targets [4, 1, 1]. Visiting 0 takes 4 of its 6 images, k of them holding 1 (k in 1..3);
    # visiting 1 removes k - 1 of those, so class 0 ends at 4 - (k - 1), class 1 and 2 at their target.
    targets = rows((3, [0]), (3, [0, 1]), (2, [2]))
    assert pareto_counts(3, n_max=4).tolist() == [4, 1, 1]
    finals = set()
    for seed in range(40):
        subset = long_tailed_subset(targets, list("abc"), n_max=4, seed=seed)
        np.testing.assert_array_equal(subset.order, [0, 1, 2])
        np.testing.assert_array_equal(subset.counts, class_counts(targets[subset.indices]))
        assert subset.counts[1] == 1 and subset.counts[2] == 1
        finals.add(int(subset.counts[0]))
    assert finals <= {2, 3, 4} and len(finals) > 1


def test_short_class_keeps_what_it_has():
    targets = rows((50, [0]), (2, [1]))
    subset = long_tailed_subset(targets, ["a", "b"], n_max=40, n_min=10)
    assert subset.targets.tolist() == [40, 10] and subset.counts.tolist() == [40, 2]


def test_seeded():
    targets = rows((40, [0]), (20, [0, 1]), (30, [1]), (12, [2]), (5, [1, 2]))
    a, b, c = (long_tailed_subset(targets, list("abc"), n_max=30, seed=s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)


def test_profile_none_keeps_everything():
    targets = rows((4, [0]), (2, [0, 1]), (1, [2]))
    subset = long_tailed_subset(targets, list("abc"), profile="none")
    np.testing.assert_array_equal(subset.indices, np.arange(7))
    assert subset.counts.tolist() == subset.targets.tolist() == [6, 2, 1]


def test_errors():
    with pytest.raises(ConfigError, match="class 'c' has no images"):
        long_tailed_subset(rows((3, [0]), (1, [1]), (1, [3])), list("abcd"))
    with pytest.raises(ConfigError, match="n_min=5 exceeds n_max=4"):
        long_tailed_subset(rows((3, [0, 1])), list("ab"), n_max=4, n_min=5)
    with pytest.raises(ConfigError, match=r"must be an \(N, 3\) multi-hot matrix"):
        long_tailed_subset(rows((3, [0, 1])), list("abc"))
    with pytest.raises(ConfigError, match="profile must be one of 'pareto', 'none', got 'exp'"):
        long_tailed_subset(rows((3, [0, 1])), list("ab"), profile="exp")
    with pytest.raises(ConfigError, match=r"tail must be a finite number in \[0.0, 1.0\), got 1.0"):
        long_tailed_subset(rows((3, [0, 1])), list("ab"), tail=1.0)


def test_removals_that_empty_a_class_are_an_error():
    # Visit order b, a, c with targets 3, 1, 1: b takes rows 0, 3, 4; a is cut to one of rows 0, 4; with seed 0 it
    # keeps row 0, which also holds c, and c's cut to 1 of rows 0, 3 then removes it.
    targets = np.array([[1, 1, 1], [0, 0, 1], [1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=bool)
    with pytest.raises(ConfigError, match="emptied a class; raise n_min: class 'a' has no images"):
        long_tailed_subset(targets, list("abc"), n_max=3, seed=0)
