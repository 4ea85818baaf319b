"""Epoch samplers for multi-label data (multi-hot targets (N, C)), with the `epoch_indices(epoch, total_epochs, seed)`
interface of `ltpipe.samplers`: deterministic in (seed, epoch), vectorised.
"""
from __future__ import annotations

from typing import Any, Tuple

import torch

from ltpipe.errors import ConfigError
from ltpipe.multilabel.validate import typed_kwargs
from ltpipe.registry import Registry
from ltpipe.samplers import _SEED_STRIDE, _check_epoch
from ltpipe.types import PosInt

MULTILABEL_SAMPLERS = Registry("multi-label sampler")


class MultiLabelSampler:
    """Base class: the targets, images per class and each class's member list (class-major, image order)."""

    def __init__(self, targets: Any):
        targets = torch.as_tensor(targets)
        if targets.dim() != 2 or targets.shape[0] == 0 or targets.shape[1] == 0:
            raise ConfigError(f"targets must be a non-empty (N, C) multi-hot matrix, got shape {tuple(targets.shape)}")
        if ((targets != 0) & (targets != 1)).any():
            raise ConfigError("targets must be multi-hot: every entry 0 or 1")
        self.targets = targets.bool()
        self.counts = self.targets.sum(dim=0)
        if self.counts.sum() == 0:
            raise ConfigError("targets hold no label at all; at least one class needs an image")
        # (class, image) pairs in class-major order: members of class j sit at offsets[j] : offsets[j] + counts[j]
        self.members = torch.nonzero(self.targets.T)[:, 1]
        self.offsets = torch.cumsum(self.counts, 0) - self.counts

    def __len__(self) -> int:
        return self.targets.shape[0]

    def epoch_indices(self, epoch: int, total_epochs: int, seed: int) -> torch.LongTensor:
        raise NotImplementedError

    def _generator(self, epoch: int, total_epochs: int, seed: int) -> torch.Generator:
        _check_epoch(epoch, total_epochs)
        return torch.Generator(device=self.targets.device).manual_seed((seed * _SEED_STRIDE + epoch) % (1 << 63))


@MULTILABEL_SAMPLERS.register("instance")
class InstanceSampler(MultiLabelSampler):
    """Instance sampling: a random permutation, each image once per epoch."""

    def epoch_indices(self, epoch: int, total_epochs: int, seed: int) -> torch.LongTensor:
        return torch.randperm(len(self), generator=self._generator(epoch, total_epochs, seed),
                              device=self.targets.device)


@MULTILABEL_SAMPLERS.register("class_aware")
class ClassAwareSampler(MultiLabelSampler):
    """Class-aware sampling for multi-label data (Shen et al., "Relay Backpropagation", ECCV 2016), as the
    ClassAwareSampler of wutong16/DistributionBalancedLoss: pick a class, cycling through a list of the classes that
    is reshuffled at each pass, then take `num_samples_cls` consecutive images of it from its own image list, also
    cycled and reshuffled at each pass (an image is not repeated before its class's list is used up).

    Every present class is picked equally often (within one pick per epoch); an image's labels other than the picked
    class are whatever it holds, so label frequencies are not equalised. One epoch has `num_samples` draws, N (the
    number of images, what ltpipe's stage-2 loop expects) by default; the DB code uses int(max_j n_j * C / 4).
    Unlike the DB code, whose cycles run on across epochs from one seed, each epoch starts fresh cycles from its own
    (seed, epoch) generator.
    """

    @typed_kwargs
    def __init__(self, targets: Any, *, num_samples_cls: PosInt = 3, num_samples: PosInt | None = None):
        super().__init__(targets)
        self.num_samples_cls = num_samples_cls
        self.num_samples = self.targets.shape[0] if num_samples is None else num_samples
        self.present = torch.nonzero(self.counts > 0).flatten()

    def __len__(self) -> int:
        return self.num_samples

    def epoch_draws(self, epoch: int, total_epochs: int, seed: int) -> Tuple[torch.LongTensor, torch.LongTensor]:
        """(picked class, image index) of every draw of the epoch, each (num_samples,)."""
        generator = self._generator(epoch, total_epochs, seed)
        device = self.targets.device
        runs = -(-self.num_samples // self.num_samples_cls)
        passes = -(-runs // self.present.numel())
        shuffles = torch.rand(passes, self.present.numel(), generator=generator, device=device).argsort(dim=1)
        classes = self.present[shuffles.flatten()[:runs]].repeat_interleave(self.num_samples_cls)[:self.num_samples]
        return classes, self._cycled_members(classes, generator)

    def epoch_indices(self, epoch: int, total_epochs: int, seed: int) -> torch.LongTensor:
        return self.epoch_draws(epoch, total_epochs, seed)[1]

    def _cycled_members(self, classes: torch.Tensor, generator: torch.Generator) -> torch.LongTensor:
        """The k-th draw of class j is entry k of j's stream: its members in a fresh random order per pass."""
        device = classes.device
        draws = torch.bincount(classes, minlength=self.counts.numel())
        passes = torch.where(self.counts > 0, -(-draws // self.counts.clamp_min(1)), 0)
        block = passes * self.counts  # length of class j's stream
        block_start = torch.cumsum(block, 0) - block
        owner = torch.repeat_interleave(torch.arange(block.numel(), device=device), block)
        position = torch.arange(owner.numel(), device=device) - block_start[owner]
        image = self.members[self.offsets[owner] + position % self.counts[owner]]
        # Shuffle within each (class, pass) group: sort by random key, then stably by the group's first position.
        group = block_start[owner] + (position // self.counts[owner]) * self.counts[owner]
        by_key = torch.rand(owner.numel(), generator=generator, device=device).argsort()
        stream = image[by_key[torch.argsort(group[by_key], stable=True)]]
        order = torch.argsort(classes, stable=True)
        draw_start = torch.cumsum(draws, 0) - draws
        k = torch.empty_like(classes)
        k[order] = torch.arange(classes.numel(), device=device) - draw_start[classes[order]]
        return stream[block_start[classes] + k]


def build_multilabel_sampler(name: str, targets: Any, **params: Any) -> MultiLabelSampler:
    """Sampler `name` from MULTILABEL_SAMPLERS; unknown names or parameters raise ConfigError listing the valid ones."""
    MULTILABEL_SAMPLERS.check_kwargs(name, params, fixed=("targets",))
    return MULTILABEL_SAMPLERS.build(name, targets, **params)
