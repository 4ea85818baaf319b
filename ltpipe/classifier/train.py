"""The one training loop over cached features that every training stage-2 method uses."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn
from tqdm import tqdm

from ltpipe.checks import check_int, check_real
from ltpipe.classifier.base import Stage2Data
from ltpipe.errors import ConfigError
from ltpipe.registry import as_kwargs
from ltpipe.losses import LTLoss, build_loss
from ltpipe.samplers import Sampler, build_sampler
from ltpipe.train.schedule import build_sgd, check_schedule

Batch = Tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Recipe:
    """SGD with momentum and weight decay, a per-step lr schedule (ltpipe.train.schedule), no warm-up.

    Validated on construction, so a factory that builds its Recipe first fails before any work.
    """

    epochs: int
    lr: float
    batch_size: int
    momentum: float
    weight_decay: float
    schedule: str
    milestones: Sequence[int] = ()
    gamma: float = 0.1
    progress: bool = True

    def __post_init__(self) -> None:
        check_int("epochs", self.epochs, 1)
        check_real("lr", self.lr, low=0, include_low=False)
        check_int("batch_size", self.batch_size, 1)
        check_real("momentum", self.momentum, low=0, high=1, include_high=False)
        check_real("weight_decay", self.weight_decay, low=0)
        check_schedule(epochs=self.epochs, warmup_epochs=0, schedule=self.schedule, milestones=list(self.milestones),
                       gamma=self.gamma)


class Supervised:
    """Objective: the batch loss of `model` on one batch from one sampler."""

    def __init__(self, model: nn.Module, loss_fn: LTLoss):
        self.model, self.loss_fn = model, loss_fn

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        self.loss_fn.set_epoch(epoch, total_epochs)

    def __call__(self, batches: Sequence[Batch]) -> torch.Tensor:
        (x, y), = batches
        return self.loss_fn(self.model(x), y, x if self.loss_fn.needs_features else None)


def sampler_and_loss(data: Stage2Data, sampler: str, sampler_params: Optional[Mapping[str, Any]], loss: str,
                     loss_params: Optional[Mapping[str, Any]]) -> Tuple[Sampler, LTLoss]:
    """Both built from their names (ConfigError on unknown names or kwargs, listing the valid ones)."""
    built_sampler = build_sampler(sampler, data.train_labels, data.num_classes,
                                  **as_kwargs("sampler_params", sampler_params))
    built_loss = build_loss(loss, data.class_counts, data.num_images,
                            **as_kwargs("loss_params", loss_params)).to(data.device)
    return built_sampler, built_loss


def fit(params, data: Stage2Data, samplers: Sequence[Sampler], objective, recipe: Recipe, *,
        project: Optional[Callable[[], None]] = None, desc: str = "stage 2") -> List[float]:
    """Train `params` (tensors or param groups) for recipe.epochs; returns the mean training loss of each epoch.

    Each step takes one batch from every sampler's epoch (sampler k seeded with data.seed + k) of the train features
    (at epoch e, view e mod V of data.train_views when given) and calls `objective(batches)`; `objective.set_epoch`
    runs at every epoch start and `project` (e.g. MaxNorm) at every epoch end, without gradients. An epoch is as long
    as the samplers' epochs, which must be equally long.
    """
    n = len(samplers[0])
    if any(len(s) != n for s in samplers):
        raise ConfigError(f"the samplers of one stage-2 method draw epochs of different lengths "
                          f"({', '.join(str(len(s)) for s in samplers)}); leave their epoch length at its default")
    steps = math.ceil(n / recipe.batch_size)
    optimizer, scheduler = build_sgd(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                                     steps_per_epoch=steps, epochs=recipe.epochs, warmup_epochs=0,
                                     schedule=recipe.schedule, milestones=list(recipe.milestones), gamma=recipe.gamma)
    curve = []
    for epoch in range(recipe.epochs):
        objective.set_epoch(epoch, recipe.epochs)
        views = data.train_views
        features = data.train_features if views is None else views[epoch % len(views)]
        streams = [s.epoch_indices(epoch, recipe.epochs, data.seed + k).split(recipe.batch_size)
                   for k, s in enumerate(samplers)]
        total = 0.0
        bar = tqdm(zip(*streams, strict=True), total=steps, desc=f"{desc} epoch {epoch + 1}/{recipe.epochs}",
                   leave=False, disable=not recipe.progress)
        for chunks in bar:
            loss = objective([(features[i], data.train_labels[i]) for i in chunks])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(chunks[0])
        if project is not None:
            with torch.no_grad():
                project()
        curve.append(total / n)
    return curve
