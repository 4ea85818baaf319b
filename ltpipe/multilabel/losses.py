"""Multi-label losses on logits (N, C) and multi-hot targets (N, C), registered in `ltpipe.losses.LOSSES` for the
multilabel task (so `loss:` and `stage2.<method>.loss` select them by name like any loss).

Every loss computes an element-wise binary loss e_ij (`elementwise`) and per-sample values l_i = mean_j e_ij or
sum_j e_ij (`class_reduction`, `per_sample`); calling the loss returns the batch mean of l, the scalar the training
loops minimise. The DB code averages over all N*C elements (mmcv's parse_losses takes .mean() of the unreduced
ResampleLoss output), as torch's BCEWithLogitsLoss does by default: the batch mean of l_i = mean_j e_ij is that value.
ASL sums over all elements (`-loss.sum()` in Alibaba-MIIL/ASL): its l_i sums over classes and the reference value is
B times the batch mean trained here (B the batch size; Adam, ASL's optimizer, is invariant to that factor, SGD takes
it as a B-times larger learning rate).

Factories take `(class_counts, num_images, *, kwargs)`: class_counts[j] is the number of training images holding
class j (an image with k labels counts in k classes), num_images the number N of training images.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ltpipe.errors import ConfigError
from ltpipe.losses import LOSSES, check_class_counts, class_balanced_weights
from ltpipe.types import Float, NonNegFloat, OpenUnitFloat, PosFloat, UnitFloat

MULTILABEL = ("multilabel",)
# ASL's clamp on probabilities before the log (AsymmetricLoss eps): it caps each term at -log(1e-8) ~ 18.4.
ASL_EPS = 1e-8


def _one_minus_p_t(bce: torch.Tensor) -> torch.Tensor:
    """1 - p_t = 1 - exp(-BCE) for either label; -expm1 stays accurate as p_t -> 1 and the clamp keeps the gradient of
    (1 - p_t)^gamma finite for gamma < 1."""
    return (-torch.expm1(-bce)).clamp_min(torch.finfo(bce.dtype).tiny)


class MultiLabelLoss(nn.Module):
    """Base: per-sample l_i = reduce_j e_ij of `elementwise` (plain BCE here) under `class_reduction`; the call
    returns the batch mean of l, with the call signature and attributes of `ltpipe.losses.LTLoss`."""

    class_reduction: str = "mean"
    # The attributes training loops read from every loss: a linear classifier with its own bias init, no features.
    needs_features: bool = False
    cosine_scale = None
    initial_bias = None

    def __init__(self, class_counts: Sequence[int], num_images: int):
        super().__init__()
        counts = check_class_counts(class_counts)
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ConfigError(f"num_images must be an integer >= 1 (the number of training images), got "
                              f"{num_images!r}")
        if counts.max() > num_images:
            raise ConfigError(f"class_counts must not exceed num_images={num_images} (a class is held by at most "
                              f"every image), got max {int(counts.max())}")
        # Derived from class_counts, so rebuilt rather than saved.
        self.register_buffer("counts", counts, persistent=False)
        self.num_images = num_images

    @property
    def num_classes(self) -> int:
        return self.counts.numel()

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        """No multi-label loss changes over training; kept so epoch-driven loops can call it."""

    def elementwise(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N, C) element losses e_ij; `targets` is already a 0/1 tensor of the logits' dtype."""
        return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")

    def forward(self, logits: torch.Tensor, target: torch.Tensor, features: torch.Tensor | None = None,
                target_b: torch.Tensor | None = None, lam: torch.Tensor | None = None) -> torch.Tensor:
        """The scalar batch loss mean_i l_i. A mixed batch (target_b, per-sample lam (N,)) gives
        mean_i [lam_i l_i(target) + (1 - lam_i) l_i(target_b)]; an unmixed one passes target_b = target or None."""
        loss = self.per_sample(logits, target)
        if target_b is not None and target_b is not target:
            lam = lam.to(loss)
            loss = lam * loss + (1 - lam) * self.per_sample(logits, target_b)
        return loss.mean()

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N,) per-sample losses for logits (N, C) and multi-hot targets (N, C) (bool, integer or 0/1 float)."""
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[1] != self.num_classes \
                or not logits.is_floating_point():
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ConfigError(f"logits must be a floating (N, {self.num_classes}) tensor, got {shape}")
        if not isinstance(targets, torch.Tensor) or targets.shape != logits.shape:
            shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise ConfigError(f"targets must be a multi-hot {tuple(logits.shape)} tensor, got {shape}")
        targets = targets.to(logits.dtype)
        if ((targets != 0) & (targets != 1)).any():
            raise ConfigError("targets must be multi-hot: every entry 0 or 1")
        element = self.elementwise(logits, targets)
        return element.mean(dim=1) if self.class_reduction == "mean" else element.sum(dim=1)


class FocalBCE(MultiLabelLoss):
    """Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), sigmoid form:
    e = -alpha_t (1 - p_t)^gamma log p_t, p_t = p if y = 1 else 1 - p, alpha_t = alpha if y = 1 else 1 - alpha.

    alpha=None weighs both sides 1; `class_weights` (C,), when given, multiply column j (class-balanced focal).
    """

    def __init__(self, class_counts: Sequence[int], num_images: int, *, gamma: float, alpha: float | None,
                 class_weights: torch.Tensor | None = None):
        super().__init__(class_counts, num_images)
        self.gamma, self.alpha = gamma, alpha
        self.register_buffer("class_weights", class_weights, persistent=False)

    def elementwise(self, logits, targets):
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        loss = _one_minus_p_t(bce).pow(self.gamma) * bce if self.gamma else bce
        if self.alpha is not None:
            loss = (self.alpha * targets + (1 - self.alpha) * (1 - targets)) * loss
        return loss if self.class_weights is None else loss * self.class_weights.to(loss)


class DistributionBalancedLoss(MultiLabelLoss):
    """Wu et al., "Distribution-Balanced Loss for Multi-Label Classification in Long-Tailed Datasets" (ECCV 2020),
    exactly as ResampleLoss (reweight_func='rebalance', focal, logit_reg) of wutong16/DistributionBalancedLoss:

        r_ij = (1/n_j) / sum_k y_ik / n_k,   w_ij = alpha + sigmoid(beta (r_ij - mu))     (re-balanced weighting)
        b_j = -(kappa / lam) log(N / n_j - 1),   z'_ij = z_ij + b_j if y_ij else lam (z_ij + b_j),
        w'_ij = w_ij if y_ij else w_ij / lam                                        (negative-tolerant regularisation)
        e_ij = balance_param (1 - p'_ij)^gamma w'_ij BCE(z'_ij, y_ij),  p'_ij = exp(-BCE(z'_ij, y_ij))   (focal)

    r_ij is defined for every class j, positive or negative, as in the code. b_j is a fixed offset inside the loss
    only (named init_bias in the code, it is never a learned parameter), so predictions use the raw logits z. The
    focal factor is not detached. The code's loss_weight (1.0 in both configs) is folded into balance_param.
    """

    def __init__(self, class_counts: Sequence[int], num_images: int, *, alpha: float, beta: float, mu: float,
                 kappa: float, lam: float, gamma: float, balance_param: float):
        super().__init__(class_counts, num_images)
        n = self.counts
        if (n == 0).any() or (kappa > 0 and (n == num_images).any()):
            bad = int(torch.nonzero((n == 0) | (n == num_images))[0])
            raise ConfigError(f"db: class {bad} is in {int(n[bad])} of {num_images} training images; the "
                              f"re-balancing weight needs every class in at least one image and the regularisation "
                              f"bias -kappa log(N/n - 1) a class missing from at least one (or kappa=0)")
        self.alpha, self.beta, self.mu, self.lam, self.gamma, self.balance_param = \
            alpha, beta, mu, lam, gamma, balance_param
        bias = -(kappa / lam) * torch.log(num_images / n - 1) if kappa > 0 else torch.zeros_like(n)
        self.register_buffer("bias", bias, persistent=False)

    def elementwise(self, logits, targets):
        inv = 1.0 / self.counts.to(logits)
        # a target row with no label has sum 0 and r = inf: w = alpha + 1, the code's value
        r = inv / (targets * inv).sum(dim=1, keepdim=True)
        weight = self.alpha + torch.sigmoid(self.beta * (r - self.mu))
        shifted = logits + self.bias.to(logits)
        z = torch.where(targets > 0, shifted, self.lam * shifted)
        weight = torch.where(targets > 0, weight, weight / self.lam)
        bce = F.binary_cross_entropy_with_logits(z, targets, reduction="none")
        return self.balance_param * _one_minus_p_t(bce).pow(self.gamma) * weight * bce


class AsymmetricLoss(MultiLabelLoss):
    """Ridnik et al., "Asymmetric Loss For Multi-Label Classification" (ICCV 2021), AsymmetricLoss of
    Alibaba-MIIL/ASL: e = -[y (1-p)^g+ log p + (1-y) p_m^g- log(1-p_m)], p_m = max(p - clip, 0).

    As in the code: probabilities are clamped at 1e-8 before the log, the focusing weights carry no gradient
    (disable_torch_grad_focal_loss=True, its train.py setting) and values are summed over classes (and, in the
    code, over the batch).
    """

    class_reduction = "sum"

    def __init__(self, class_counts: Sequence[int], num_images: int, *, gamma_pos: float, gamma_neg: float,
                 clip: float):
        super().__init__(class_counts, num_images)
        self.gamma_pos, self.gamma_neg, self.clip = gamma_pos, gamma_neg, clip

    def elementwise(self, logits, targets):
        p = torch.sigmoid(logits)
        one_minus_p_m = (1 - p + self.clip).clamp(max=1) if self.clip > 0 else 1 - p
        log_likelihood = targets * p.clamp(min=ASL_EPS).log() + (1 - targets) * one_minus_p_m.clamp(min=ASL_EPS).log()
        if self.gamma_pos == 0 and self.gamma_neg == 0:
            return -log_likelihood
        with torch.no_grad():
            p_t = targets * p + (1 - targets) * one_minus_p_m
            focusing = (1 - p_t).pow(self.gamma_pos * targets + self.gamma_neg * (1 - targets))
        return -log_likelihood * focusing


# --------------------------------------------------------------------------------------------------- the registry
@LOSSES.register("bce", tasks=MULTILABEL)
def bce(class_counts: Sequence[int], num_images: int) -> MultiLabelLoss:
    """Binary cross-entropy on each class's sigmoid: e = -[y log p + (1 - y) log(1 - p)], mean over classes."""
    return MultiLabelLoss(class_counts, num_images)


@LOSSES.register("focal_bce", tasks=MULTILABEL)
def focal_bce(class_counts: Sequence[int], num_images: int, *, gamma: NonNegFloat = 2.0,
              alpha: UnitFloat | None = 0.25) -> MultiLabelLoss:
    """Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017): e = -alpha_t (1 - p_t)^gamma log p_t
    (alpha None: alpha_t = 1), mean over classes."""
    return FocalBCE(class_counts, num_images, gamma=gamma, alpha=alpha)


@LOSSES.register("cb_bce", tasks=MULTILABEL)
def cb_bce(class_counts: Sequence[int], num_images: int, *, beta: OpenUnitFloat = 0.9999,
           gamma: NonNegFloat = 0.0) -> MultiLabelLoss:
    """Cui et al., "Class-Balanced Loss Based on Effective Number of Samples" (CVPR 2019), per class:
    e_ij = w_j (1 - p_t)^gamma BCE_ij, w_j = (1 - beta) / (1 - beta^n_j) normalised to sum C (gamma > 0: CB focal)."""
    return FocalBCE(class_counts, num_images, gamma=gamma, alpha=None,
                    class_weights=class_balanced_weights(class_counts, beta).float())


@LOSSES.register("db", tasks=MULTILABEL)
def db(class_counts: Sequence[int], num_images: int, *, alpha: NonNegFloat = 0.1, beta: NonNegFloat = 10.0,
       mu: Float = 0.3, kappa: NonNegFloat = 0.05, lam: PosFloat = 5.0, gamma: NonNegFloat = 2.0,
       balance_param: PosFloat = 2.0) -> MultiLabelLoss:
    """Wu et al., "Distribution-Balanced Loss for Multi-Label Classification in Long-Tailed Datasets" (ECCV 2020):
    e = 2 (1-p'_t)^2 w' BCE(z', y), w = alpha + sigmoid(beta (r - mu)), r = (1/n_j) / sum_k y_k/n_k, z' negatives
    lam (z + b), b_j = -(kappa/lam) log(N/n_j - 1). Defaults: the VOC-LT config (COCO-LT: mu 0.2, lam 2)."""
    return DistributionBalancedLoss(class_counts, num_images, alpha=alpha, beta=beta, mu=mu, kappa=kappa, lam=lam,
                                    gamma=gamma, balance_param=balance_param)


@LOSSES.register("asl", tasks=MULTILABEL)
def asl(class_counts: Sequence[int], num_images: int, *, gamma_pos: NonNegFloat = 0.0, gamma_neg: NonNegFloat = 4.0,
        clip: UnitFloat = 0.05) -> MultiLabelLoss:
    """Ridnik et al., "Asymmetric Loss For Multi-Label Classification" (ICCV 2021):
    e = -[y (1-p)^g+ log p + (1-y) p_m^g- log(1-p_m)], p_m = max(p - clip, 0), summed over classes.
    Defaults: the repository's train.py (the class's own default gamma_pos is 1)."""
    return AsymmetricLoss(class_counts, num_images, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)
