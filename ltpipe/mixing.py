"""Batch mixing (mixup family) for stage 1: (x, y) -> (x_mixed, y_a, y_b, lam), lam the per-sample weight of y_a.

Callers combine lam * L(y_a) + (1 - lam) * L(y_b). Each batch is mixed with a partner batch x[perm], perm a
permutation drawn from the caller's torch.Generator, and every random draw comes from that generator, so a batch
mixes the same way for the same generator state.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Annotated, Sequence, Tuple

import numpy as np
import torch
from pydantic import Field

from ltpipe.errors import ConfigError
from ltpipe.checks import check_real
from ltpipe.losses import check_class_counts
from ltpipe.registry import Registry
from ltpipe.types import Float, PosFloat, UnitFloat

# Mixing needs one label per image, except the identity (`none`), which every task uses when it does not mix.
MIXERS = Registry("mixer", fixed=("class_counts",), tasks=("multiclass",))

Mixed = Tuple[torch.Tensor, torch.LongTensor, torch.LongTensor, torch.Tensor]


def _check_batch(x, y) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"mixers take images x of shape (B, C, H, W), got {shape}")
    if not isinstance(y, torch.Tensor) or y.shape != x.shape[:1] or y.is_floating_point() or y.dtype == torch.bool:
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ConfigError(f"mixers take integer labels y of shape ({x.shape[0]},), got {shape}")


def _seed(generator: torch.Generator) -> int:
    """A 63-bit seed drawn from `generator`, for the numpy code that needs one."""
    return int(torch.randint(0, 2 ** 63 - 1, (1,), generator=generator, device=generator.device))


def _beta(alpha: float, generator: torch.Generator) -> float:
    """lam ~ Beta(alpha, alpha), rounded to float32 so the returned lam is exactly the one that mixed the images."""
    # torch's Beta sampler has no generator argument; a numpy Generator seeded from ours keeps the draw reproducible.
    return float(np.float32(np.random.default_rng(_seed(generator)).beta(alpha, alpha)))


@contextmanager
def _numpy_global_seed(seed: int):
    """timm's box sampler draws from numpy's global RNG: seed it for one call and put the caller's state back."""
    state = np.random.get_state()
    np.random.seed(seed % 2 ** 32)
    try:
        yield
    finally:
        np.random.set_state(state)


def _lam_vector(lam: float, y: torch.Tensor) -> torch.Tensor:
    return torch.full(y.shape, lam, dtype=torch.float32, device=y.device)


class Mixer:
    """No mixing: returns (x, y, y, 1), for labels of any format (class indices or multi-hot rows)."""

    def __init__(self, class_counts: Sequence[int]):
        self.counts = check_class_counts(class_counts)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> Mixed:
        if not isinstance(y, torch.Tensor) or not isinstance(x, torch.Tensor) or y.shape[:1] != x.shape[:1]:
            raise ConfigError("mixers take a batch x and its labels y with one row per image")
        return x, y, y, torch.ones(y.shape[0], dtype=torch.float32, device=y.device)

    def mix(self, x: torch.Tensor, y: torch.LongTensor, generator: torch.Generator) -> Mixed:
        raise NotImplementedError

    @staticmethod
    def partner(y: torch.Tensor, generator: torch.Generator) -> torch.LongTensor:
        """Index of each sample's mixing partner: a permutation of the batch."""
        return torch.randperm(y.numel(), generator=generator, device=generator.device).to(y.device)


class Mixup(Mixer):
    """Zhang et al., "mixup: Beyond Empirical Risk Minimization" (ICLR 2018):
    x = lam x_a + (1 - lam) x_b, label weight lam, lam ~ Beta(alpha, alpha) once per batch."""

    def __init__(self, class_counts: Sequence[int], *, alpha: float = 1.0):
        super().__init__(class_counts)
        self.alpha = check_real(f"{type(self).__name__.lower()}: alpha", alpha, low=0.0, include_low=False)

    def __call__(self, x: torch.Tensor, y: torch.LongTensor, generator: torch.Generator) -> Mixed:
        _check_batch(x, y)
        return self.mix(x, y.long(), generator)

    def mix(self, x, y, generator):
        perm = self.partner(y, generator)
        lam = _beta(self.alpha, generator)
        return lam * x + (1 - lam) * x[perm], y, y[perm], _lam_vector(lam, y)


class CutMix(Mixup):
    """Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features"
    (ICCV 2019): a box of x_b pasted into x_a, label weight lam = 1 - box area / image area (timm's box sampler)."""

    def mix(self, x, y, generator):
        # Imported here: importing timm costs seconds, and every stage imports this module to validate params.
        from timm.data.mixup import cutmix_bbox_and_lam

        perm = self.partner(y, generator)
        lam = _beta(self.alpha, generator)
        with _numpy_global_seed(_seed(generator)):
            (y_lo, y_hi, x_lo, x_hi), lam = cutmix_bbox_and_lam(tuple(x.shape), lam, correct_lam=True)
        mixed = x.clone()
        mixed[:, :, y_lo:y_hi, x_lo:x_hi] = x[perm][:, :, y_lo:y_hi, x_lo:x_hi]
        return mixed, y, y[perm], _lam_vector(float(lam), y)


def remix_label_weight(n_a: torch.Tensor, n_b: torch.Tensor, lam_x: torch.Tensor, kappa: float,
                       tau: float) -> torch.Tensor:
    """Chou et al., "Remix: Rebalanced Mixup" (ECCV Workshops 2020): the weight lam_y of label y_a is
    0 if n_a/n_b >= kappa and lam_x < tau, 1 if n_a/n_b <= 1/kappa and 1 - lam_x < tau, else lam_x."""
    n_a, n_b = n_a.double(), n_b.double()
    # Cross-multiplied ratios: no division, so a class count of 0 stays well defined.
    to_b = (n_a >= kappa * n_b) & (lam_x < tau)
    to_a = (kappa * n_a <= n_b) & (1 - lam_x < tau)
    return torch.where(to_b, torch.zeros_like(lam_x), torch.where(to_a, torch.ones_like(lam_x), lam_x))


class Remix(Mixup):
    """Chou et al., "Remix: Rebalanced Mixup" (ECCV Workshops 2020): mixup inputs with lam_x, label weight
    lam_y = 0 if n_a/n_b >= kappa and lam_x < tau, 1 if n_a/n_b <= 1/kappa and 1 - lam_x < tau, else lam_x."""

    def __init__(self, class_counts: Sequence[int], *, alpha: float = 1.0, kappa: float = 3.0, tau: float = 0.5):
        super().__init__(class_counts, alpha=alpha)
        self.kappa = check_real("remix: kappa", kappa, low=1.0)
        self.tau = check_real("remix: tau", tau, low=0.0, high=1.0)

    def mix(self, x, y, generator):
        mixed, y_a, y_b, lam_x = super().mix(x, y, generator)
        counts = self.counts.to(y.device)
        return mixed, y_a, y_b, remix_label_weight(counts[y_a], counts[y_b], lam_x, self.kappa, self.tau)


@MIXERS.register("none", tasks=("multiclass", "multilabel"))
def no_mixing(class_counts: Sequence[int]) -> Mixer:
    """Identity: x_mixed = x, y_a = y_b = y, lam = 1."""
    return Mixer(class_counts)


@MIXERS.register("mixup")
def mixup(class_counts: Sequence[int], *, alpha: PosFloat = 1.0) -> Mixer:
    """Zhang et al., "mixup: Beyond Empirical Risk Minimization" (ICLR 2018):
    x = lam x_a + (1 - lam) x_b, lam ~ Beta(alpha, alpha)."""
    return Mixup(class_counts, alpha=alpha)


@MIXERS.register("cutmix")
def cutmix(class_counts: Sequence[int], *, alpha: PosFloat = 1.0) -> Mixer:
    """Yun et al., "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable Features"
    (ICCV 2019): x = M * x_a + (1 - M) * x_b for a random box mask M, lam = mean(M), lam ~ Beta(alpha, alpha)."""
    return CutMix(class_counts, alpha=alpha)


@MIXERS.register("remix")
def remix(class_counts: Sequence[int], *, alpha: PosFloat = 1.0, kappa: Annotated[Float, Field(ge=1)] = 3.0,
          tau: UnitFloat = 0.5) -> Mixer:
    """Chou et al., "Remix: Rebalanced Mixup" (ECCV Workshops 2020): mixup inputs, label weight moved to the
    minority class: lam_y = 0 / 1 / lam_x by the kappa (count ratio) and tau (mixing) thresholds."""
    return Remix(class_counts, alpha=alpha, kappa=kappa, tau=tau)


def build_mixer(name: str, class_counts: Sequence[int], **params) -> Mixer:
    """Mixer `name` from MIXERS; unknown names or parameters raise ConfigError listing the valid ones."""
    return MIXERS.build(name, class_counts, **params)
