"""Long-tailed subsets of multi-label data, as Wu et al. built VOC-LT and COCO-LT ("Distribution-Balanced Loss for
Multi-Label Classification in Long-Tailed Datasets", ECCV 2020; tools/create_longtail_dataset.py of
wutong16/DistributionBalancedLoss).

Per-class counts count every image holding the class, so adding an image for one class also adds to the classes it
co-occurs with; the builder therefore visits the classes one by one and adds or removes images until the visited
class matches its target, accepting the drift this causes in classes visited earlier.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch

from ltpipe.checks import check_choice, check_real
from ltpipe.errors import ConfigError
from ltpipe.multilabel.data import check_every_class_present, class_counts
from ltpipe.types import Int, OpenUnitFloat, PosFloat, PosInt


PROFILES = ("pareto", "none")


@dataclass
class MultiLabelSubset:
    """indices: sorted int64 rows of the kept images; counts: (C,) images per class in the subset; targets: (C,)
    the profile's count per class (class-index order; equal to `counts` for profile none); order: the classes in
    the order they were visited (rank 0 gets the largest target)."""

    indices: np.ndarray
    counts: np.ndarray
    targets: np.ndarray
    order: np.ndarray


def pareto_counts(num_classes: int, *, n_max: int, n_min: int = 1, shape: float = 6.0,
                  tail: float = 0.99) -> np.ndarray:
    """Target count per rank: n_k = int((n_max - n_min) * pdf(x_k) / shape + n_min), pdf the Pareto density of
    `shape`, x_k = linspace(1, ppf(tail), C) (the DB code's pareto_dist; pdf(x)/shape = x^-(shape+1), so n_0 = n_max).
    """
    x = np.linspace(1.0, (1.0 - tail) ** (-1.0 / shape), num_classes)
    return ((n_max - n_min) * x ** -(shape + 1.0) + n_min).astype(np.int64)


def visit_order(targets: np.ndarray) -> np.ndarray:
    """Classes by decreasing sum_i P(j | i), the DB code's `sample_prob` (co-occurrence column sums of the row-wise
    conditional probabilities): classes that come with many others are visited, and so filled, first. Ties keep class
    order."""
    y = np.asarray(targets, dtype=np.float64)
    co_occurrence = y.T @ y
    conditional = co_occurrence / np.diag(co_occurrence)[:, None]
    return np.argsort(-conditional.sum(axis=0), kind="stable")


def long_tailed_subset(targets: np.ndarray, classes: Sequence[str], *, profile: Literal["pareto", "none"] = "pareto",
                       n_max: PosInt = 800, n_min: PosInt = 1, shape: PosFloat = 6.0, tail: OpenUnitFloat = 0.99,
                       seed: Int = 0) -> MultiLabelSubset:
    """Images kept from the pool `targets` (N, C): the DB builder (VOC-LT: n_max 800, COCO-LT: n_max 1200; both
    n_min 1, shape 6, tail 0.99), or all of them for profile none.

    Classes are visited in `visit_order`; visiting the class at rank k with c images selected, a seeded random
    (target_k - c) of its unselected images are added, or (c - target_k) of its selected ones removed (with all
    their labels). A class short of images keeps all it has. A class left with no image is a ConfigError.
    """
    check_choice("long-tailed subset: profile", profile, PROFILES)
    check_real("long-tailed subset: tail", tail, low=0.0, high=1.0, include_high=False)
    targets = np.asarray(targets, dtype=bool)
    if targets.ndim != 2 or targets.shape[1] != len(classes):
        raise ConfigError(f"targets must be an (N, {len(classes)}) multi-hot matrix, got shape {targets.shape}")
    check_every_class_present(targets, classes, "long-tailed subset: the image pool")
    if profile == "none":
        counts = class_counts(targets)
        return MultiLabelSubset(np.arange(len(targets)), counts, counts, np.argsort(-counts, kind="stable"))
    if n_min > n_max:
        raise ConfigError(f"long-tailed subset: n_min={n_min} exceeds n_max={n_max}")
    order = visit_order(targets)
    wanted = np.empty(len(classes), dtype=np.int64)
    wanted[order] = pareto_counts(len(classes), n_max=n_max, n_min=n_min, shape=shape, tail=tail)
    generator = torch.Generator().manual_seed(int(seed))
    selected = np.zeros(len(targets), dtype=bool)
    current = np.zeros(len(classes), dtype=np.int64)
    # One step per class (not per image): each step moves a whole random batch of images in or out.
    for c in order:
        change = int(wanted[c] - current[c])
        candidates = np.flatnonzero(targets[:, c] & (selected if change < 0 else ~selected))
        picked = candidates[torch.randperm(len(candidates), generator=generator).numpy()[:abs(change)]]
        selected[picked] = change > 0
        current += np.sign(change) * class_counts(targets[picked])
    indices = np.flatnonzero(selected)
    check_every_class_present(targets[indices], classes,
                              f"long-tailed subset (pareto, n_max={n_max}, n_min={n_min}): removing images for "
                              f"other classes emptied a class; raise n_min")
    return MultiLabelSubset(indices, current, wanted, order)
