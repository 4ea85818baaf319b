"""Batch augmentation as tensor ops (pad-crop and flip for a whole uint8 batch at once), optional AutoAugment /
RandAugment policies, the PIL transforms of the streaming path, and normalisation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch

from ltpipe.errors import ConfigError
from ltpipe.registry import Registry
from ltpipe.types import NonNegInt, PosInt

POLICIES = Registry("augmentation policy")
# Resize the shorter side to image_size / 0.875 before the centre crop: the usual ImageNet evaluation ratio.
EVAL_CROP_RATIO = 0.875


@POLICIES.register("none")
def no_policy() -> None:
    """No extra policy: only pad-crop and flip."""
    return None


@POLICIES.register("randaugment")
def randaugment(num_ops: PosInt = 2, magnitude: NonNegInt = 9, num_magnitude_bins: PosInt = 31) -> Callable:
    """RandAugment (Cubuk et al., "RandAugment: Practical Automated Data Augmentation with a Reduced Search Space",
    CVPR-W 2020): apply num_ops ops drawn uniformly, each at strength magnitude / (num_magnitude_bins - 1)."""
    from torchvision.transforms import v2

    return v2.RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=num_magnitude_bins)


@POLICIES.register("autoaugment")
def autoaugment(policy: Literal["cifar10", "imagenet", "svhn"] = "cifar10") -> Callable:
    """AutoAugment (Cubuk et al., "AutoAugment: Learning Augmentation Strategies from Data", CVPR 2019): one of the
    learned policy's 25 sub-policies per image, x -> op2(op1(x)) with the learned probabilities and magnitudes."""
    from torchvision.transforms import v2

    return v2.AutoAugment({p.value.lower(): p for p in v2.AutoAugmentPolicy}[policy])


@dataclass(frozen=True)
class Augment:
    """Training augmentation: pad-crop by `crop_padding`, horizontal flip, and an optional policy (built)."""

    crop_padding: int = 0
    flip: bool = False
    policy: Callable | None = None


def build_augment(cfg) -> Augment:
    """The validated `train.augment` section -> Augment, its policy built from its kwargs block."""
    return Augment(cfg.crop_padding, cfg.flip, POLICIES.build(cfg.policy, **dict(getattr(cfg, cfg.policy))))


def draw_crop_flip(n: int, padding: int, flip: bool, generator: torch.Generator):
    """Per-sample crop offsets in [0, 2*padding] and flip decisions, for n samples at once."""
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return oy, ox, flips


def crop_flip(x: torch.Tensor, oy: torch.Tensor, ox: torch.Tensor, flips: torch.Tensor, padding: int) -> torch.Tensor:
    """Random crop of the zero-padded batch, then horizontal flip, as one gather: out[b, i, j] =
    pad(x)[b, oy_b + i, ox_b + (W-1-j if flip_b else j)]. x is (B, H, W, Ch), any dtype."""
    b, h, w, c = x.shape
    hp, wp = h + 2 * padding, w + 2 * padding
    padded = x.new_zeros(b, hp, wp, c)
    padded[:, padding:padding + h, padding:padding + w] = x
    rows = oy[:, None] + torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = ox[:, None] + torch.where(flips[:, None], cols.flip(1), cols)
    # One flat row index per output pixel: index_select copies whole Ch-vectors, ~2x faster than 3-D indexing.
    pixel = (torch.arange(b, device=x.device)[:, None, None] * hp + rows[:, :, None]) * wp + cols[:, None, :]
    return padded.view(b * hp * wp, c).index_select(0, pixel.view(-1)).view(b, h, w, c)


def seeded(fn: Callable, x, seed: int):
    """Run a torchvision transform (which draws from the global RNG) under its own seed, leaving that RNG as it was:
    results depend on the sample's seed only, not on batch composition or worker scheduling."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return fn(x)


def apply_policy(x: torch.Tensor, policy: Callable, seeds: torch.Tensor) -> torch.Tensor:
    """Per-sample policy on a uint8 (B, Ch, H, W) batch; the policies are per-image ops, so this loops."""
    return torch.stack([seeded(policy, img, s) for img, s in zip(x, seeds.tolist())])


class Normalize:
    """x -> (x / 255 - mean) / std per channel, folded into one multiply-add on a uint8 (B, Ch, H, W) batch."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu"):
        mean = torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
        std = torch.as_tensor(std, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)
        if mean.numel() != std.numel() or not bool((std > 0).all()):
            raise ConfigError(f"mean and std need one value per channel and std > 0, got mean={mean.flatten()} "
                              f"std={std.flatten()}")
        self.channels = mean.numel()
        self.scale, self.shift = 1.0 / (255.0 * std), mean / std

    def __call__(self, x: torch.Tensor, channels_last: bool) -> torch.Tensor:
        # Reorder the memory while still uint8 (4x fewer bytes than after the float conversion).
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return x.float().mul_(self.scale).sub_(self.shift)


def stream_transform(train: bool, image_size: int, augment: Augment | None) -> Callable:
    """PIL image -> uint8 (Ch, H, W): RandomResizedCrop + flip (+ policy) for training (Szegedy et al., "Going
    Deeper with Convolutions", CVPR 2015), Resize(size / 0.875) + CenterCrop otherwise."""
    from torchvision.transforms import v2

    if train:
        steps = [v2.RandomResizedCrop(image_size, antialias=True)]
        steps += [v2.RandomHorizontalFlip()] if augment.flip else []
        steps += [augment.policy] if augment.policy is not None else []
    else:
        steps = [v2.Resize(round(image_size / EVAL_CROP_RATIO), antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(steps + [v2.PILToTensor()])
