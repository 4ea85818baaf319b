"""Long-tailed classification losses, selected by name from params.yaml; each owns the reduction of its batch.

Every loss is an `LTLoss`: softmax cross-entropy on `adjust(logits)` unless it overrides `per_sample`, optionally
with a per-class weight w_y that deferred re-weighting (DRW) switches on at `drw_epoch`. Calling the loss returns the
scalar batch loss the reference code minimises: sum_i w_{y_i} l_i / sum_i w_{y_i} (PyTorch's
`F.cross_entropy(weight=w)`, the LDAM-DRW code) or, for the one-vs-all losses, sum_i w_{y_i} l_i / N. A mixed batch
(y_a, y_b, per-sample lam) gives each target its own normalisation, sum_i lam_i w_{a_i} l_{a_i} / sum_i w_{a_i} +
sum_i (1 - lam_i) w_{b_i} l_{b_i} / sum_i w_{b_i}: the mixup criterion lam L(y_a) + (1 - lam) L(y_b) for a scalar
lam, and the plain mean without weights. Batch-level losses (LADE, GML) split their batch term over the samples so
that the unweighted mean equals the paper's loss.

Classes with no training image (count 0) are allowed and give well-defined values: their prior is clamped
(`ltpipe.priors.log_prior`), their class-balanced weight is 0 and their margin / smoothing is finite. They can never be
a training target, so these values only shape the softmax denominators.
"""
from __future__ import annotations

import math
import numbers
from typing import Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ltpipe.checks import check_choice, check_int, check_real
from ltpipe.errors import ConfigError
from ltpipe.priors import class_prior, log_prior
from ltpipe.registry import Registry
from ltpipe.types import Bool, NonNegFloat, NonNegInt, OpenUnitFloat, PosFloat, UnitFloat

# `num_images` (the number N of training images) is passed to the losses that take it (the multi-label ones).
LOSSES = Registry("loss", fixed=("class_counts", "num_images"), tasks=("multiclass",))
LossName = LOSSES.name_type()


# ----------------------------------------------------------------------------------------------- input validation
def check_class_counts(class_counts) -> torch.Tensor:
    """(C,) float64 training images per class: non-negative integers, at least one class with images."""
    try:
        raw = class_counts.detach().cpu() if isinstance(class_counts, torch.Tensor) else list(class_counts)
        counts = torch.as_tensor(raw, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ConfigError(f"class_counts must be a sequence of non-negative integers, got {class_counts!r}") from err
    if counts.dim() != 1 or counts.numel() == 0:
        raise ConfigError(f"class_counts must be a non-empty 1-D sequence, got shape {tuple(counts.shape)}")
    if not torch.isfinite(counts).all() or (counts < 0).any() or (counts != counts.round()).any():
        raise ConfigError(f"class_counts must be non-negative integers, got {counts.tolist()}")
    if counts.sum() == 0:
        raise ConfigError("class_counts are all 0: at least one class needs training images")
    return counts


def _check_drw_epoch(drw_epoch) -> int | None:
    return check_int("drw_epoch (null: weights from the start)", drw_epoch, 0, allow_none=True)


def _check_target(what: str, target, n: int) -> None:
    if not isinstance(target, torch.Tensor) or target.shape != (n,) or target.is_floating_point() \
            or target.is_complex() or target.dtype == torch.bool:
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ConfigError(f"{what} must be an integer ({n},) tensor of class indices, got {shape}")


def _check_batch(logits, target, features, num_classes: int, needs_features: bool, target_b, lam) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] != num_classes \
            or not logits.is_floating_point():
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"logits must be a floating (N, {num_classes}) tensor, got {shape}")
    n = logits.shape[0]
    _check_target("target", target, n)
    if (target_b is None) != (lam is None):
        raise ConfigError("a mixed batch needs both target_b and lam (or neither)")
    if target_b is not None:
        _check_target("target_b", target_b, n)
        if not isinstance(lam, torch.Tensor) or lam.shape != (n,) or not lam.is_floating_point():
            shape = tuple(lam.shape) if isinstance(lam, torch.Tensor) else type(lam).__name__
            raise ConfigError(f"lam must be a floating ({n},) tensor of the weights of target, got {shape}")
    if needs_features and (not isinstance(features, torch.Tensor) or features.dim() != 2
                           or features.shape[0] != n):
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else features
        raise ConfigError(f"this loss needs the (N={n}, D) features of the batch, got {shape}")


# ------------------------------------------------------------------------------------------------ per-class terms
def class_balanced_weights(class_counts: Sequence[int], beta: float) -> torch.Tensor:
    """Cui et al., "Class-Balanced Loss Based on Effective Number of Samples" (CVPR 2019):
    w_j = (1 - beta) / (1 - beta^n_j), normalised to sum to C; (C,) float64.

    A class with n_j = 0 gets w_j = 0 and the others sum to their number, so beta = 0 gives w_j = 1 wherever n_j > 0.
    """
    counts = check_class_counts(class_counts)
    beta = check_real("beta", beta, low=0.0, high=1.0, include_high=False)
    present = counts > 0
    # 1 - beta^n through expm1: exact for beta close to 1, where 1 - beta^n would cancel catastrophically
    effective = -torch.expm1(counts * math.log(beta)) if beta > 0 else present.double()
    weights = torch.where(present, (1 - beta) / torch.where(present, effective, 1.0), 0.0)
    return weights * (int(present.sum()) / weights.sum())


def ldam_margins(class_counts: Sequence[int], max_m: float) -> torch.Tensor:
    """Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss" (NeurIPS 2019):
    m_j = C' n_j^(-1/4) with C' such that max_j m_j = max_m; (C,) float64, 0 for classes with n_j = 0."""
    counts = check_class_counts(class_counts)
    max_m = check_real("ldam: max_m", max_m, low=0.0)
    present = counts > 0
    raw = torch.where(present, counts.clamp_min(1).pow(-0.25), 0.0)
    return raw * (max_m / raw.max())


def _head_to_tail_position(counts: torch.Tensor) -> torch.Tensor:
    """(n_j - n_min) / (n_max - n_min) over classes with images, clamped to [0, 1]: 1 = most frequent class.

    With equal counts every class counts as a head class (1)."""
    present = counts > 0
    n_max, n_min = counts[present].max(), counts[present].min()
    if n_max == n_min:
        return torch.ones_like(counts)
    return ((counts - n_min) / (n_max - n_min)).clamp(0, 1)


LAS_SHAPES = ("concave", "linear", "convex", "exp")


def las_smoothing(class_counts: Sequence[int], eps_head: float, eps_tail: float, shape: str,
                  power: float) -> torch.Tensor:
    """Zhong et al., "Improving Calibration for Long-Tailed Recognition" (MiSLAS, CVPR 2021):
    eps_j = eps_tail + (eps_head - eps_tail) g(x_j), x_j = (n_j - n_min)/(n_max - n_min), g(x) = sin(pi x / 2)
    (concave), x (linear), 1 - cos(pi x / 2) (convex) or x^power (exp); (C,) float64."""
    counts = check_class_counts(class_counts)
    eps_head = check_real("las: eps_head", eps_head, low=0.0, high=1.0)
    eps_tail = check_real("las: eps_tail", eps_tail, low=0.0, high=1.0)
    check_choice("las: shape", shape, LAS_SHAPES)
    power = check_real("las: power", power, low=0.0, include_low=False)
    x = _head_to_tail_position(counts)
    g = {"concave": lambda: torch.sin(math.pi * x / 2), "linear": lambda: x,
         "convex": lambda: 1 - torch.cos(math.pi * x / 2), "exp": lambda: x.pow(power)}[shape]()
    return eps_tail + (eps_head - eps_tail) * g


def feature_balance_strengths(class_counts: Sequence[int]) -> torch.Tensor:
    """Li et al., "Feature-Balanced Loss for Long-Tailed Visual Recognition" (ICME 2022):
    a_j = (log n_max - log n_j) / (log n_max - log n_min), 0 for the most frequent class, 1 for the rarest;
    (C,) float64. Equal counts give all 0; classes with no image get 1 (as rare as the rarest)."""
    counts = check_class_counts(class_counts)
    present = counts > 0
    log_n = counts.clamp_min(1).log()
    spread = log_n[present].max() - log_n[present].min()
    if spread == 0:
        return torch.where(present, 0.0, 1.0)
    return torch.where(present, (log_n[present].max() - log_n) / spread, 1.0)


# ------------------------------------------------------------------------------------------------------ the losses
class LTLoss(nn.Module):
    """Softmax cross-entropy on `adjust(logits)`: l_i = -log softmax(adjust(z_i))_{y_i}, batch loss
    sum_i w_{y_i} l_i / sum_i w_{y_i} (`F.cross_entropy(adjust(z), y, weight=w)`).

    `class_weights` (C,) are the w_j; with `drw_epoch` set they apply only from that epoch on (deferred re-weighting,
    Cao et al., NeurIPS 2019), before it every w_j = 1. A loss never told the epoch (`set_epoch`) is at epoch 0.
    """

    # None: a linear classifier; s: LDAM's cosine classifier, whose logits are s * cos(x, w_j) (the head scales them)
    cosine_scale: Optional[float] = None
    needs_features: bool = False  # True: per_sample uses the penultimate features
    initial_bias: Optional[float] = None  # the constant the classifier's bias starts at; None: the head's own init
    # True: a weighted batch is normalised by its weight sum (F.cross_entropy(weight=)); False: by the batch size
    normalize_by_weights: bool = True

    def __init__(self, class_counts: Sequence[int], *, class_weights: torch.Tensor | None = None,
                 drw_epoch: int | None = None):
        super().__init__()
        counts = check_class_counts(class_counts)
        # Derived from class_counts, so rebuilt rather than saved.
        self.register_buffer("counts", counts.float(), persistent=False)
        self.register_buffer("class_weights", None if class_weights is None else class_weights.float(),
                             persistent=False)
        self.drw_epoch = _check_drw_epoch(drw_epoch)
        self.epoch, self.total_epochs = 0, None

    @property
    def num_classes(self) -> int:
        return self.counts.numel()

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """Called before each epoch (0-based); DRW and curricula switch here."""
        if isinstance(epoch, bool) or isinstance(total_epochs, bool) or not isinstance(epoch, numbers.Integral) \
                or not isinstance(total_epochs, numbers.Integral) or total_epochs < 1 \
                or not 0 <= epoch <= total_epochs:
            raise ConfigError(f"set_epoch needs integers total_epochs >= 1 and epoch in [0, total_epochs], got "
                              f"epoch={epoch!r}, total_epochs={total_epochs!r}")
        if self.drw_epoch is not None and self.drw_epoch >= total_epochs:
            raise ConfigError(f"drw_epoch={self.drw_epoch} is never reached in {total_epochs} epochs; choose "
                              f"drw_epoch in [0, {total_epochs - 1}] or None")
        self.epoch, self.total_epochs = int(epoch), int(total_epochs)

    def active_class_weights(self) -> torch.Tensor | None:
        """The (C,) weights in force this epoch, or None when every weight is 1."""
        if self.class_weights is None or (self.drw_epoch is not None and self.epoch < self.drw_epoch):
            return None
        return self.class_weights

    def adjust(self, logits: torch.Tensor, target: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        return logits

    def per_sample(self, logits: torch.Tensor, target: torch.Tensor,
                   features: torch.Tensor | None) -> torch.Tensor:
        """(N,) unweighted losses l_i."""
        return F.cross_entropy(self.adjust(logits, target, features), target, reduction="none")

    def _normalised(self, logits, target, features, share) -> torch.Tensor:
        """sum_i share_i w_{y_i} l_i over the batch's normaliser (the weight sum or N)."""
        loss = self.per_sample(logits, target, features)
        weights = self.active_class_weights()
        w = torch.ones_like(loss) if weights is None else weights.to(loss)[target]
        total = (w * loss if share is None else share * w * loss).sum()
        return total / (w.sum() if self.normalize_by_weights else loss.numel())

    def forward(self, logits: torch.Tensor, target: torch.Tensor, features: torch.Tensor | None = None,
                target_b: torch.Tensor | None = None, lam: torch.Tensor | None = None) -> torch.Tensor:
        """The scalar batch loss for logits (N, C), integer targets (N,) and, where used, features (N, D).

        A mixed batch also gives target_b (N,) and lam (N,), the weight of `target` per sample (see the module doc).
        """
        _check_batch(logits, target, features, self.num_classes, self.needs_features, target_b, lam)
        if target_b is None:
            return self._normalised(logits, target.long(), features, None)
        lam = lam.to(logits)
        return (self._normalised(logits, target.long(), features, lam)
                + self._normalised(logits, target_b.long(), features, 1 - lam))


class FocalLoss(LTLoss):
    """Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), softmax form:
    l = -(1 - p_y)^gamma log p_y, batch loss sum_i w_{y_i} l_i / sum_i w_{y_i}."""

    def __init__(self, class_counts: Sequence[int], *, gamma: float = 2.0, class_weights: torch.Tensor | None = None,
                 drw_epoch: int | None = None):
        super().__init__(class_counts, class_weights=class_weights, drw_epoch=drw_epoch)
        self.gamma = check_real("focal: gamma", gamma, low=0.0)

    def per_sample(self, logits, target, features):
        log_p = -F.cross_entropy(logits, target, reduction="none")
        if self.gamma == 0:
            return -log_p
        # expm1 keeps 1 - p accurate near p = 1; the clamp keeps the gradient of (1 - p)^gamma finite for gamma < 1.
        one_minus_p = (-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny)
        return -one_minus_p.pow(self.gamma) * log_p


class SigmoidFocalLoss(LTLoss):
    """Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), one-vs-all (sigmoid) form as Cui et al.
    ("Class-Balanced Loss Based on Effective Number of Samples", CVPR 2019) use it:
    l = sum_j (1 - p_tj)^gamma BCE(z_j, 1[j = y]), p_tj = sigma(z_j) if j = y else 1 - sigma(z_j), batch loss
    sum_i w_{y_i} l_i / N (their code divides by the number of positive labels, one per sample).

    The classifier's bias starts at -log(C - 1), i.e. every sigmoid at the prior 1/C (their model_base.py).
    """

    normalize_by_weights = False

    def __init__(self, class_counts: Sequence[int], *, gamma: float = 1.0, class_weights: torch.Tensor | None = None,
                 drw_epoch: int | None = None):
        super().__init__(class_counts, class_weights=class_weights, drw_epoch=drw_epoch)
        self.gamma = check_real("cb_focal: gamma", gamma, low=0.0)
        if self.num_classes < 2:
            raise ConfigError("cb_focal is one-vs-all over the classes and needs at least 2 of them")

    @property
    def initial_bias(self) -> float:
        return -math.log(self.num_classes - 1)

    def per_sample(self, logits, target, features):
        positive = F.one_hot(target, self.num_classes).to(logits)
        loss = F.binary_cross_entropy_with_logits(logits, positive, reduction="none")
        if self.gamma:
            # (1 - p_t)^gamma = exp(-gamma (y z + log(1 + e^-z))): finite for any logit, and its gradient for gamma < 1
            loss = loss * torch.exp(-self.gamma * (positive * logits + F.softplus(-logits)))
        return loss.sum(1)


class SoftmaxBCELoss(LTLoss):
    """Binary cross-entropy of the softmax probabilities against the one-hot label, averaged over the classes:
    l = -(1/C) sum_j [1[j = y] log p_j + (1 - 1[j = y]) log(1 - p_j)], batch loss sum_i w_{y_i} l_i / N.

    The "softmax" type of the PyTorch class-balanced loss port (vandit15/Class-balanced-loss-pytorch) that the
    weight-balancing code (Alshammari et al., CVPR 2022) trains its second stage with.
    """

    normalize_by_weights = False

    def per_sample(self, logits, target, features):
        positive = F.one_hot(target, self.num_classes).to(logits)
        return F.binary_cross_entropy(torch.softmax(logits, dim=1), positive, reduction="none").mean(1)


class LogitAdjustedLoss(LTLoss):
    """Menon et al., "Long-tail learning via logit adjustment" (ICLR 2021): l = CE(z + tau log pi, y)."""

    def __init__(self, class_counts: Sequence[int], *, tau: float = 1.0):
        super().__init__(class_counts)
        self.tau = check_real("logit_adjust: tau", tau, low=0.0)
        self.register_buffer("offset", self.tau * log_prior(self.counts.tolist()), persistent=False)

    def adjust(self, logits, target, features):
        return logits + self.offset.to(logits) if self.tau else logits


class LDAMLoss(LTLoss):
    """Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss" (NeurIPS 2019):
    l = -log softmax(s (cos - m_y 1_y))_y with cos_j = cos(x, w_j) and m_j proportional to n_j^(-1/4).

    Its logits are the cosine head's z = s cos (`cosine_scale` = s), so the loss is CE(z - s m_y 1_y, y): the same
    number as the reference's CE(s (cos - m_y 1_y), y), with softmax(z) the model's probability at test time."""

    def __init__(self, class_counts: Sequence[int], *, max_m: float = 0.5, s: float = 30.0,
                 class_weights: torch.Tensor | None = None, drw_epoch: int | None = None):
        super().__init__(class_counts, class_weights=class_weights, drw_epoch=drw_epoch)
        self.s = check_real("ldam: s", s, low=0.0, include_low=False)
        self.register_buffer("margins", ldam_margins(self.counts.tolist(), max_m).float(), persistent=False)

    @property
    def cosine_scale(self) -> float:
        return self.s

    def adjust(self, logits, target, features):
        margin = self.s * self.margins.to(logits)[target]
        return logits.scatter_add(1, target[:, None], -margin[:, None])


class LADELoss(LogitAdjustedLoss):
    """Hong et al., "Disentangling Label Distribution for Long-tailed Visual Recognition" (CVPR 2021):
    L = CE(z + log pi, y) + alpha * L_LADER, L_LADER = -sum_c pi_c [mean_{i: y_i=c} z_ic - T_c - lambda T_c^2],
    T_c = log mean_i exp(z_ic - log pi_c + log(1/C)) (the ReMINE lower bound, as in the authors' code)."""

    def __init__(self, class_counts: Sequence[int], *, alpha: float = 0.1, remine_lambda: float = 0.1):
        super().__init__(class_counts, tau=1.0)
        self.alpha = check_real("lade: alpha", alpha, low=0.0)
        self.remine_lambda = check_real("lade: remine_lambda", remine_lambda, low=0.0)
        self.register_buffer("prior", class_prior(self.counts.tolist()), persistent=False)

    def regulariser(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The batch-level L_LADER (a scalar)."""
        n, c = logits.shape
        batch_counts = torch.bincount(target, minlength=c).to(logits.dtype)
        own = logits.gather(1, target[:, None]).squeeze(1)
        # Classes absent from the batch have no first term (0), as in the authors' code.
        first = torch.zeros_like(batch_counts).index_add(0, target, own) / batch_counts.clamp_min(1)
        second = torch.logsumexp(logits - self.offset.to(logits) - math.log(c), dim=0) - math.log(n)
        estimate = first - second - self.remine_lambda * second.square()
        return -(self.prior.to(logits) * estimate).sum()

    def per_sample(self, logits, target, features):
        # Every sample carries the full batch term, so the unweighted mean is CE.mean() + alpha * L_LADER.
        return super().per_sample(logits, target, features) + self.alpha * self.regulariser(logits, target)


class GMLLoss(LTLoss):
    """Du & Wu, "No One Left Behind: Improving the Worst Categories in Long-Tailed Learning" (CVPR 2023,
    arXiv 2303.03630): L = -(1/K) sum_c log( mean_{i: y_i=c} p~_ic ), p~ = softmax(z + log n) clamped to [1e-5, 1],
    over the K classes in the batch (the log of the geometric mean of the per-class mean probabilities).

    The paper has no code release; this follows its authors' group's implementation (yuhao318/BTM methods.py,
    ReweightedGMLLogAfterMean with p = 1), whose clamp also stops the gradient of samples with p~ < 1e-5.
    The batch term is split over samples: a sample of class c carries N / (K n_c) times its class's term, so the
    batch mean is exactly L.
    """

    min_probability = 1e-5

    def __init__(self, class_counts: Sequence[int]):
        super().__init__(class_counts)
        self.register_buffer("log_prior", log_prior(self.counts.tolist()), persistent=False)

    def per_sample(self, logits, target, features):
        n, c = logits.shape
        # p~_{i, y_i}; log pi and log n differ by a constant that the softmax ignores
        p = torch.softmax(logits + self.log_prior.to(logits), dim=1).gather(1, target[:, None]).squeeze(1)
        p = p.clamp(self.min_probability, 1.0)
        class_sizes = torch.bincount(target, minlength=c)
        batch_counts = class_sizes[target].to(logits.dtype)
        class_means = torch.zeros(c, dtype=logits.dtype, device=logits.device).index_add(0, target, p)[target]
        classes_in_batch = (class_sizes > 0).sum()
        return -(class_means / batch_counts).log() * (n / (classes_in_batch * batch_counts))


class FeatureBalancedLoss(LTLoss):
    """Li et al., "Feature-Balanced Loss for Long-Tailed Visual Recognition" (ICME 2022):
    l = CE(z - lam * t * a / ||f||, y), a_j = (log n_max - log n_j) / (log n_max - log n_min),
    t = (epoch / (T - full_before_end))^2.

    The class term grows with the parabolic curriculum t (at epoch 0 the loss is CE): as in the authors' train.py
    (`curr = (epoch / (args.epochs - 10)) ** 2`, 0-based epochs) it reaches 1 `full_before_end` epochs before the
    end and keeps growing past 1 after that. `curriculum=False` keeps t = 1.
    """

    needs_features = True

    def __init__(self, class_counts: Sequence[int], *, lam: float = 60.0, curriculum: bool = True,
                 full_before_end: int = 10):
        super().__init__(class_counts)
        self.lam = check_real("feabal: lam", lam, low=0.0)
        if not isinstance(curriculum, bool):
            raise ConfigError(f"feabal: curriculum must be true or false, got {curriculum!r}")
        if isinstance(full_before_end, bool) or not isinstance(full_before_end, numbers.Integral) \
                or full_before_end < 0:
            raise ConfigError(f"feabal: full_before_end must be an integer >= 0, got {full_before_end!r}")
        self.curriculum, self.full_before_end = curriculum, int(full_before_end)
        self.register_buffer("strengths", feature_balance_strengths(self.counts.tolist()).float(), persistent=False)

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        super().set_epoch(epoch, total_epochs)
        if self.curriculum and self.full_before_end >= total_epochs:
            raise ConfigError(f"feabal: full_before_end={self.full_before_end} leaves no epoch for the curriculum in "
                              f"{total_epochs} epochs; choose full_before_end in [0, {total_epochs - 1}]")

    def stimulus(self) -> float:
        """lam * t for the current epoch."""
        if not self.curriculum:
            return self.lam
        if not self.total_epochs:
            return 0.0
        return self.lam * (self.epoch / (self.total_epochs - self.full_before_end)) ** 2

    def adjust(self, logits, target, features):
        norm = features.to(logits).norm(dim=1, keepdim=True).clamp_min(1e-12)
        return logits - self.stimulus() * self.strengths.to(logits) / norm


class LabelAwareSmoothing(LTLoss):
    """Zhong et al., "Improving Calibration for Long-Tailed Recognition" (MiSLAS, CVPR 2021):
    l = -(1 - eps_y) log p_y - eps_y (1/C) sum_j log p_j, with eps_y from `las_smoothing`."""

    def __init__(self, class_counts: Sequence[int], *, eps_head: float = 0.4, eps_tail: float = 0.1,
                 shape: str = "concave", power: float = 2.0):
        super().__init__(class_counts)
        smoothing = las_smoothing(self.counts.tolist(), eps_head, eps_tail, shape, power)
        self.register_buffer("smoothing", smoothing.float(), persistent=False)

    def per_sample(self, logits, target, features):
        log_p = F.log_softmax(logits, dim=1)
        eps = self.smoothing.to(logits)[target]
        return -(1 - eps) * log_p.gather(1, target[:, None]).squeeze(1) - eps * log_p.mean(dim=1)


# --------------------------------------------------------------------------------------------------- the registry
@LOSSES.register("ce")
def cross_entropy(class_counts: Sequence[int]) -> LTLoss:
    """Softmax cross-entropy: l = -log softmax(z)_y."""
    return LTLoss(class_counts)


@LOSSES.register("focal")
def focal(class_counts: Sequence[int], *, gamma: NonNegFloat = 2.0) -> LTLoss:
    """Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), softmax form: l = -(1 - p_y)^gamma log p_y."""
    return FocalLoss(class_counts, gamma=gamma)


@LOSSES.register("cb_ce")
def cb_ce(class_counts: Sequence[int], *, beta: OpenUnitFloat = 0.9999,
          drw_epoch: Optional[NonNegInt] = None) -> LTLoss:
    """Cui et al., "Class-Balanced Loss Based on Effective Number of Samples" (CVPR 2019), softmax form:
    L = sum_i w_{y_i} CE(z_i, y_i) / sum_i w_{y_i}, w_j = (1 - beta) / (1 - beta^n_j) normalised to sum C.

    With drw_epoch set the weights apply from that epoch on (CE-DRW of the LDAM-DRW paper). The batch is normalised
    as `F.cross_entropy(weight=w)` (the LDAM-DRW code); the CB authors' TensorFlow code divides by N instead.
    """
    return LTLoss(class_counts, class_weights=class_balanced_weights(class_counts, beta), drw_epoch=drw_epoch)


@LOSSES.register("cb_focal")
def cb_focal(class_counts: Sequence[int], *, beta: OpenUnitFloat = 0.9999, gamma: NonNegFloat = 1.0,
             drw_epoch: Optional[NonNegInt] = None) -> LTLoss:
    """Cui et al., "Class-Balanced Loss Based on Effective Number of Samples" (CVPR 2019), the paper's class-balanced
    (sigmoid) focal loss: L = (1/N) sum_i w_{y_i} sum_j (1 - p_tij)^gamma BCE(z_ij, 1[j = y_i]), w_j as in cb_ce.

    The classifier bias starts at -log(C - 1); predictions stay argmax_j z_j. gamma 1.0 is the value of the authors'
    CIFAR script (their ImageNet / iNaturalist runs use beta 0.999, gamma 0.5). DRW from drw_epoch when set.
    """
    return SigmoidFocalLoss(class_counts, gamma=gamma, class_weights=class_balanced_weights(class_counts, beta),
                            drw_epoch=drw_epoch)


@LOSSES.register("cb_focal_softmax")
def cb_focal_softmax(class_counts: Sequence[int], *, beta: OpenUnitFloat = 0.9999, gamma: NonNegFloat = 2.0,
                     drw_epoch: Optional[NonNegInt] = None) -> LTLoss:
    """Class-balanced weights (Cui et al., CVPR 2019) on the softmax focal loss (Lin et al., ICCV 2017), not the
    paper's sigmoid form: L = sum_i w_{y_i} (1 - p_{y_i})^gamma (-log p_{y_i}) / sum_i w_{y_i}; DRW when set."""
    return FocalLoss(class_counts, gamma=gamma, class_weights=class_balanced_weights(class_counts, beta),
                     drw_epoch=drw_epoch)


@LOSSES.register("cb_softmax_bce")
def cb_softmax_bce(class_counts: Sequence[int], *, beta: OpenUnitFloat = 0.9999,
                   drw_epoch: Optional[NonNegInt] = None) -> LTLoss:
    """The class-balanced "softmax" loss of the PyTorch CB port that weight balancing (Alshammari et al., CVPR 2022)
    uses in stage 2: L = (1/N) sum_i w_{y_i} mean_j BCE(softmax(z_i)_j, 1[j = y_i]), w_j as in cb_ce."""
    return SoftmaxBCELoss(class_counts, class_weights=class_balanced_weights(class_counts, beta), drw_epoch=drw_epoch)


LDAM_REWEIGHTS = ("none", "cb")


@LOSSES.register("ldam")
def ldam(class_counts: Sequence[int], *, max_m: NonNegFloat = 0.5, s: PosFloat = 30.0,
         reweight: Literal["none", "cb"] = "none", beta: OpenUnitFloat = 0.9999,
         drw_epoch: Optional[NonNegInt] = None) -> LTLoss:
    """Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss" (NeurIPS 2019):
    L = sum_i w_{y_i} CE(s (z_i - m_{y_i} 1_{y_i}), y_i) / sum_i w_{y_i} on cosine logits z (NormedLinear),
    m_j proportional to n_j^(-1/4), max_j m_j = max_m.

    reweight="cb" uses the class-balanced weights (beta); with drw_epoch set this is LDAM-DRW.
    """
    check_choice("ldam: reweight", reweight, LDAM_REWEIGHTS)
    if reweight == "none" and drw_epoch is not None:
        raise ConfigError("ldam: drw_epoch defers class weights, but reweight='none' has none; "
                          "set reweight='cb' (LDAM-DRW) or drw_epoch=None")
    weights = class_balanced_weights(class_counts, beta) if reweight == "cb" else None
    return LDAMLoss(class_counts, max_m=max_m, s=s, class_weights=weights, drw_epoch=drw_epoch)


@LOSSES.register("balanced_softmax")
def balanced_softmax(class_counts: Sequence[int]) -> LTLoss:
    """Ren et al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition" (NeurIPS 2020): l = CE(z + log n, y)."""
    return LogitAdjustedLoss(class_counts, tau=1.0)


@LOSSES.register("logit_adjust")
def logit_adjust(class_counts: Sequence[int], *, tau: NonNegFloat = 1.0) -> LTLoss:
    """Menon et al., "Long-tail learning via logit adjustment" (ICLR 2021): l = CE(z + tau log pi, y)."""
    return LogitAdjustedLoss(class_counts, tau=tau)


@LOSSES.register("lade")
def lade(class_counts: Sequence[int], *, alpha: NonNegFloat = 0.1, remine_lambda: NonNegFloat = 0.1) -> LTLoss:
    """Hong et al., "Disentangling Label Distribution for Long-tailed Visual Recognition" (CVPR 2021):
    L = CE(z + log pi, y) + alpha * L_LADER (ReMINE regulariser with weight remine_lambda)."""
    return LADELoss(class_counts, alpha=alpha, remine_lambda=remine_lambda)


@LOSSES.register("gml")
def gml(class_counts: Sequence[int]) -> LTLoss:
    """Du & Wu, "No One Left Behind: Improving the Worst Categories in Long-Tailed Learning" (CVPR 2023,
    arXiv 2303.03630): L = -(1/K) sum_c log mean_{i: y_i=c} softmax(z_i + log n)_c."""
    return GMLLoss(class_counts)


@LOSSES.register("feabal")
def feabal(class_counts: Sequence[int], *, lam: NonNegFloat = 60.0, curriculum: Bool = True,
           full_before_end: NonNegInt = 10) -> LTLoss:
    """Li et al., "Feature-Balanced Loss for Long-Tailed Visual Recognition" (ICME 2022):
    l = CE(z - lam (epoch/(T - full_before_end))^2 a / ||f||, y), a_j = (log n_max - log n_j) / (log n_max - log n_min).
    """
    return FeatureBalancedLoss(class_counts, lam=lam, curriculum=curriculum, full_before_end=full_before_end)


@LOSSES.register("las")
def las(class_counts: Sequence[int], *, eps_head: UnitFloat = 0.4, eps_tail: UnitFloat = 0.1,
        shape: Literal["concave", "linear", "convex", "exp"] = "concave", power: PosFloat = 2.0) -> LTLoss:
    """Zhong et al., "Improving Calibration for Long-Tailed Recognition" (MiSLAS, CVPR 2021), label-aware smoothing:
    l = -(1 - eps_y) log p_y - eps_y mean_j log p_j, eps_j from eps_tail (rarest) to eps_head (most frequent)."""
    return LabelAwareSmoothing(class_counts, eps_head=eps_head, eps_tail=eps_tail, shape=shape, power=power)


def build_loss(name: str, class_counts: Sequence[int], num_images: Optional[int] = None, **params) -> nn.Module:
    """Loss `name` from LOSSES; unknown names or parameters raise ConfigError listing the valid ones.

    `num_images` (N, default sum(class_counts), right for one label per image) reaches the losses that use it."""
    if num_images is None:
        num_images = int(check_class_counts(class_counts).sum())
    return LOSSES.build(name, class_counts, num_images=num_images, **params)


# Registered in LOSSES on import (the multi-label losses: bce, focal_bce, cb_bce, db, asl).
from ltpipe.multilabel import losses as _multilabel_losses  # noqa: E402,F401
