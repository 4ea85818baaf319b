import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from ltpipe.errors import ConfigError
from ltpipe.losses import LOSSES, build_loss, class_balanced_weights, ldam_margins, las_smoothing
from conftest import ROOT

# The one-label-per-image losses (LOSSES.names("multiclass")); the multi-label ones: tests/test_multilabel_losses.py.
# Long-tailed counts with one empty class (index 5): it is never a target but sits in every softmax.
COUNTS = [120, 45, 20, 7, 3, 0, 1]
C = len(COUNTS)
N = 24
# every class present: the reference implementations divide by the counts
FULL = [120, 45, 20, 7, 3, 2, 1]


def make_batch(seed=0, n=N, dtype=torch.float32, classes=None):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, C, generator=g, dtype=dtype)
    present = torch.tensor([j for j, c in enumerate(COUNTS) if c > 0]) if classes is None else torch.tensor(classes)
    target = present[torch.randint(0, len(present), (n,), generator=g)]
    features = torch.randn(n, 5, generator=g, dtype=dtype) * 3
    return logits, target, features


def ce(logits, target):
    return F.cross_entropy(logits, target)


def mixed_batch(seed=1):
    logits, target, features = make_batch(seed)
    g = torch.Generator().manual_seed(seed + 100)
    return logits, target, features, target[torch.randperm(N, generator=g)], torch.rand(N, generator=g)


# ------------------------------------------------------------- the authors' code, written out with torch ops
def reference_cb_weights(counts, beta):
    """LDAM-DRW cifar_train.py (Reweight / DRW) and class-balanced-loss cifar_main.py: per-class weights."""
    effective_num = 1.0 - np.power(beta, counts)
    per_cls_weights = (1.0 - beta) / np.array(effective_num)
    per_cls_weights = per_cls_weights / np.sum(per_cls_weights) * len(counts)
    return torch.FloatTensor(per_cls_weights)


def reference_ldam(x, target, cls_num_list, max_m=0.5, s=30, weight=None):
    """kaiming LDAM-DRW losses.py LDAMLoss.forward, on the CPU."""
    m_list = 1.0 / np.sqrt(np.sqrt(cls_num_list))
    m_list = torch.FloatTensor(m_list * (max_m / np.max(m_list)))
    index = torch.zeros_like(x, dtype=torch.uint8)
    index.scatter_(1, target.data.view(-1, 1), 1)
    batch_m = torch.matmul(m_list[None, :], index.float().transpose(0, 1)).view((-1, 1))
    output = torch.where(index.bool(), x - batch_m, x)
    return F.cross_entropy(s * output, target, weight=weight)


def reference_cb_focal(labels, logits, samples_per_cls, beta, gamma):
    """richardaecn class-balanced-loss cifar_main.py: weights tiled per sample, then focal_loss (sigmoid)."""
    num_classes = logits.shape[1]
    one_hot = F.one_hot(labels, num_classes).float()
    alpha = (reference_cb_weights(samples_per_cls, beta)[None, :] * one_hot).sum(1, keepdim=True)
    alpha = alpha.repeat(1, num_classes)
    cross_entropy = F.binary_cross_entropy_with_logits(logits, one_hot, reduction="none")
    modulator = torch.exp(-gamma * one_hot * logits - gamma * torch.log1p(torch.exp(-1.0 * logits)))
    return (alpha * modulator * cross_entropy).sum() / one_hot.sum()


def reference_cb_softmax(labels, logits, samples_per_cls, beta):
    """CB_loss(..., "softmax", ...) of the PyTorch port in LTR-weight-balancing utils/class_balanced_loss.py."""
    num_classes = logits.shape[1]
    one_hot = F.one_hot(labels, num_classes).float()
    weights = (reference_cb_weights(samples_per_cls, beta)[None, :] * one_hot).sum(1, keepdim=True)
    weights = weights.repeat(1, num_classes)
    return F.binary_cross_entropy(logits.softmax(dim=1), one_hot, weight=weights)


def reference_balanced_softmax(labels, logits, sample_per_class):
    """jiawei-ren/BalancedMetaSoftmax-Classification loss/BalancedSoftmaxLoss.py balanced_softmax_loss."""
    spc = sample_per_class.type_as(logits).unsqueeze(0).expand(logits.shape[0], -1)
    return F.cross_entropy(input=logits + spc.log(), target=labels, reduction="mean")


def reference_lade(y_pred, target, counts, alpha, remine_lambda):
    """hyperconnect/LADE: run_networks.py's total PriorCELoss + alpha * LADELoss (loss/PriorCELoss.py,
    loss/LADELoss.py forward), on the CPU."""
    num_classes = len(counts)
    img_num_per_cls = torch.Tensor(counts).float()
    prior = img_num_per_cls / img_num_per_cls.sum()
    prior_ce = F.cross_entropy(y_pred + torch.log(prior + 1e-9), target)
    balanced_prior = torch.tensor(1. / num_classes).float()
    cls_weight = img_num_per_cls.float() / torch.sum(img_num_per_cls.float())
    per_cls_pred_spread = y_pred.T * (target == torch.arange(0, num_classes).view(-1, 1).type_as(target))
    pred_spread = (y_pred - torch.log(prior + 1e-9) + torch.log(balanced_prior + 1e-9)).T
    num_samples_per_cls = torch.sum(target == torch.arange(0, num_classes).view(-1, 1).type_as(target), -1).float()
    first_term = torch.sum(per_cls_pred_spread, -1) / (num_samples_per_cls + 1e-8)
    second_term = torch.logsumexp(pred_spread, -1) - np.log(pred_spread.size(-1))
    estim_loss = first_term - second_term - second_term ** 2 * remine_lambda
    return prior_ce + alpha * -torch.sum(estim_loss * cls_weight)


def reference_gml(output, target, num_class_list):
    """yuhao318/BTM methods.py ReweightedGMLLogAfterMean.forward with p = 1 (the GML authors' group's code)."""
    weight = torch.tensor(num_class_list, dtype=output.dtype)
    max_logit = torch.max(output, dim=1, keepdim=True)[0].detach()
    exp_logits = torch.exp(output - max_logit) * weight.view(1, -1)
    prob = torch.clamp(exp_logits / exp_logits.sum(1, keepdim=True), min=1e-5, max=1.)
    n, c = prob.size()
    ground = torch.gather(prob, 1, target.view(-1, 1)).repeat((1, c))
    mask = torch.zeros((n, c), dtype=torch.int64)
    mask[range(n), target] = 1
    per_class = mask.sum(0)
    exist = per_class != 0
    per_class[per_class == 0] = 1
    mean_prob = torch.sum(ground * mask, dim=0) / per_class
    return (-torch.log(mean_prob[exist])).sum() / exist.sum()


def reference_feabal(feat, out, labels, cls_num_list, lambda_, curr):
    """juyongjiang/FBL loss.py FeaBalLoss (weight None) with train.py's curr = (epoch / (epochs - 10)) ** 2."""
    lam_list = torch.log(torch.tensor(cls_num_list, dtype=torch.float32))
    lam_list = lam_list.max() - lam_list
    lam_list = lam_list * (1 / lam_list.max())
    feat_norm = torch.norm(feat, dim=1).unsqueeze(1).repeat([1, len(lam_list)])
    logit = out - curr * lambda_ * lam_list / (feat_norm + 1e-12)
    return F.cross_entropy(logit, labels)


def reference_las(x, target, cls_num_list, smooth_head, smooth_tail, shape="concave", power=None):
    """dvlab-research/MiSLAS methods.py LabelAwareSmoothing (__init__ and forward), on the CPU."""
    n_1, n_K = max(cls_num_list), min(cls_num_list)
    if shape == "concave":
        smooth = smooth_tail + (smooth_head - smooth_tail) * np.sin((np.array(cls_num_list) - n_K) * np.pi / (2 * (n_1 - n_K)))
    elif shape == "linear":
        smooth = smooth_tail + (smooth_head - smooth_tail) * (np.array(cls_num_list) - n_K) / (n_1 - n_K)
    elif shape == "convex":
        smooth = smooth_head + (smooth_head - smooth_tail) * np.sin(1.5 * np.pi + (np.array(cls_num_list) - n_K) * np.pi / (2 * (n_1 - n_K)))
    elif shape == "exp" and power is not None:
        smooth = smooth_tail + (smooth_head - smooth_tail) * np.power((np.array(cls_num_list) - n_K) / (n_1 - n_K), power)
    smoothing = torch.from_numpy(smooth).float()[target]
    logprobs = F.log_softmax(x, dim=-1)
    nll_loss = -logprobs.gather(dim=-1, index=target.unsqueeze(1)).squeeze(1)
    smooth_loss = -logprobs.mean(dim=-1)
    return ((1. - smoothing) * nll_loss + smoothing * smooth_loss).mean()


def mixup_criterion(criterion, pred, y_a, y_b, lam):
    """MiSLAS methods.py (and every mixup repo): the loss of a mixed batch for a scalar lam."""
    return lam * criterion(pred, y_a) + (1 - lam) * criterion(pred, y_b)


def log_pi():
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    return (counts / counts.sum()).clamp_min(1e-12).log().float()


# ------------------------------------------------------------------------------------------------------ smoke test
@pytest.mark.parametrize("name", LOSSES.names("multiclass"))
def test_smoke_default_params(name):
    loss_fn = build_loss(name, COUNTS)
    loss_fn.set_epoch(35, 40)  # past any curriculum start, so every term is active
    logits, target, features = make_batch()
    logits.requires_grad_(True)
    features.requires_grad_(True)
    out = loss_fn(logits, target, features if loss_fn.needs_features else None)
    assert out.shape == () and out.dtype == logits.dtype
    assert torch.isfinite(out)
    out.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    if loss_fn.needs_features:
        assert torch.isfinite(features.grad).all() and features.grad.abs().sum() > 0
    else:
        assert features.grad is None


@pytest.mark.parametrize("name", LOSSES.names("multiclass"))
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
    torch.testing.assert_close(got, torch.tensor(expected).mean())


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


def test_ldam_zero_margin_is_ce_on_the_cosine_heads_logits():
    logits, target, _ = make_batch()
    loss_fn = build_loss("ldam", COUNTS, max_m=0.0, s=15.0)
    assert loss_fn.cosine_scale == 15.0, "the head scales its cosines by the loss's s"
    torch.testing.assert_close(loss_fn(logits, target), ce(logits, target))


def test_ldam_margins_follow_quarter_power_and_max():
    margins = ldam_margins(COUNTS, 0.4)
    present = [j for j, c in enumerate(COUNTS) if c > 0]
    assert math.isclose(float(margins.max()), 0.4)
    assert float(margins[5]) == 0.0  # empty class: never a target
    for j in present:
        for k in present:
            assert math.isclose(float(margins[j] / margins[k]), (COUNTS[k] / COUNTS[j]) ** 0.25, rel_tol=1e-9)


@pytest.mark.parametrize("max_m,s", [(0.5, 30.0), (0.3, 10.0)])
def test_ldam_matches_the_reference_ldam_loss(max_m, s):
    logits, target, _ = make_batch()
    cosines = logits.tanh()
    got = build_loss("ldam", FULL, max_m=max_m, s=s)(s * cosines, target)  # the cosine head outputs s * cos
    torch.testing.assert_close(got, reference_ldam(cosines, target, FULL, max_m=max_m, s=s))


def test_ldam_reweighted_is_the_reference_weighted_ldam_loss():
    logits, target, _ = make_batch(seed=2)
    cosines = logits.tanh()
    got = build_loss("ldam", FULL, reweight="cb", beta=0.999)(30.0 * cosines, target)
    weight = reference_cb_weights(FULL, 0.999)
    torch.testing.assert_close(got, reference_ldam(cosines, target, FULL, weight=weight))
    # the weighted mean, not the mean of weighted losses: these differ unless the batch's weights average 1
    assert not torch.allclose(got, reference_ldam(cosines, target, FULL, weight=weight) * weight[target].mean())


def test_cb_weights_match_formula():
    beta = 0.999
    raw = [(1 - beta) / (1 - beta ** n) if n else 0.0 for n in COUNTS]
    present = sum(1 for n in COUNTS if n)  # the empty class has no weight to share
    expected = torch.tensor([w * present / sum(raw) for w in raw], dtype=torch.float64)
    torch.testing.assert_close(class_balanced_weights(COUNTS, beta), expected)
    full = [5, 50, 500]
    assert math.isclose(float(class_balanced_weights(full, 0.9999).sum()), len(full))


@pytest.mark.parametrize("beta", [0.0, 0.99, 0.9999])
def test_cb_ce_is_weighted_cross_entropy(beta):
    logits, target, _ = make_batch()
    got = build_loss("cb_ce", FULL, beta=beta)(logits, target)
    torch.testing.assert_close(got, F.cross_entropy(logits, target, weight=reference_cb_weights(FULL, beta)))


@pytest.mark.parametrize("beta,gamma", [(0.9999, 1.0), (0.99, 2.0), (0.999, 0.5), (0.9, 0.0)])
def test_cb_focal_is_the_reference_sigmoid_focal_loss(beta, gamma):
    logits, target, _ = make_batch(seed=4)
    got = build_loss("cb_focal", FULL, beta=beta, gamma=gamma)(logits, target)
    torch.testing.assert_close(got, reference_cb_focal(target, logits, FULL, beta, gamma))


def test_cb_focal_starts_the_bias_at_the_reference_prior():
    # class-balanced-loss model_base.py: bias_initializer=tf.constant_initializer(-np.log(out_dim - 1))
    assert build_loss("cb_focal", FULL).initial_bias == pytest.approx(-np.log(len(FULL) - 1))
    for name in set(LOSSES.names("multiclass")) - {"cb_focal"}:
        assert build_loss(name, COUNTS).initial_bias is None, name


def test_cb_focal_softmax_is_the_weighted_mean_of_softmax_focal_terms():
    logits, target, _ = make_batch(seed=5)
    p = torch.softmax(logits, dim=1)[torch.arange(N), target]
    w = reference_cb_weights(FULL, 0.99)[target]
    expected = (w * (1 - p) ** 2.0 * -torch.log(p)).sum() / w.sum()
    torch.testing.assert_close(build_loss("cb_focal_softmax", FULL, beta=0.99, gamma=2.0)(logits, target), expected)


@pytest.mark.parametrize("beta", [0.9999, 0.9])
def test_cb_softmax_bce_is_the_weight_balancing_cb_loss(beta):
    logits, target, _ = make_batch(seed=6)
    got = build_loss("cb_softmax_bce", FULL, beta=beta)(logits, target)
    torch.testing.assert_close(got, reference_cb_softmax(target, logits, FULL, beta))


@pytest.mark.parametrize("name,params,reference", [
    ("cb_ce", {}, lambda z, y, beta: F.cross_entropy(z, y, weight=reference_cb_weights(FULL, beta))),
    ("cb_focal", {"gamma": 1.0}, lambda z, y, beta: reference_cb_focal(y, z, FULL, beta, 1.0)),
    ("cb_focal_softmax", {"gamma": 0.0},
     lambda z, y, beta: F.cross_entropy(z, y, weight=reference_cb_weights(FULL, beta))),
    ("ldam", {"reweight": "cb", "max_m": 0.3},
     # the cosine head's logits are 30 * cos (the default s); the reference takes the cosines
     lambda z, y, beta: reference_ldam(z / 30.0, y, FULL, max_m=0.3, weight=reference_cb_weights(FULL, beta))),
])
def test_drw_unweighted_before_and_weighted_from_drw_epoch(name, params, reference):
    # LDAM-DRW cifar_train.py: beta = [0, 0.9999][epoch // drw_epoch] (beta 0 gives every weight 1)
    logits, target, _ = make_batch()
    logits = logits.tanh()
    deferred = build_loss(name, FULL, drw_epoch=3, **params)
    torch.testing.assert_close(reference_cb_weights(FULL, 0.0), torch.ones(len(FULL)))

    torch.testing.assert_close(deferred(logits, target), reference(logits, target, 0.0))  # never told: epoch 0
    deferred.set_epoch(2, 10)
    torch.testing.assert_close(deferred(logits, target), reference(logits, target, 0.0))
    deferred.set_epoch(3, 10)
    torch.testing.assert_close(deferred(logits, target), reference(logits, target, 0.9999))
    deferred.set_epoch(9, 10)
    torch.testing.assert_close(deferred(logits, target), reference(logits, target, 0.9999))


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
    torch.testing.assert_close(got, expected.mean())


@pytest.mark.parametrize("shape", ["concave", "linear", "convex", "exp"])
@pytest.mark.parametrize("head,tail", [(0.3, 0.0), (0.4, 0.1)])  # MiSLAS's CIFAR-10 and CIFAR-100 configs
def test_las_matches_the_authors_loss(shape, head, tail):
    for logits, target in reference_batches():
        assert_value_and_gradient_match(
            build_loss("las", FULL, eps_head=head, eps_tail=tail, shape=shape, power=3.0),
            lambda z, y: reference_las(z, y, FULL, head, tail, shape, 3.0), logits, target)


def test_lade_alpha0_is_balanced_softmax():
    logits, target, _ = make_batch()
    got = build_loss("lade", COUNTS, alpha=0.0)(logits, target)
    torch.testing.assert_close(got, build_loss("balanced_softmax", COUNTS)(logits, target))


def reference_batches():
    """(logits, target) on FULL's classes: absent classes, three classes, one class only, one sample."""
    g = torch.Generator().manual_seed(11)
    p = torch.tensor(FULL, dtype=torch.float64)
    yield 1.5 * torch.randn(64, C, generator=g), torch.multinomial(p, 64, True, generator=g)
    yield 1.5 * torch.randn(16, C, generator=g), torch.tensor([2, 4, 6])[torch.randint(0, 3, (16,), generator=g)]
    yield 1.5 * torch.randn(8, C, generator=g), torch.full((8,), 6)
    yield 1.5 * torch.randn(1, C, generator=g), torch.tensor([3])


def assert_value_and_gradient_match(ours, reference, logits, *args):
    z_ours, z_ref = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    got, expected = ours(z_ours, *args), reference(z_ref, *args)
    got.backward()
    expected.backward()
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-6)
    torch.testing.assert_close(z_ours.grad, z_ref.grad, atol=1e-6, rtol=1e-5)


def test_balanced_softmax_matches_the_authors_loss():
    for logits, target in reference_batches():
        assert_value_and_gradient_match(build_loss("balanced_softmax", FULL),
                                        lambda z, y: reference_balanced_softmax(y, z, torch.tensor(FULL)),
                                        logits, target)


@pytest.mark.parametrize("alpha,lam", [(0.1, 0.1), (0.1, 0.01), (0.05, 0.5), (1.0, 0.3)])
def test_lade_matches_the_authors_total_loss(alpha, lam):
    for logits, target in reference_batches():
        assert_value_and_gradient_match(build_loss("lade", FULL, alpha=alpha, remine_lambda=lam),
                                        lambda z, y: reference_lade(z, y, FULL, alpha, lam), logits, target)


def test_gml_matches_the_authors_group_code():
    for logits, target in reference_batches():
        assert_value_and_gradient_match(build_loss("gml", FULL), lambda z, y: reference_gml(z, y, FULL),
                                        logits, target)


def test_gml_clamps_tiny_probabilities_as_the_reference():
    # every class-6 sample has p~ ~ 1e-13: the clamp caps its term and stops its gradient
    logits, target = next(reference_batches())
    logits[:3] = 0.0
    logits[:3, 0] = 25.0
    target[:3] = 6
    assert_value_and_gradient_match(build_loss("gml", FULL), lambda z, y: reference_gml(z, y, FULL), logits, target)


@pytest.mark.parametrize("epoch,epochs", [(0, 200), (37, 200), (150, 200), (190, 200), (199, 200), (7, 12)])
def test_feabal_matches_the_authors_loss_and_curriculum(epoch, epochs):
    # their train.py: curr = (epoch / (epochs - 10)) ** 2, 0-based epochs, past 1 in the last 10 epochs
    logits, target = next(reference_batches())
    features = F.relu(torch.randn(len(target), 16, generator=torch.Generator().manual_seed(3))) * 2
    loss_fn = build_loss("feabal", FULL, lam=60.0)
    loss_fn.set_epoch(epoch, epochs)
    curr = (epoch / (epochs - 10)) ** 2
    f_ours, f_ref = features.clone().requires_grad_(True), features.clone().requires_grad_(True)
    assert_value_and_gradient_match(lambda z, y: loss_fn(z, y, f_ours),
                                    lambda z, y: reference_feabal(f_ref, z, y, FULL, 60.0, curr), logits, target)
    torch.testing.assert_close(f_ours.grad, f_ref.grad, atol=1e-6, rtol=1e-5)


def test_feabal_without_curriculum_keeps_full_strength():
    logits, target = next(reference_batches())
    features = torch.rand(len(target), 16, generator=torch.Generator().manual_seed(4)) + 0.1
    constant = build_loss("feabal", FULL, lam=4.0, curriculum=False)
    constant.set_epoch(0, 5)
    torch.testing.assert_close(constant(logits, target, features),
                               reference_feabal(features, logits, target, FULL, 4.0, 1.0))


def test_feabal_curriculum_needs_an_epoch_before_full_strength():
    loss_fn = build_loss("feabal", FULL, full_before_end=10)
    with pytest.raises(ConfigError, match=r"full_before_end in \[0, 9\]"):
        loss_fn.set_epoch(0, 10)
    build_loss("feabal", FULL, curriculum=False).set_epoch(0, 10)


# ------------------------------------------------------------------------------------------------ mixed batches
@pytest.mark.parametrize("name,params,criterion", [
    ("ce", {}, lambda z, y: F.cross_entropy(z, y)),
    ("cb_ce", {"beta": 0.999}, lambda z, y: F.cross_entropy(z, y, weight=reference_cb_weights(FULL, 0.999))),
    ("ldam", {"reweight": "cb"},  # z = 30 * cos, the default s; the reference takes the cosines
     lambda z, y: reference_ldam(z / 30.0, y, FULL, weight=reference_cb_weights(FULL, 0.9999))),
    ("cb_focal", {}, lambda z, y: reference_cb_focal(y, z, FULL, 0.9999, 1.0)),
])
def test_scalar_lam_is_the_reference_mixup_criterion(name, params, criterion):
    logits, target, _, target_b, _ = mixed_batch()
    logits = logits.tanh()
    lam = 0.3
    got = build_loss(name, FULL, **params)(logits, target, None, target_b, torch.full((N,), lam))
    torch.testing.assert_close(got, mixup_criterion(criterion, logits, target, target_b, lam))


def test_per_sample_lam_normalises_each_target_by_its_own_weight_sum():
    logits, target, _, target_b, lam = mixed_batch()
    w = reference_cb_weights(FULL, 0.999)
    l_a, l_b = (F.cross_entropy(logits, y, reduction="none") for y in (target, target_b))
    expected = ((lam * w[target] * l_a).sum() / w[target].sum()
                + ((1 - lam) * w[target_b] * l_b).sum() / w[target_b].sum())
    torch.testing.assert_close(build_loss("cb_ce", FULL, beta=0.999)(logits, target, None, target_b, lam), expected)


@pytest.mark.parametrize("name", ["ce", "focal", "las", "lade", "gml", "feabal", "balanced_softmax"])
def test_unweighted_mixed_loss_is_the_mean_of_lam_weighted_sample_losses(name):
    # without class weights the reduction is the plain batch mean, as before (LADE and GML keep their batch values)
    logits, target, features, target_b, lam = mixed_batch()
    loss_fn = build_loss(name, COUNTS)
    loss_fn.set_epoch(20, 40)
    f = features if loss_fn.needs_features else None
    expected = (lam * loss_fn.per_sample(logits, target, f) + (1 - lam) * loss_fn.per_sample(logits, target_b, f)).mean()
    torch.testing.assert_close(loss_fn(logits, target, f, target_b, lam), expected)
    torch.testing.assert_close(loss_fn(logits, target, f, target_b, torch.ones(N)), loss_fn(logits, target, f))


def test_lade_and_gml_batch_values_are_unchanged_by_the_reduction():
    logits, target, _ = make_batch(seed=5, classes=[0, 1, 3, 6])
    for name in ("lade", "gml"):
        loss_fn = build_loss(name, COUNTS)
        torch.testing.assert_close(loss_fn(logits, target), loss_fn.per_sample(logits, target, None).mean())


def test_mixed_batch_needs_target_b_and_lam_together():
    loss_fn = build_loss("ce", COUNTS)
    logits, target, _, target_b, lam = mixed_batch()
    with pytest.raises(ConfigError, match="both target_b and lam"):
        loss_fn(logits, target, None, target_b)
    with pytest.raises(ConfigError, match="lam must be"):
        loss_fn(logits, target, None, target_b, lam[:-1])
    with pytest.raises(ConfigError, match="target_b must be"):
        loss_fn(logits, target, None, target_b.float(), lam)


# ------------------------------------------------------------------------------------------- defaults and params
def test_params_yaml_holds_every_loss_default():
    blocks = yaml.safe_load((ROOT / "params.yaml").read_text())["losses"]
    assert set(blocks) == set(LOSSES.names())
    for name in LOSSES.names():
        defaults = {k: p.default for k, p in inspect.signature(LOSSES.get(name)).parameters.items()
                    if p.kind is inspect.Parameter.KEYWORD_ONLY}
        assert blocks[name] == defaults, name


# ------------------------------------------------------------------------------------------------------- bad input
def test_unknown_loss_lists_choices():
    with pytest.raises(ConfigError, match="valid choices: .*balanced_softmax.*focal"):
        build_loss("nope", COUNTS)


def test_unknown_kwarg_lists_valid_parameters():
    with pytest.raises(ConfigError, match="loss 'focal': alpha: unknown key; valid keys: gamma"):
        build_loss("focal", COUNTS, alpha=0.25)


@pytest.mark.parametrize("name,params,pattern", [
    ("focal", {"gamma": -1.0}, "gamma: -1.0: must be >= 0"),
    ("focal", {"gamma": "two"}, "gamma: 'two': must be a number"),
    ("cb_ce", {"beta": 1.0}, "beta: 1.0: must be < 1"),
    ("cb_focal", {"beta": -0.1}, "beta: -0.1: must be >= 0"),
    ("cb_ce", {"drw_epoch": -1}, "drw_epoch"),
    ("cb_ce", {"drw_epoch": 2.5}, "drw_epoch"),
    ("ldam", {"reweight": "inverse"}, "valid choices: none, cb"),
    ("ldam", {"drw_epoch": 5}, "reweight='cb'"),
    ("ldam", {"s": 0.0}, "s: 0.0: must be > 0"),
    ("ldam", {"max_m": -0.5}, "max_m"),
    ("logit_adjust", {"tau": float("nan")}, "tau"),
    ("lade", {"alpha": -1}, "alpha"),
    ("feabal", {"curriculum": "yes"}, "curriculum"),
    ("las", {"shape": "cubic"}, "valid choices: concave, linear, convex, exp"),
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
    for name in LOSSES.names("multiclass"):
        assert torch.isfinite(build_loss(name, COUNTS)(logits, target, features)).all(), name
