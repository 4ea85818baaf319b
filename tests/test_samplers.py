import math

import numpy as np
import pytest
import torch

from ltpipe.errors import ConfigError
from ltpipe.samplers import SAMPLERS, build_sampler

# Long-tailed counts with one empty class (index 5): absent classes must never be drawn.
COUNTS = [600, 300, 150, 80, 40, 0, 30]
C = len(COUNTS)
N = sum(COUNTS)
T = 10


@pytest.fixture(scope="module")
def labels():
    ordered = torch.repeat_interleave(torch.arange(C), torch.tensor(COUNTS))
    return ordered[torch.randperm(N, generator=torch.Generator().manual_seed(0))]


def counts_f64():
    return torch.tensor(COUNTS, dtype=torch.float64)


def balanced_reference():
    present = counts_f64() > 0
    return present.double() / present.sum()


def instance_reference():
    return counts_f64() / N


def class_frequencies(labels, indices):
    return torch.bincount(labels[indices], minlength=C).double() / indices.numel()


def assert_close_binomial(freq, probs, draws):
    # 5 binomial standard deviations per class; exact match where p is 0 or 1
    tol = 5 * torch.sqrt(probs * (1 - probs) / draws) + 1e-12
    assert torch.all((freq - probs).abs() <= tol), (freq, probs, tol)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_smoke_shape_range_and_probabilities(name, labels):
    sampler = build_sampler(name, labels, C)
    idx = sampler.epoch_indices(epoch=3, total_epochs=T, seed=1)
    assert idx.dtype == torch.long and idx.shape == (N,)
    assert int(idx.min()) >= 0 and int(idx.max()) < N
    probs = sampler.class_probabilities(3, T)
    assert probs.shape == (C,)
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-12)
    assert float(probs[5]) == 0.0  # empty class


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_deterministic_in_seed_and_epoch(name, labels):
    sampler = build_sampler(name, labels, C)
    a = sampler.epoch_indices(2, T, seed=7)
    assert torch.equal(a, sampler.epoch_indices(2, T, seed=7))
    assert torch.equal(a, build_sampler(name, labels, C).epoch_indices(2, T, seed=7))
    assert not torch.equal(a, sampler.epoch_indices(3, T, seed=7))
    assert not torch.equal(a, sampler.epoch_indices(2, T, seed=8))


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_empirical_frequencies_match_class_probabilities(name, labels):
    sampler = build_sampler(name, labels, C)
    epoch = T // 2
    idx = torch.cat([sampler.epoch_indices(epoch, T, seed=s) for s in range(17)])  # ~20k draws
    assert_close_binomial(class_frequencies(labels, idx), sampler.class_probabilities(epoch, T), idx.numel())


@pytest.mark.parametrize("name", ["class_balanced", "sqrt", "reversed", "class_aware"])
def test_uniform_within_class(name):
    # few indices so every index gets enough draws for the binomial tolerance to hold
    small_counts = torch.tensor([2, 5, 9])
    small = torch.repeat_interleave(torch.arange(3), small_counts)
    sampler = build_sampler(name, small, 3)
    idx = torch.cat([sampler.epoch_indices(0, T, seed=s) for s in range(1250)])  # 20k draws
    per_index = torch.bincount(idx, minlength=small.numel()).double() / idx.numel()
    expected = (sampler.class_probabilities(0, T) / small_counts.double())[small]
    assert_close_binomial(per_index, expected, idx.numel())


def test_instance_is_permutation(labels):
    idx = build_sampler("instance", labels, C).epoch_indices(0, T, seed=0)
    assert torch.equal(torch.sort(idx).values, torch.arange(N))


def test_instance_probabilities_are_frequencies(labels):
    assert torch.allclose(build_sampler("instance", labels, C).class_probabilities(0, T), instance_reference())


def test_class_balanced_probabilities(labels):
    assert torch.allclose(build_sampler("class_balanced", labels, C).class_probabilities(0, T), balanced_reference())


def test_power_limits_and_sqrt(labels):
    def probs(name, **kw):
        return build_sampler(name, labels, C, **kw).class_probabilities(0, T)

    assert torch.allclose(probs("power", q=0.0), probs("class_balanced"))
    assert torch.allclose(probs("power", q=1.0), instance_reference())
    root = counts_f64().sqrt()
    assert torch.allclose(probs("sqrt"), root / root.sum())
    assert torch.allclose(probs("power"), probs("sqrt"))  # default q = 0.5
    cube = counts_f64() ** 0.3
    assert torch.allclose(probs("power", q=0.3), cube / cube.sum())


def reference_progressive_class_weights(cnts, epochs):
    """classifier-balancing data/ClassPrioritySampler.py (feat_shift.yaml: lam null, cycle 0, manual_only): per
    0-based epoch e, get_manual_weights(lams[e]) over the classes, lams = np.linspace(0, 1, epochs)."""
    cnts = np.asarray(cnts, dtype=np.float64)
    num_samples = cnts.sum()
    balanced_weights = np.ones(len(cnts))
    balanced_weights *= num_samples / balanced_weights.sum() * 1.0
    uniform_weights = cnts.copy()
    lams = np.linspace(0, 1, epochs)
    return [balanced_weights * lam + (1 - lam) * uniform_weights for lam in lams]


@pytest.mark.parametrize("epochs", [1, 2, 10, 90])
def test_progressive_follows_the_authors_schedule(epochs):
    # instance sampling in the first epoch, class-balanced in the last
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    labels = torch.arange(10).repeat_interleave(torch.tensor(counts))
    sampler = build_sampler("progressive", labels, 10)
    for epoch, weights in enumerate(reference_progressive_class_weights(counts, epochs)):
        expected = torch.from_numpy(weights / weights.sum())
        torch.testing.assert_close(sampler.class_probabilities(epoch, epochs), expected, rtol=1e-12, atol=1e-12)
    if epochs > 1:
        assert torch.allclose(sampler.class_probabilities(epochs - 1, epochs), torch.full((10,), 0.1, dtype=torch.float64))


def test_reversed_inverse_frequency(labels):
    probs = build_sampler("reversed", labels, C).class_probabilities(0, T)
    counts = counts_f64()
    present = counts > 0
    weights = torch.where(present, counts.max() / counts.clamp_min(1), torch.zeros(()).double())
    assert torch.allclose(probs, weights / weights.sum())
    product = probs[present] * counts[present]  # p_j * n_j is constant when p_j is proportional to 1 / n_j
    assert torch.allclose(product, product[0].expand_as(product))


@pytest.mark.parametrize("k", [1, 3, 4])
def test_class_aware_runs_and_round_robin(labels, k):
    idx = build_sampler("class_aware", labels, C, samples_per_class=k).epoch_indices(1, T, seed=0)
    assert idx.shape == (N,)
    full = N // k * k
    runs = labels[idx[:full]].view(-1, k)
    assert torch.all(runs == runs[:, :1])
    present = torch.tensor([j for j, n in enumerate(COUNTS) if n > 0])
    visits = runs[:, 0]
    cycles = visits[: visits.numel() // present.numel() * present.numel()].view(-1, present.numel())
    assert torch.all(torch.sort(cycles, dim=1).values == present)  # each cycle visits every present class once


def test_class_aware_orders_differ_between_cycles(labels):
    idx = build_sampler("class_aware", labels, C, samples_per_class=1).epoch_indices(0, T, seed=0)
    cycles = labels[idx][: N // 6 * 6].view(-1, 6)
    assert torch.unique(cycles, dim=0).shape[0] > 1


def test_build_passes_params(labels):
    assert build_sampler("power", labels, C, q=2.0).q == 2.0
    assert build_sampler("class_aware", labels, C, samples_per_class=8).samples_per_class == 8


def test_unknown_name_lists_choices(labels):
    with pytest.raises(ConfigError) as err:
        build_sampler("nope", labels, C)
    for name in SAMPLERS.names():
        assert name in str(err.value)


def test_unknown_param_lists_valid(labels):
    with pytest.raises(ConfigError, match="q"):
        build_sampler("power", labels, C, alpha=1.0)
    with pytest.raises(ConfigError, match="sampler 'sqrt': q: unknown key; this block takes no keys"):
        build_sampler("sqrt", labels, C, q=0.5)


@pytest.mark.parametrize("name,params,match", [
    ("power", {"q": -0.5}, "q: -0.5: must be >= 0"),
    ("power", {"q": float("nan")}, "q: nan: must be a finite number"),
    ("class_aware", {"samples_per_class": 0}, "samples_per_class: 0: must be >= 1"),
])
def test_bad_params(labels, name, params, match):
    with pytest.raises(ConfigError, match=match):
        build_sampler(name, labels, C, **params)


@pytest.mark.parametrize("bad_labels", [
    torch.tensor([0, 1, C]),
    torch.tensor([-1, 0, 1]),
    torch.tensor([], dtype=torch.long),
    torch.tensor([0.0, 1.0]),
    torch.zeros(2, 2, dtype=torch.long),
])
def test_bad_labels(bad_labels):
    with pytest.raises(ConfigError, match="labels"):
        build_sampler("instance", bad_labels, C)


def test_bad_num_classes():
    with pytest.raises(ConfigError, match="num_classes"):
        build_sampler("instance", torch.tensor([0, 1]), 0)


@pytest.mark.parametrize("epoch,total", [(-1, T), (T + 1, T), (0, 0)])
def test_bad_epoch(labels, epoch, total):
    sampler = build_sampler("progressive", labels, C)
    with pytest.raises(ConfigError, match="epoch"):
        sampler.class_probabilities(epoch, total)
    with pytest.raises(ConfigError, match="epoch"):
        sampler.epoch_indices(epoch, total, seed=0)


@pytest.mark.parametrize("name", SAMPLERS.names("multilabel"))
def test_one_label_per_image_and_its_one_hot_matrix_draw_the_same(labels, name):
    """One implementation for both label formats: 1-D labels and their one-hot rows give the same epoch."""
    one_hot = torch.nn.functional.one_hot(labels, C).bool()
    for seed in (0, 3):
        assert torch.equal(build_sampler(name, labels, C).epoch_indices(2, T, seed),
                           build_sampler(name, one_hot, C).epoch_indices(2, T, seed))


def test_class_aware_cycles_a_class_before_repeating_an_image():
    """Kang's and the DB code's RandomCycleIter: a class's images all come once before any comes again."""
    small = torch.repeat_interleave(torch.arange(3), torch.tensor([2, 5, 9]))
    idx = build_sampler("class_aware", small, 3, samples_per_class=1).epoch_indices(0, T, seed=0)
    for j in range(3):
        drawn = idx[small[idx] == j]
        n = int((small == j).sum())
        for start in range(0, drawn.numel() - n + 1, n):
            assert torch.equal(drawn[start:start + n].sort().values, torch.nonzero(small == j).flatten())
