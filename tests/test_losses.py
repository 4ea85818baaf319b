import math

import pytest
import torch
import torch.nn.functional as F

from ltpipe.errors import ConfigError
from ltpipe.losses import LOSSES, build_loss, class_balanced_weights, ldam_margins, las_smoothing

# Long-tailed counts with one empty class (index 5): it is never a target but sits in every softmax.
COUNTS = [120, 45, 20, 7, 3, 0, 1]
C = len(COUNTS)
N = 24


def make_batch(seed=0, n=N, dtype=torch.float32, classes=None):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C, generator=g, dtype=dtype)
    present = torch.tensor([j for j, c in enumerate(COUNTS) if c > 0]) if classes is None else torch.tensor(classes)
    target = present[torch.randint(0, len(present), (n,), generator=g)]
    features = torch.randn(n, 5, generator=g, dtype=dtype) * 3
    return logits, target, features


def ce(logits, target):
    return F.cross_entropy(logits, target, reduction="none")


def log_pi():
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    return (counts / counts.sum()).clamp_min(1e-12).log().float()


# ------------------------------------------------------------------------------------------------------ smoke test
@pytest.mark.parametrize("name", LOSSES.names())
def test_smoke_default_params(name):
    loss_fn = build_loss(name, COUNTS)
    loss_fn.set_epoch(3, 4)  # past any curriculum start, so every term is active
    logits, target, features = make_batch()
    logits.requires_grad_(True)
    features.requires_grad_(True)
    out = loss_fn(logits, target, features if loss_fn.needs_features else None)
    assert out.shape == (N,) and out.dtype == logits.dtype
    assert torch.isfinite(out).all()
    out.mean().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    if loss_fn.needs_features:
        assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    else:
        assert features.grad is None


@pytest.mark.parametrize("name", LOSSES.names())
def test_dtype_follows_logits(name):
    loss_fn = build_loss(name, COUNTS)
    logits, target, features = make_batch(dtype=torch.float64)
    assert loss_fn(logits, target, features).dtype == torch.float64


# -------------------------------------------------------------------------------------------- known equivalences
def test_ce_is_cross_entropy():
    logits, target, _ = make_batch()
    torch.testing.assert_close(build_loss("ce", COUNTS)(logits, target), ce(logits, target))


def test_focal_gamma0_is_ce():
    logits, target, _ = make_batch()
    torch.testing.assert_close(build_loss("focal", COUNTS, gamma=0.0)(logits, target), ce(logits, target))


@pytest.mark.parametrize("gamma", [0.5, 2.0, 3.0])
def test_focal_matches_formula_on_hand_tensors(gamma):
    logits = torch.tensor([[2.0, 0.0, -1.0, 0, 0, 0, 0], [0.5, 0.5, 0.0, 1.0, 0, 0, 0]])
    target = torch.tensor([0, 2])
    expected = []
    for row, y in zip(logits.tolist(), target.tolist()):
        p = math.exp(row[y]) / sum(math.exp(v) for v in row)
        expected.append(-((1 - p) ** gamma) * math.log(p))
    got = build_loss("focal", COUNTS, gamma=gamma)(logits, target)
    torch.testing.assert_close(got, torch.tensor(expected))


def test_balanced_softmax_uniform_counts_is_ce():
    uniform = [5] * C
    logits, target, _ = make_batch()
    torch.testing.assert_close(build_loss("balanced_softmax", uniform)(logits, target), ce(logits, target))


def test_balanced_softmax_adds_log_counts():
    logits, target, _ = make_batch()
    log_n = torch.tensor([math.log(c) if c else math.log(1e-12 * sum(COUNTS)) for c in COUNTS])
    torch.testing.assert_close(build_loss("balanced_softmax", COUNTS)(logits, target), ce(logits + log_n, target))


def test_logit_adjust_tau0_is_ce_and_tau_scales_log_prior():
    logits, target, _ = make_batch()
    torch.testing.assert_close(build_loss("logit_adjust", COUNTS, tau=0.0)(logits, target), ce(logits, target))
    torch.testing.assert_close(build_loss("logit_adjust", COUNTS, tau=0.7)(logits, target),
                               ce(logits + 0.7 * log_pi(), target))


def test_ldam_zero_margin_is_scaled_ce():
    logits, target, _ = make_batch()
    got = build_loss("ldam", COUNTS, max_m=0.0, s=15.0)(logits, target)
    torch.testing.assert_close(got, ce(15.0 * logits, target))


def test_ldam_margins_follow_quarter_power_and_max():
    margins = ldam_margins(COUNTS, 0.4)
    present = [j for j, c in enumerate(COUNTS) if c > 0]
    assert math.isclose(float(margins.max()), 0.4)
    assert float(margins[5]) == 0.0  # empty class: never a target
    for j in present:
        for k in present:
            assert math.isclose(float(margins[j] / margins[k]), (COUNTS[k] / COUNTS[j]) ** 0.25, rel_tol=1e-9)


def test_ldam_subtracts_margin_from_target_logit_only():
    logits, target, _ = make_batch()
    m = torch.tensor([c ** -0.25 if c else 0.0 for c in COUNTS])
    m = m * (0.5 / m.max())
    shifted = logits - F.one_hot(target, C) * m[target][:, None]
    got = build_loss("ldam", COUNTS, max_m=0.5, s=30.0)(logits, target)
    torch.testing.assert_close(got, ce(30.0 * shifted, target))


def test_cb_weights_match_formula():
    beta = 0.999
    raw = [(1 - beta) / (1 - beta ** n) if n else 0.0 for n in COUNTS]
    present = sum(1 for n in COUNTS if n)  # the empty class has no weight to share
    expected = torch.tensor([w * present / sum(raw) for w in raw], dtype=torch.float64)
    torch.testing.assert_close(class_balanced_weights(COUNTS, beta), expected)
    full = [5, 50, 500]
    assert math.isclose(float(class_balanced_weights(full, 0.9999).sum()), len(full))


def test_cb_ce_beta0_is_ce_and_weights_multiply():
    logits, target, _ = make_batch()
    torch.testing.assert_close(build_loss("cb_ce", COUNTS, beta=0.0)(logits, target), ce(logits, target))
    w = class_balanced_weights(COUNTS, 0.99).float()
    torch.testing.assert_close(build_loss("cb_ce", COUNTS, beta=0.99)(logits, target), w[target] * ce(logits, target))
    focal = build_loss("focal", COUNTS, gamma=2.0)(logits, target)
    torch.testing.assert_close(build_loss("cb_focal", COUNTS, beta=0.99, gamma=2.0)(logits, target), w[target] * focal)


@pytest.mark.parametrize("name,params", [("cb_ce", {}), ("cb_focal", {"gamma": 1.0}),
                                         ("ldam", {"reweight": "cb", "max_m": 0.3})])
def test_drw_unweighted_before_and_weighted_from_drw_epoch(name, params):
    logits, target, _ = make_batch()
    deferred = build_loss(name, COUNTS, drw_epoch=3, **params)
    unweighted_params = {k: v for k, v in params.items() if k != "reweight"}
    plain_name = {"cb_ce": "ce", "cb_focal": "focal", "ldam": "ldam"}[name]
    plain = build_loss(plain_name, COUNTS, **unweighted_params)(logits, target)
    w = class_balanced_weights(COUNTS, 0.9999).float()

    torch.testing.assert_close(deferred(logits, target), plain)  # never told the epoch: epoch 0
    deferred.set_epoch(2, 10)
    torch.testing.assert_close(deferred(logits, target), plain)
    deferred.set_epoch(3, 10)
    torch.testing.assert_close(deferred(logits, target), w[target] * plain)
    deferred.set_epoch(9, 10)
    torch.testing.assert_close(deferred(logits, target), w[target] * plain)


def test_las_zero_smoothing_is_ce():
    logits, target, _ = make_batch()
    got = build_loss("las", COUNTS, eps_head=0.0, eps_tail=0.0)(logits, target)
    torch.testing.assert_close(got, ce(logits, target))


@pytest.mark.parametrize("shape,g", [
    ("concave", lambda x: math.sin(math.pi * x / 2)),
    ("linear", lambda x: x),
    ("convex", lambda x: 1 - math.cos(math.pi * x / 2)),
    ("exp", lambda x: x ** 3.0),
])
def test_las_smoothing_and_loss_match_formula(shape, g):
    n_max, n_min = max(COUNTS), min(c for c in COUNTS if c > 0)
    eps = [0.1 + (0.4 - 0.1) * g(min(max((c - n_min) / (n_max - n_min), 0.0), 1.0)) for c in COUNTS]
    eps = torch.tensor(eps, dtype=torch.float64)
    torch.testing.assert_close(las_smoothing(COUNTS, 0.4, 0.1, shape, 3.0), eps)
    assert math.isclose(float(eps[0]), 0.4) and math.isclose(float(eps[6]), 0.1)

    logits, target, _ = make_batch()
    log_p = torch.log(torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True))
    e = eps.float()[target]
    expected = -(1 - e) * log_p[torch.arange(N), target] - e * log_p.sum(1) / C
    got = build_loss("las", COUNTS, eps_head=0.4, eps_tail=0.1, shape=shape, power=3.0)(logits, target)
    torch.testing.assert_close(got, expected)


def test_lade_alpha0_is_balanced_softmax():
    logits, target, _ = make_batch()
    got = build_loss("lade", COUNTS, alpha=0.0)(logits, target)
    torch.testing.assert_close(got, build_loss("balanced_softmax", COUNTS)(logits, target))


def test_lade_mean_is_pc_softmax_plus_lader():
    logits, target, _ = make_batch(seed=3)
    alpha, lam = 0.3, 0.2
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    z = logits.double()
    lader = 0.0
    for c in range(C):
        members = z[target == c, c]
        first = members.mean() if len(members) else torch.tensor(0.0, dtype=torch.float64)
        shifted = z[:, c] - torch.log(prior[c].clamp_min(1e-12)) + math.log(1 / C)
        second = torch.log(torch.exp(shifted).mean())
        lader = lader - prior[c] * (first - second - lam * second ** 2)
    expected = ce(logits + log_pi(), target).double().mean() + alpha * lader
    got = build_loss("lade", COUNTS, alpha=alpha, remine_lambda=lam)(logits, target)
    assert math.isclose(float(got.double().mean()), float(expected), rel_tol=1e-5)


def test_gml_one_sample_per_class_is_balanced_softmax():
    logits, _, _ = make_batch(n=C)
    target = torch.tensor([0, 1, 2, 3, 4, 6, 5])
    got = build_loss("gml", COUNTS)(logits, target)
    torch.testing.assert_close(got, build_loss("balanced_softmax", COUNTS)(logits, target))


def test_gml_mean_is_log_geometric_mean_of_class_mean_probabilities():
    logits, target, _ = make_batch(seed=5, classes=[0, 1, 3, 6])
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    p = torch.softmax(logits.double() + counts.clamp_min(1e-12 * counts.sum()).log(), dim=1)
    present = sorted(set(target.tolist()))
    expected = -sum(math.log(float(p[target == c, c].mean())) for c in present) / len(present)
    got = build_loss("gml", COUNTS)(logits, target)
    assert math.isclose(float(got.double().mean()), expected, rel_tol=1e-5)


def test_feabal_follows_parabolic_curriculum():
    logits, target, features = make_batch()
    loss_fn = build_loss("feabal", COUNTS, lam=4.0)
    torch.testing.assert_close(loss_fn(logits, target, features), ce(logits, target))  # epoch 0

    log_n = [math.log(c) for c in COUNTS if c > 0]
    a = torch.tensor([(max(log_n) - math.log(c)) / (max(log_n) - min(log_n)) if c else 1.0 for c in COUNTS])
    norm = features.norm(dim=1, keepdim=True)
    loss_fn.set_epoch(5, 10)
    expected = ce(logits - 4.0 * (5 / 10) ** 2 * a / norm, target)
    torch.testing.assert_close(loss_fn(logits, target, features), expected)

    constant = build_loss("feabal", COUNTS, lam=4.0, curriculum=False)
    torch.testing.assert_close(constant(logits, target, features), ce(logits - 4.0 * a / norm, target))


def test_mixup_combination_of_per_sample_losses():
    # stage 1 combines lam * L(y_a) + (1 - lam) * L(y_b) per sample; lam = 1 must reduce to L(y_a)
    logits, target, _ = make_batch()
    loss_fn = build_loss("focal", COUNTS)
    lam = torch.ones(N)
    mixed = lam * loss_fn(logits, target) + (1 - lam) * loss_fn(logits, target.flip(0))
    torch.testing.assert_close(mixed, loss_fn(logits, target))


# ------------------------------------------------------------------------------------------------------- bad input
def test_unknown_loss_lists_choices():
    with pytest.raises(ConfigError, match="valid choices: .*balanced_softmax.*focal"):
        build_loss("nope", COUNTS)


def test_unknown_kwarg_lists_valid_parameters():
    with pytest.raises(ConfigError, match="valid parameters: gamma"):
        build_loss("focal", COUNTS, alpha=0.25)


@pytest.mark.parametrize("name,params,pattern", [
    ("focal", {"gamma": -1.0}, r"gamma .*\[0.0, inf\]"),
    ("focal", {"gamma": "2"}, "gamma"),
    ("cb_ce", {"beta": 1.0}, r"beta .*\[0.0, 1.0\)"),
    ("cb_focal", {"beta": -0.1}, r"beta .*\[0.0, 1.0\)"),
    ("cb_ce", {"drw_epoch": -1}, "drw_epoch"),
    ("cb_ce", {"drw_epoch": 2.5}, "drw_epoch"),
    ("ldam", {"reweight": "inverse"}, "'none', 'cb'"),
    ("ldam", {"drw_epoch": 5}, "reweight='cb'"),
    ("ldam", {"s": 0.0}, r"s must"),
    ("ldam", {"max_m": -0.5}, "max_m"),
    ("logit_adjust", {"tau": float("nan")}, "tau"),
    ("lade", {"alpha": -1}, "alpha"),
    ("feabal", {"curriculum": "yes"}, "curriculum"),
    ("las", {"shape": "cubic"}, "'concave', 'linear', 'convex', 'exp'"),
    ("las", {"eps_head": 1.5}, "eps_head"),
    ("las", {"power": 0.0}, "power"),
])
def test_bad_parameters_raise_config_error(name, params, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_loss(name, COUNTS, **params)


@pytest.mark.parametrize("counts", [[], [3, -1], [2.5, 1], [0, 0], [[1, 2]], "abc"])
def test_bad_class_counts(counts):
    with pytest.raises(ConfigError, match="class_counts"):
        build_loss("ce", counts)


def test_drw_epoch_beyond_training_fails_at_first_set_epoch():
    loss_fn = build_loss("cb_ce", COUNTS, drw_epoch=10)
    with pytest.raises(ConfigError, match=r"drw_epoch in \[0, 9\]"):
        loss_fn.set_epoch(0, 10)


def test_bad_batch_shapes():
    loss_fn = build_loss("ce", COUNTS)
    logits, target, _ = make_batch()
    with pytest.raises(ConfigError, match=f"\\(N, {C}\\)"):
        loss_fn(logits[:, :3], target)
    with pytest.raises(ConfigError, match="target"):
        loss_fn(logits, target[:-1])
    with pytest.raises(ConfigError, match="features"):
        build_loss("feabal", COUNTS)(logits, target)


def test_zero_count_class_gives_finite_values():
    # documented choice: an empty class is well defined (weight 0, margin 0, clamped prior), not an error
    assert float(class_balanced_weights(COUNTS, 0.0)[5]) == 0.0
    logits, target, features = make_batch()
    for name in LOSSES.names():
        assert torch.isfinite(build_loss(name, COUNTS)(logits, target, features)).all(), name
