"""Epoch samplers: which training indices form one epoch (stage 1 on images, stage 2 on cached features).

Labels are either int64 class indices (N,) or an (N, C) multi-hot matrix (`ltpipe.tasks`); every sampler draws from
the same structure, each class's images in class-major order, so one implementation serves both. Every sampler is
deterministic in (seed, epoch) and draws in two vectorised steps: a class per slot, then an image holding that class.
For one label per image, p_j is the probability that a drawn image belongs to class j; for multi-label data it is the
probability that a draw picks class j (the drawn image holds j and possibly other classes).
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ltpipe.checks import check_int, check_real
from ltpipe.errors import ConfigError
from ltpipe.registry import Registry
from ltpipe.tasks import task_of
from ltpipe.types import NonNegFloat, PosInt

MULTICLASS_AND_MULTILABEL = ("multiclass", "multilabel")
SAMPLERS = Registry("sampler", fixed=("labels", "num_classes"), tasks=("multiclass",))
SamplerName = SAMPLERS.name_type()

# Large prime multiplier: (seed, epoch) pairs map to distinct generator seeds for any realistic epoch count.
_SEED_STRIDE = 1_000_003


def _check_epoch(epoch: int, total_epochs: int) -> None:
    if total_epochs < 1 or not 0 <= epoch <= total_epochs:
        raise ConfigError(f"need total_epochs >= 1 and epoch in [0, total_epochs], got epoch={epoch}, "
                          f"total_epochs={total_epochs}")


def _power_probabilities(counts: torch.Tensor, q: float) -> torch.Tensor:
    """p_j = n_j^q / sum_k n_k^q over classes with n_j > 0; absent classes get 0 (never drawn, even for q <= 0)."""
    weights = counts.double().clamp_min(1).pow(q) * (counts > 0)
    return weights / weights.sum()


class Sampler:
    """Base class: images per class, each class's images (class-major) and offsets, and the class-then-image draw."""

    def __init__(self, labels: torch.Tensor, num_classes: int):
        check_int("num_classes", num_classes, 1)
        self.labels = task_of(labels).check(labels, num_classes)
        if self.labels.shape[0] == 0:
            raise ConfigError("labels must hold at least one image, got none")
        self.num_classes = num_classes
        self.counts, self.sorted_indices = task_of(labels).members(self.labels, num_classes)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts

    def __len__(self) -> int:
        return self.labels.shape[0]

    def class_probabilities(self, epoch: int, total_epochs: int) -> torch.Tensor:
        """(C,) float64 probability that one draw is for class j; sums to 1."""
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


@SAMPLERS.register("instance", tasks=MULTICLASS_AND_MULTILABEL)
class InstanceSampler(Sampler):
    """Instance-balanced sampling (Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
    ICLR 2020): a random permutation, each sample once per epoch, so p_j = n_j / N (for one label per image)."""

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
    Recognition", ICLR 2020): p_j(t) = (1 - t) * n_j / N + t * 1/C, t = epoch / (T - 1) for 0-based epochs.

    As the authors' ClassPrioritySampler (lams = np.linspace(0, 1, epochs)): the first epoch samples instances, the
    last one is class-balanced (t = 0 when T = 1). The 1/C term is the class-balanced distribution, so classes absent
    from `labels` stay at 0.
    """

    def class_probabilities(self, epoch: int, total_epochs: int) -> torch.Tensor:
        _check_epoch(epoch, total_epochs)
        t = min(epoch, total_epochs - 1) / (total_epochs - 1) if total_epochs > 1 else 0.0
        return (1 - t) * _power_probabilities(self.counts, 1.0) + t * _power_probabilities(self.counts, 0.0)


@SAMPLERS.register("reversed")
class ReversedSampler(Sampler):
    """Reversed sampler of BBN (Zhou et al., "BBN: Bilateral-Branch Network with Cumulative Learning for Long-Tailed
    Visual Recognition", CVPR 2020): w_j = n_max / n_j, p_j = w_j / sum_k w_k (i.e. p_j proportional to 1/n_j)."""

    def class_probabilities(self, epoch: int, total_epochs: int) -> torch.Tensor:
        # n_max cancels in the normalisation, so this is the q = -1 power law
        return _power_probabilities(self.counts, -1.0)


@SAMPLERS.register("class_aware", tasks=MULTICLASS_AND_MULTILABEL)
class ClassAwareSampler(Sampler):
    """Class-aware sampling (Shen et al., "Relay Backpropagation for Effective Learning of Deep Convolutional Neural
    Networks", ECCV 2016), the ClassAwareSampler of Kang et al. (ICLR 2020, classifier-balancing) and of Wu et al.
    (ECCV 2020, DistributionBalancedLoss), which are the same algorithm: pick a class, cycling through the present
    classes in an order reshuffled at every pass, then take `samples_per_class` consecutive images holding it from the
    class's own image list, also cycled and reshuffled at every pass (an image is not repeated before its class's
    list is used up). Every present class is picked equally often: p_j = 1 / C over present classes.

    For multi-label data an image's labels besides the picked class are whatever it holds, so label frequencies are
    not equalised. An epoch has N draws (one per training image) unless `reduce` is set: then int(max_j n_j * C /
    reduce) draws, the DB code's epoch (reduce 4 there). Unlike both codes, whose cycles run on across epochs from one
    seed, each epoch starts fresh cycles from its own (seed, epoch) generator.
    """

    def __init__(self, labels: torch.Tensor, num_classes: int, samples_per_class: PosInt = 4,
                 reduce: Optional[PosInt] = None):
        super().__init__(labels, num_classes)
        self.samples_per_class = check_int("class_aware sampler samples_per_class", samples_per_class, 1)
        self.reduce = check_int("class_aware sampler reduce", reduce, 1, allow_none=True)
        self.present = torch.nonzero(self.counts > 0).flatten()
        self.num_samples = self.labels.shape[0] if reduce is None else \
            max(int(int(self.counts.max()) * num_classes / reduce), 1)

    def __len__(self) -> int:
        return self.num_samples

    def class_probabilities(self, epoch: int, total_epochs: int) -> torch.Tensor:
        return _power_probabilities(self.counts, 0.0)

    def epoch_draws(self, epoch: int, total_epochs: int, seed: int) -> tuple[torch.LongTensor, torch.LongTensor]:
        """(picked class, image index) of every draw of the epoch, each (len(self),)."""
        generator = self._generator(epoch, total_epochs, seed)
        device = self.labels.device
        runs = -(-len(self) // self.samples_per_class)
        passes = -(-runs // self.present.numel())
        shuffles = torch.rand(passes, self.present.numel(), generator=generator, device=device).argsort(dim=1)
        visits = self.present[shuffles.flatten()[:runs]]
        classes = visits.repeat_interleave(self.samples_per_class)[:len(self)]
        return classes, self._cycled_members(classes, generator)

    def epoch_indices(self, epoch: int, total_epochs: int, seed: int) -> torch.LongTensor:
        return self.epoch_draws(epoch, total_epochs, seed)[1]

    def _cycled_members(self, classes: torch.Tensor, generator: torch.Generator) -> torch.LongTensor:
        """The k-th draw of class j is entry k of j's stream: its images in a fresh random order per pass."""
        device = classes.device
        draws = torch.bincount(classes, minlength=self.num_classes)
        passes = torch.where(self.counts > 0, -(-draws // self.counts.clamp_min(1)), 0)
        block = passes * self.counts  # length of class j's stream
        block_start = torch.cumsum(block, 0) - block
        owner = torch.repeat_interleave(torch.arange(block.numel(), device=device), block)
        position = torch.arange(owner.numel(), device=device) - block_start[owner]
        image = self.sorted_indices[self.offsets[owner] + position % self.counts[owner]]
        # Shuffle within each (class, pass) group: sort by a random key, then stably by the group's first position.
        group = block_start[owner] + (position // self.counts[owner]) * self.counts[owner]
        by_key = torch.rand(owner.numel(), generator=generator, device=device).argsort()
        stream = image[by_key[torch.argsort(group[by_key], stable=True)]]
        order = torch.argsort(classes, stable=True)
        draw_start = torch.cumsum(draws, 0) - draws
        k = torch.empty_like(classes)
        k[order] = torch.arange(classes.numel(), device=device) - draw_start[classes[order]]
        return stream[block_start[classes] + k]


def build_sampler(name: str, labels: torch.Tensor, num_classes: int, **params: Any) -> Sampler:
    """Sampler `name` from SAMPLERS; unknown names or parameters raise ConfigError listing the valid ones."""
    return SAMPLERS.build(name, labels, num_classes, **params)
