import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from ltpipe.errors import ConfigError
from ltpipe.losses import LOSSES, build_loss

MULTILABEL_LOSSES = LOSSES.names("multilabel")

COUNTS = [60, 25, 9, 3, 1]  # images per class, co-occurrence included
N_IMAGES = 80
C = len(COUNTS)


def make_batch(seed=0, n=12, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, C, generator=g, dtype=dtype)
    targets = (torch.rand(n, C, generator=g) < 0.35).to(dtype)
    targets[targets.sum(1) == 0, 0] = 1  # every image has a label, as the data layer guarantees
    return logits, targets


# ------------------------------------------------------------- reference code, transcribed (not ltpipe's helpers)
def resample_loss_reference(cls_score, label, class_freq, train_num, *, map_alpha, map_beta, map_gamma, init_bias,
                            neg_scale, gamma, balance_param, loss_weight):
    """wutong16/DistributionBalancedLoss mllt/models/losses/resample_loss.py, ResampleLoss.forward with
    use_sigmoid=True, reweight_func='rebalance', focal=True, logit_reg={neg_scale, init_bias}, then
    mllt/apis/train.py parse_losses' .mean(); returns the unreduced loss and its mean."""
    freq_inv = torch.ones(class_freq.shape) / class_freq
    init_bias = - torch.log(train_num / class_freq - 1) * init_bias / neg_scale
    # reweight_functions -> rebalance_weight
    repeat_rate = torch.sum(label.float() * freq_inv, dim=1, keepdim=True)
    pos_weight = freq_inv.clone().detach().unsqueeze(0) / repeat_rate
    weight = torch.sigmoid(map_beta * (pos_weight - map_gamma)) + map_alpha
    # logit_reg_functions
    labels = label.float()
    logits = cls_score.clone()  # the code adds in place to the caller's tensor
    logits += init_bias
    logits = logits * (1 - labels) * neg_scale + logits * labels
    weight = weight / neg_scale * (1 - labels) + weight * labels
    # focal branch
    logpt = - F.binary_cross_entropy_with_logits(logits.clone(), label.float(), None, reduction='none')
    pt = torch.exp(logpt)
    loss = F.binary_cross_entropy_with_logits(logits, label.float(), weight.float(), reduction='none')
    loss = ((1 - pt) ** gamma) * loss
    loss = balance_param * loss
    loss = loss_weight * loss
    return loss, loss.mean()


def asymmetric_loss_reference(x, y, gamma_neg=4, gamma_pos=1, clip=0.05, eps=1e-8,
                              disable_torch_grad_focal_loss=True):
    """Alibaba-MIIL/ASL src/loss_functions/losses.py, AsymmetricLoss.forward."""
    x_sigmoid = torch.sigmoid(x)
    xs_pos = x_sigmoid
    xs_neg = 1 - x_sigmoid
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    los_pos = y * torch.log(xs_pos.clamp(min=eps))
    los_neg = (1 - y) * torch.log(xs_neg.clamp(min=eps))
    loss = los_pos + los_neg
    if gamma_neg > 0 or gamma_pos > 0:
        if disable_torch_grad_focal_loss:
            torch.set_grad_enabled(False)
        pt0 = xs_pos * y
        pt1 = xs_neg * (1 - y)
        pt = pt0 + pt1
        one_sided_gamma = gamma_pos * y + gamma_neg * (1 - y)
        one_sided_w = torch.pow(1 - pt, one_sided_gamma)
        if disable_torch_grad_focal_loss:
            torch.set_grad_enabled(True)
        loss *= one_sided_w
    return -loss.sum()


def grad_of(fn, logits):
    z = logits.clone().requires_grad_(True)
    fn(z).backward()
    return z.grad


# --------------------------------------------------------------------------------------------------- smoke
@pytest.mark.parametrize("name", MULTILABEL_LOSSES)
def test_smoke_shape_finite_gradients(name):
    loss_fn = build_loss(name, COUNTS, N_IMAGES)
    logits, targets = make_batch()
    logits.requires_grad_(True)
    out = loss_fn.per_sample(logits, targets.bool())
    assert out.shape == (12,) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.mean().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", MULTILABEL_LOSSES)
def test_dtype_follows_logits_and_integer_targets_work(name):
    logits, targets = make_batch(dtype=torch.float64)
    loss_fn = build_loss(name, COUNTS, N_IMAGES)
    out = loss_fn.per_sample(logits, targets.long())
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, loss_fn.per_sample(logits, targets))
    torch.testing.assert_close(loss_fn(logits, targets), out.mean())  # the call is the batch mean


@pytest.mark.parametrize("name", MULTILABEL_LOSSES)
def test_defaults_satisfy_their_annotations(name):
    factory = LOSSES.get(name)
    defaults = {p.name: p.default for p in inspect.signature(factory).parameters.values()
                if p.kind is p.KEYWORD_ONLY}
    build_loss(name, COUNTS, N_IMAGES, **defaults)


# --------------------------------------------------------------------------------------------------- each loss
def test_bce_batch_mean_is_torch_bce():
    logits, targets = make_batch()
    got = build_loss("bce", COUNTS, N_IMAGES)(logits, targets)
    torch.testing.assert_close(got, F.binary_cross_entropy_with_logits(logits, targets))


def test_focal_bce_is_torchvision_sigmoid_focal_loss():
    logits, targets = make_batch()
    got = build_loss("focal_bce", COUNTS, N_IMAGES, gamma=2.0, alpha=0.25)
    reference = sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0, reduction="none").mean(dim=1)
    torch.testing.assert_close(got.per_sample(logits, targets), reference)


def test_focal_bce_hand_values():
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = []
    for row, ys in zip(logits.tolist(), targets.tolist()):
        terms = []
        for z, y in zip(row, ys):
            p = 1 / (1 + math.exp(-z))
            p_t = p if y else 1 - p
            terms.append(-((1 - p_t) ** 1.5) * math.log(p_t))
        expected.append(sum(terms) / 2)
    got = build_loss("focal_bce", [3, 3], 4, gamma=1.5, alpha=None).per_sample(logits, targets)
    torch.testing.assert_close(got, torch.tensor(expected))


def test_cb_bce_weights_columns_by_effective_number():
    logits, targets = make_batch()
    beta = 0.99
    raw = torch.tensor([(1 - beta) / (1 - beta ** n) for n in COUNTS])
    weights = raw / raw.sum() * C
    expected = (weights * F.binary_cross_entropy_with_logits(logits, targets, reduction="none")).mean(dim=1)
    torch.testing.assert_close(build_loss("cb_bce", COUNTS, N_IMAGES, beta=beta).per_sample(logits, targets),
                               expected)
    # beta = 0 gives w = 1: plain BCE
    torch.testing.assert_close(build_loss("cb_bce", COUNTS, N_IMAGES, beta=0.0).per_sample(logits, targets),
                               build_loss("bce", COUNTS, N_IMAGES).per_sample(logits, targets))


@pytest.mark.parametrize("params", [
    dict(),  # the VOC-LT config
    dict(mu=0.2, lam=2.0),  # the COCO-LT config
    dict(alpha=0.3, beta=4.0, mu=0.1, kappa=0.2, lam=1.5, gamma=0.5, balance_param=1.0),
])
def test_db_matches_resample_loss_values_and_gradients(params):
    cfg = dict(alpha=0.1, beta=10.0, mu=0.3, kappa=0.05, lam=5.0, gamma=2.0, balance_param=2.0) | params
    logits, targets = make_batch()  # float32 throughout, as the code's .float() casts make it
    loss_fn = build_loss("db", COUNTS, N_IMAGES, **params)

    def reference(z):
        return resample_loss_reference(
            z, targets, torch.tensor(COUNTS).float(), torch.tensor(float(N_IMAGES)), map_alpha=cfg["alpha"],
            map_beta=cfg["beta"], map_gamma=cfg["mu"], init_bias=cfg["kappa"], neg_scale=cfg["lam"],
            gamma=cfg["gamma"], balance_param=cfg["balance_param"], loss_weight=1.0)

    element, mean = reference(logits)
    torch.testing.assert_close(loss_fn.elementwise(logits, targets), element)
    torch.testing.assert_close(loss_fn(logits, targets), mean)  # the batch mean is the trained value
    torch.testing.assert_close(grad_of(lambda z: loss_fn(z, targets), logits),
                               grad_of(lambda z: reference(z)[1], logits))


def test_db_hand_value_of_one_element():
    # one image with labels {0, 1}; counts n = (4, 2, 1), N = 8; element (image 0, class 2), a negative
    alpha, beta, mu, kappa, lam, gamma = 0.1, 10.0, 0.3, 0.05, 5.0, 2.0
    z = 0.7
    r = (1 / 1) / (1 / 4 + 1 / 2)
    w = alpha + 1 / (1 + math.exp(-beta * (r - mu)))
    b = -(kappa / lam) * math.log(8 / 1 - 1)
    z_neg = lam * (z + b)
    bce = math.log(1 + math.exp(z_neg))
    p_t = math.exp(-bce)
    expected = 2.0 * (1 - p_t) ** gamma * (w / lam) * bce
    loss_fn = build_loss("db", [4, 2, 1], 8)
    got = loss_fn.elementwise(torch.tensor([[0.0, 0.0, z]], dtype=torch.float64),
                              torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64))[0, 2]
    assert math.isclose(float(got), expected, rel_tol=1e-12)


def test_db_with_equal_weights_and_no_regularisation_is_focal_bce():
    # beta 0 -> sigmoid(0) = 0.5, alpha 0.5 -> w = 1; kappa 0 -> b = 0; lam 1 -> negatives untouched
    logits, targets = make_batch()
    db = build_loss("db", COUNTS, N_IMAGES, alpha=0.5, beta=0.0, kappa=0.0, lam=1.0, gamma=2.0,
                               balance_param=1.0)
    focal = build_loss("focal_bce", COUNTS, N_IMAGES, gamma=2.0, alpha=None)
    torch.testing.assert_close(db.per_sample(logits, targets), focal.per_sample(logits, targets))


def test_db_defaults_are_the_voc_config():
    defaults = {p.name: p.default for p in inspect.signature(LOSSES.get("db")).parameters.values()
                if p.kind is p.KEYWORD_ONLY}
    assert defaults == dict(alpha=0.1, beta=10.0, mu=0.3, kappa=0.05, lam=5.0, gamma=2.0, balance_param=2.0)


def test_db_needs_every_class_in_some_but_not_all_images():
    with pytest.raises(ConfigError, match="class 1 is in 0 of 10"):
        build_loss("db", [5, 0, 2], 10)
    with pytest.raises(ConfigError, match="class 0 is in 10 of 10"):
        build_loss("db", [10, 3, 2], 10)
    logits, targets = make_batch()
    build_loss("db", [N_IMAGES] + COUNTS[1:], N_IMAGES, kappa=0.0)(logits, targets)  # no bias: fine


@pytest.mark.parametrize("params", [dict(), dict(gamma_pos=1.0), dict(gamma_pos=0.5, gamma_neg=2.0, clip=0.2),
                                    dict(gamma_pos=0.0, gamma_neg=0.0, clip=0.0)])
def test_asl_matches_asymmetric_loss_values_and_gradients(params):
    cfg = dict(gamma_pos=0.0, gamma_neg=4.0, clip=0.05) | params  # ASL's train.py setting
    logits, targets = make_batch(dtype=torch.float64)
    logits[0, 0] = 25.0  # past the 1e-8 clamp on both sides
    logits[1, 1] = -25.0
    loss_fn = build_loss("asl", COUNTS, N_IMAGES, **params)

    def reference(z):
        return asymmetric_loss_reference(z, targets, **cfg)

    torch.testing.assert_close(loss_fn.per_sample(logits, targets).sum(), reference(logits))  # ASL sums over the batch
    torch.testing.assert_close(grad_of(lambda z: loss_fn.per_sample(z, targets).sum(), logits), grad_of(reference, logits))


def test_asl_without_focusing_or_clip_is_bce_summed_over_classes():
    logits, targets = make_batch()
    got = build_loss("asl", COUNTS, N_IMAGES, gamma_pos=0.0, gamma_neg=0.0, clip=0.0).per_sample(logits, targets)
    torch.testing.assert_close(got, F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1))


def test_asl_hand_value():
    # positive at p = sigmoid(1), negative at p = sigmoid(0.5) with clip 0.05
    p1, p2 = 1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(-0.5))
    p_m = max(p2 - 0.05, 0)
    expected = -((1 - p1) ** 1.0 * math.log(p1) + p_m ** 4.0 * math.log(1 - p_m))
    got = build_loss("asl", [1, 1], 2, gamma_pos=1.0)(torch.tensor([[1.0, 0.5]]), torch.tensor([[1, 0]]))
    assert math.isclose(float(got), expected, rel_tol=1e-6)


# --------------------------------------------------------------------------------------------------- errors
def test_registry_and_argument_errors():
    assert MULTILABEL_LOSSES == ["asl", "bce", "cb_bce", "db", "focal_bce"]
    assert not set(MULTILABEL_LOSSES) & set(LOSSES.names("multiclass")), "each loss fits one task"
    with pytest.raises(ConfigError, match="unknown loss 'nope'; valid choices: asl, balanced_softmax, bce"):
        build_loss("nope", COUNTS, N_IMAGES)
    with pytest.raises(ConfigError, match="loss 'focal_bce': beta: unknown key; valid keys: gamma, alpha"):
        build_loss("focal_bce", COUNTS, N_IMAGES, beta=0.9)
    with pytest.raises(ConfigError, match="loss 'focal_bce': gamma: -1: must be >= 0"):
        build_loss("focal_bce", COUNTS, N_IMAGES, gamma=-1)
    with pytest.raises(ConfigError, match="loss 'asl': clip: 2: must be <= 1"):
        build_loss("asl", COUNTS, N_IMAGES, clip=2)
    with pytest.raises(ConfigError, match="loss 'cb_bce': beta: 1.0: must be < 1"):
        build_loss("cb_bce", COUNTS, N_IMAGES, beta=1.0)
    with pytest.raises(ConfigError, match="must not exceed num_images=10"):
        build_loss("bce", [11, 2], 10)
    with pytest.raises(ConfigError, match="num_images must be an integer >= 1"):
        build_loss("bce", [1, 2], 0)


def test_a_mixed_batch_weighs_each_target_by_lam():
    logits, targets = make_batch()
    other = targets.flip(0)
    lam = torch.linspace(0, 1, len(targets))
    loss_fn = build_loss("focal_bce", COUNTS, N_IMAGES)
    expected = (lam * loss_fn.per_sample(logits, targets) + (1 - lam) * loss_fn.per_sample(logits, other)).mean()
    torch.testing.assert_close(loss_fn(logits, targets, None, other, lam), expected)
    torch.testing.assert_close(loss_fn(logits, targets, None, targets, torch.ones(len(targets))),
                               loss_fn(logits, targets))


def test_batch_errors():
    loss_fn = build_loss("bce", COUNTS, N_IMAGES)
    logits, targets = make_batch()
    with pytest.raises(ConfigError, match=r"targets must be a multi-hot \(12, 5\) tensor"):
        loss_fn.per_sample(logits, targets[:, 0].long())
    with pytest.raises(ConfigError, match="every entry 0 or 1"):
        loss_fn.per_sample(logits, 2 * targets)
    with pytest.raises(ConfigError, match=r"logits must be a floating \(N, 5\) tensor"):
        loss_fn.per_sample(logits[:, :3], targets[:, :3])
