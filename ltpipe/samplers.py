"""Epoch samplers: which training indices form one epoch (stage 1 on images, stage 2 on cached features).

Every sampler is deterministic in (seed, epoch) and draws in two vectorised steps: a class per slot, then a uniform
member of that class (offset into the class-sorted index list + floor(u * n_j)).
"""
from __future__ import annotations

from typing import Any

import torch

from ltpipe.checks import check_int, check_real
from ltpipe.errors import ConfigError
from ltpipe.registry import Registry
from ltpipe.types import NonNegFloat, PosInt

SAMPLERS = Registry("sampler", fixed=("labels", "num_classes"))
SamplerName = SAMPLERS.name_type()

# Large prime multiplier: (seed, epoch) pairs map to distinct generator seeds for any realistic epoch count.
_SEED_STRIDE = 1_000_003


def _check_labels(labels: Any, num_classes: int) -> torch.Tensor:
    check_int("num_classes", num_classes, 1)
    labels = torch.as_tensor(labels)
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise ConfigError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.dim() != 1 or labels.numel() == 0:
        raise ConfigError(f"labels must be a non-empty 1-D tensor, got shape {tuple(labels.shape)}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ConfigError(f"labels must lie in [0, {num_classes - 1}] (num_classes={num_classes}), found [{lo}, {hi}]")
    return labels.long()


def _check_epoch(epoch: int, total_epochs: int) -> None:
    if total_epochs < 1 or not 0 <= epoch <= total_epochs:
        raise ConfigError(f"need total_epochs >= 1 and epoch in [0, total_epochs], got epoch={epoch}, "
                          f"total_epochs={total_epochs}")


def _power_probabilities(counts: torch.Tensor, q: float) -> torch.Tensor:
    """p_j = n_j^q / sum_k n_k^q over classes with n_j > 0; absent classes get 0 (never drawn, even for q <= 0)."""
    weights = counts.double().clamp_min(1).pow(q) * (counts > 0)
    return weights / weights.sum()


class Sampler:
    """Base class: counts, class-sorted indices and per-class offsets, and the class-then-member draw."""

    def __init__(self, labels: torch.LongTensor, num_classes: int):
        self.labels = _check_labels(labels, num_classes)
        self.num_classes = num_classes
        self.counts = torch.bincount(self.labels, minlength=num_classes)
        self.sorted_indices = torch.argsort(self.labels, stable=True)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts

    def __len__(self) -> int:
        return self.labels.numel()

    def class_probabilities(self, epoch: int, total_epochs: int) -> torch.Tensor:
        """(C,) float64 probability that one drawn index belongs to class j; sums to 1."""
        raise NotImplementedError

    def epoch_indices(self, epoch: int, total_epochs: int, seed: int) -> torch.LongTensor:
        """(N,) training indices for this epoch; classes drawn i.i.d. from `class_probabilities`."""
        generator = self._generator(epoch, total_epochs, seed)
        probs = self.class_probabilities(epoch, total_epochs)
        classes = torch.multinomial(probs, len(self), replacement=True, generator=generator)
        return self._members(classes, generator)

    def _generator(self, epoch: int, total_epochs: int, seed: int) -> torch.Generator:
        _check_epoch(epoch, total_epochs)
        generator = torch.Generator(device=self.labels.device)
        generator.manual_seed((seed * _SEED_STRIDE + epoch) % (1 << 63))
        return generator

    def _members(self, classes: torch.Tensor, generator: torch.Generator) -> torch.LongTensor:
        """One uniform member (with replacement) of each requested class."""
        counts = self.counts[classes]
        u = torch.rand(classes.shape, generator=generator, device=classes.device, dtype=torch.float64)
        # u * n can round up to n in floating point; keep the draw inside the class
        within = torch.minimum((u * counts).long(), counts - 1)
        return self.sorted_indices[self.offsets[classes] + within]


@SAMPLERS.register("instance")
class InstanceSampler(Sampler):
    """Instance-balanced sampling (Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
    ICLR 2020): a random permutation, each sample once per epoch, so p_j = n_j / N."""

    def class_probabilities(self, epoch: int, total_epochs: int) -> torch.Tensor:
        return _power_probabilities(self.counts, 1.0)

    def epoch_indices(self, epoch: int, total_epochs: int, seed: int) -> torch.LongTensor:
        generator = self._generator(epoch, total_epochs, seed)
        return torch.randperm(len(self), generator=generator, device=self.labels.device)


@SAMPLERS.register("power")
class PowerSampler(Sampler):
    """Square-root / q-power class sampling (Mahajan et al., "Exploring the Limits of Weakly Supervised Pretraining",
    ECCV 2018; Kang et al., ICLR 2020): p_j = n_j^q / sum_k n_k^q, then uniform within class.

    q = 1 matches instance frequencies, q = 0.5 is square-root sampling, q = 0 is class-balanced.
    """

    def __init__(self, labels: torch.LongTensor, num_classes: int, q: NonNegFloat = 0.5):
        super().__init__(labels, num_classes)
        self.q = check_real("power sampler q (0 = class-balanced, 1 = instance)", q, low=0.0)

    def class_probabilities(self, epoch: int, total_epochs: int) -> torch.Tensor:
        return _power_probabilities(self.counts, self.q)


@SAMPLERS.register("class_balanced")
def class_balanced_sampler(labels: torch.LongTensor, num_classes: int) -> PowerSampler:
    """Class-balanced sampling (Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
    ICLR 2020): p_j = 1 / C over classes with n_j > 0, then uniform within class (the q = 0 power sampler)."""
    return PowerSampler(labels, num_classes, q=0.0)


@SAMPLERS.register("sqrt")
def sqrt_sampler(labels: torch.LongTensor, num_classes: int) -> PowerSampler:
    """Square-root sampling (Mahajan et al., "Exploring the Limits of Weakly Supervised Pretraining", ECCV 2018;
    Kang et al., ICLR 2020): p_j = n_j^0.5 / sum_k n_k^0.5 (the q = 0.5 power sampler)."""
    return PowerSampler(labels, num_classes, q=0.5)


@SAMPLERS.register("progressive")
class ProgressiveSampler(Sampler):
    """Progressively-balanced sampling (Kang et al., "Decoupling Representation and Classifier for Long-Tailed
    Recognition", ICLR 2020): p_j(t) = (1 - t/T) * n_j / N + (t/T) * 1/C, with t = epoch, T = total_epochs.

    The 1/C term is the class-balanced distribution, so classes absent from `labels` stay at 0.
    """

    def class_probabilities(self, epoch: int, total_epochs: int) -> torch.Tensor:
        _check_epoch(epoch, total_epochs)
        t = epoch / total_epochs
        return (1 - t) * _power_probabilities(self.counts, 1.0) + t * _power_probabilities(self.counts, 0.0)


@SAMPLERS.register("reversed")
class ReversedSampler(Sampler):
    """Reversed sampler of BBN (Zhou et al., "BBN: Bilateral-Branch Network with Cumulative Learning for Long-Tailed
    Visual Recognition", CVPR 2020): w_j = n_max / n_j, p_j = w_j / sum_k w_k (i.e. p_j proportional to 1/n_j)."""

    def class_probabilities(self, epoch: int, total_epochs: int) -> torch.Tensor:
        # n_max cancels in the normalisation, so this is the q = -1 power law
        return _power_probabilities(self.counts, -1.0)


@SAMPLERS.register("class_aware")
class ClassAwareSampler(Sampler):
    """Class-aware sampling (Shen et al., "Relay Backpropagation for Effective Learning of Deep Convolutional Neural
    Networks", ECCV 2016; ClassAwareSampler of Kang et al., ICLR 2020): classes visited in shuffled round-robin order,
    `samples_per_class` consecutive uniform draws from each visited class, so p_j = 1 / C over present classes.
    """

    def __init__(self, labels: torch.LongTensor, num_classes: int, samples_per_class: PosInt = 4):
        super().__init__(labels, num_classes)
        self.samples_per_class = check_int("class_aware sampler samples_per_class", samples_per_class, 1)
        self.present = torch.nonzero(self.counts > 0).flatten()

    def class_probabilities(self, epoch: int, total_epochs: int) -> torch.Tensor:
        return _power_probabilities(self.counts, 0.0)

    def epoch_indices(self, epoch: int, total_epochs: int, seed: int) -> torch.LongTensor:
        generator = self._generator(epoch, total_epochs, seed)
        runs = -(-len(self) // self.samples_per_class)
        cycles = -(-runs // self.present.numel())
        # one independent shuffle of the present classes per round-robin cycle
        shuffles = torch.rand(cycles, self.present.numel(), generator=generator, device=self.labels.device).argsort(1)
        visits = self.present[shuffles.flatten()[:runs]]
        classes = visits.repeat_interleave(self.samples_per_class)[: len(self)]
        return self._members(classes, generator)


def build_sampler(name: str, labels: torch.LongTensor, num_classes: int, **params: Any) -> Sampler:
    """Sampler `name` from SAMPLERS; unknown names or parameters raise ConfigError listing the valid ones."""
    return SAMPLERS.build(name, labels, num_classes, **params)
