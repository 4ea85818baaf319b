import math

import pytest
import torch

from ltpipe.errors import ConfigError
from ltpipe.samplers import SAMPLERS, ClassAwareSampler, build_sampler

T = 10
# per-class label probability: long-tailed, class 4 never present (it must never be picked)
PROBS = torch.tensor([0.6, 0.25, 0.08, 0.02, 0.0, 0.04])
C = len(PROBS)


def build_multilabel_sampler(name, targets, **params):
    """The samplers take an (N, C) multi-hot matrix where they take 1-D labels; the DB code's 3 images per class."""
    if name == "class_aware":
        params.setdefault("samples_per_class", 3)
    return build_sampler(name, targets, targets.shape[1], **params)


@pytest.fixture(scope="module")
def targets():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(600, C, generator=g) < PROBS
    y[~y.any(dim=1), 0] = True
    return y


@pytest.mark.parametrize("name", SAMPLERS.names("multilabel"))
def test_smoke_and_determinism(name, targets):
    sampler = build_multilabel_sampler(name, targets)
    a = sampler.epoch_indices(3, T, seed=1)
    assert a.dtype == torch.long and a.shape == (len(targets),) and len(sampler) == len(targets)
    assert 0 <= int(a.min()) and int(a.max()) < len(targets)
    assert torch.equal(a, build_multilabel_sampler(name, targets).epoch_indices(3, T, seed=1))
    assert not torch.equal(a, sampler.epoch_indices(4, T, seed=1))
    assert not torch.equal(a, sampler.epoch_indices(3, T, seed=2))


def test_instance_is_a_permutation(targets):
    idx = build_multilabel_sampler("instance", targets).epoch_indices(0, T, seed=0)
    assert torch.equal(idx.sort().values, torch.arange(len(targets)))


def test_class_aware_draws_hold_their_class_in_runs_of_num_samples_cls(targets):
    sampler = build_multilabel_sampler("class_aware", targets)
    classes, idx = sampler.epoch_draws(2, T, seed=5)
    assert targets[idx, classes].all()
    assert (classes.view(-1, 3) == classes.view(-1, 3)[:, :1]).all()  # 600 draws = 200 runs of 3
    assert not (classes == 4).any()


def test_class_aware_picks_every_class_equally_often(targets):
    # Round-robin over the 5 present classes: within one epoch the picks differ by at most one run of 3.
    sampler = build_multilabel_sampler("class_aware", targets)
    present = torch.tensor([0, 1, 2, 3, 5])
    totals = torch.zeros(C, dtype=torch.long)
    for seed in range(8):
        classes, _ = sampler.epoch_draws(0, T, seed=seed)
        counts = torch.bincount(classes, minlength=C)
        assert counts[4] == 0
        assert int(counts[present].max() - counts[present].min()) <= 3
        totals += counts
    # and over epochs, the picked-class frequency is 1/5 within 5 binomial sigmas
    draws = int(totals.sum())
    sigma = math.sqrt(0.2 * 0.8 / draws)
    assert ((totals[present].double() / draws - 0.2).abs() <= 5 * sigma).all()


def test_class_aware_cycles_each_class_without_repeats(targets):
    # A class's images are all drawn once before any repeats, and every pass is a permutation of them.
    sampler = build_multilabel_sampler("class_aware", targets)
    classes, idx = sampler.epoch_draws(1, T, seed=0)
    for j in (1, 2, 3, 5):
        members = torch.nonzero(targets[:, j]).flatten()
        drawn = idx[classes == j]
        n = members.numel()
        for start in range(0, drawn.numel() - n + 1, n):
            assert torch.equal(drawn[start:start + n].sort().values, members)
        tail = drawn[drawn.numel() // n * n:]
        assert tail.unique().numel() == tail.numel()


def test_class_aware_members_are_uniform_over_many_epochs():
    y = torch.zeros(12, 2, dtype=torch.bool)
    y[:9, 0] = True  # class 0: images 0..8
    y[7:, 1] = True  # class 1: images 7..11 (7 and 8 hold both)
    sampler = build_multilabel_sampler("class_aware", y, samples_per_class=1)
    draws = [sampler.epoch_draws(e, 400, seed=0) for e in range(400)]
    classes = torch.cat([c for c, _ in draws])
    idx = torch.cat([i for _, i in draws])
    for j, members in ((0, torch.arange(9)), (1, torch.arange(7, 12))):
        freq = torch.bincount(idx[classes == j], minlength=12)[members].double() / int((classes == j).sum())
        p = 1 / members.numel()
        assert ((freq - p).abs() <= 5 * math.sqrt(p * (1 - p) / int((classes == j).sum()))).all()


def test_class_aware_epoch_length_and_kwargs(targets):
    assert SAMPLERS.names("multilabel") == ["class_aware", "instance"]
    sampler = build_multilabel_sampler("class_aware", targets, samples_per_class=4, reduce=4)
    # the DB code's epoch: int(max_j n_j * C / reduce) draws
    assert len(sampler) == int(int(targets.sum(0).max()) * C / 4)
    classes, idx = sampler.epoch_draws(0, T, seed=0)
    assert idx.shape == classes.shape == (len(sampler),) and len(sampler) != len(targets)
    assert (classes[:len(sampler) // 4 * 4].view(-1, 4) == classes[:len(sampler) // 4 * 4].view(-1, 4)[:, :1]).all()
    with pytest.raises(ConfigError, match="samples_per_class: 0: must be >= 1"):
        build_multilabel_sampler("class_aware", targets, samples_per_class=0)
    with pytest.raises(ConfigError, match="sampler 'class_aware': q: unknown key"):
        build_multilabel_sampler("class_aware", targets, q=0.5)
    assert isinstance(build_multilabel_sampler("class_aware", targets), ClassAwareSampler)


@pytest.mark.parametrize("bad, match", [
    (torch.ones(5, 3), r"\(N, 2\) multi-hot matrix"),
    (torch.full((4, 2), 2), "every entry 0 or 1"),
    (torch.tensor([[1, 0], [0, 0]]), "row 1 has no label"),
    (torch.zeros(0, 2), "at least one image"),
])
def test_target_errors(bad, match):
    with pytest.raises(ConfigError, match=match):
        build_sampler("class_aware", bad, 2)


def test_epoch_errors(targets):
    with pytest.raises(ConfigError, match="epoch in"):
        build_multilabel_sampler("instance", targets).epoch_indices(11, T, seed=0)
