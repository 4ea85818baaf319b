"""Long-tailed subsampling: how many images each class keeps, and which ones (seeded, vectorised).

Profiles follow Cao et al., "Learning Imbalanced Datasets with Label-Distribution-Aware Margin Loss" (LDAM),
NeurIPS 2019, whose CIFAR-10/100-LT subsets every later long-tail paper reuses.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import torch

from ltpipe.checks import check_int, check_real
from ltpipe.errors import ConfigError

PROFILES = ("exp", "step", "none")
CLASS_ORDERS = ("index", "shuffle")
# One independent random stream per purpose: changing how the test split is carved never moves the train subset.
STREAMS = ("class_order", "test", "val", "train")
_SEED_STRIDE = 1_000_003


def stream_generator(seed: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * _SEED_STRIDE + STREAMS.index(stream))


def check_profile(profile: str, factor) -> None:
    if profile not in PROFILES:
        raise ConfigError(f"unknown imbalance profile {profile!r}; valid choices: {', '.join(PROFILES)}")
    check_real("imbalance.factor (n_max / n_min)", factor, low=1.0)


def _raw_counts(num_classes: int, n_max: int, profile: str, factor: float) -> List[int]:
    if profile == "exp":
        # (1/factor)**x rather than factor**-x: the exact float expression of LDAM's code, so int() matches it.
        inv = 1.0 / factor
        return [int(n_max * inv ** (i / (num_classes - 1.0))) if num_classes > 1 else n_max
                for i in range(num_classes)]
    if profile == "step":
        return [n_max if i < num_classes // 2 else int(n_max / factor) for i in range(num_classes)]
    return [n_max] * num_classes


def long_tailed_counts(num_classes: int, n_max: int, profile: str, factor: float,
                       names: Sequence[str] | None = None) -> List[int]:
    """Images per class rank (Cao et al., NeurIPS 2019): exp n_i = int(n_max * factor^(-i/(C-1))); step n_max for
    the first C//2 classes and int(n_max/factor) after; none n_max for all.

    `names[i]` names the class at rank i in the error raised when a class would be left with no image.
    """
    check_profile(profile, factor)
    check_int("num_classes", num_classes, 1)
    check_int("imbalance.n_max", n_max, 1)
    counts = _raw_counts(num_classes, n_max, profile, factor)
    empty = [i for i, n in enumerate(counts) if n < 1]
    if empty:
        who = names[empty[0]] if names is not None else f"rank {empty[0]}"
        raise ConfigError(
            f"imbalance {profile} with n_max={n_max}, factor={factor} leaves class {who!r} with 0 training images; "
            f"need factor <= n_max (lower imbalance.factor or raise imbalance.n_max)"
        )
    return counts


def class_order(num_classes: int, order: str, seed: int) -> List[int]:
    """Class index at each rank of the count profile: identity, or a seeded permutation."""
    if order not in CLASS_ORDERS:
        raise ConfigError(f"unknown imbalance.class_order {order!r}; valid choices: {', '.join(CLASS_ORDERS)}")
    if order == "index":
        return list(range(num_classes))
    return torch.randperm(num_classes, generator=stream_generator(seed, "class_order")).tolist()


def largest_feasible_n_max(available_by_rank: Sequence[int], profile: str, factor: float) -> int:
    """The largest n_max (<= the largest pool, >= 1) whose count at every rank fits what that rank's class has."""
    avail = np.asarray(available_by_rank, dtype=np.int64)
    lo, hi = 1, max(int(avail.max(initial=1)), 1)
    while lo < hi:  # every count is non-decreasing in n_max, so bisection finds the boundary
        mid = (lo + hi + 1) // 2
        if np.all(np.asarray(_raw_counts(len(avail), mid, profile, factor)) <= avail):
            lo = mid
        else:
            hi = mid - 1
    return lo


def per_class_counts(available: Sequence[int], classes: Sequence[str], *, profile: str, factor, n_max,
                     order: Sequence[int], hint: str = "") -> List[int]:
    """Training images per class (in class-index order) given what each class can supply.

    profile none keeps everything available; n_max null picks the largest n_max every class can supply.
    """
    check_profile(profile, factor)
    if profile == "none":
        counts = [int(a) for a in available]
    else:
        if n_max is None:
            n_max = largest_feasible_n_max([available[c] for c in order], profile, factor)
        ranked = long_tailed_counts(len(classes), n_max, profile, factor, names=[classes[c] for c in order])
        counts = [0] * len(classes)
        for rank, c in enumerate(order):
            counts[c] = ranked[rank]
    for c, (want, have) in enumerate(zip(counts, available)):
        if want > have or want < 1:
            raise ConfigError(
                f"class {classes[c]!r} needs {max(want, 1)} training images but only {have} are available{hint}"
            )
    return counts


def class_ranks(labels: np.ndarray, num_classes: int, generator: torch.Generator) -> np.ndarray:
    """Each sample's position in a seeded random permutation of its class (0 = first drawn)."""
    labels = np.asarray(labels, dtype=np.int64)
    perm = torch.randperm(len(labels), generator=generator).numpy()
    grouped = perm[np.argsort(labels[perm], kind="stable")]  # class-major, random within each class
    starts = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=num_classes))[:-1]])
    ranks = np.empty(len(labels), dtype=np.int64)
    ranks[grouped] = np.arange(len(labels)) - starts[labels[grouped]]
    return ranks
