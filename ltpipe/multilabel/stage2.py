"""Stage 2 for multi-label data: adjust or retrain only the classifier on frozen features (tau-norm, cRT, LWS).

The single-label pieces are reused as they are: `tau_normalized`, `ScaledLogits`, `Recipe` and the training loop
`fit` of `ltpipe.classifier`. `fit` indexes 1-D labels and counts an epoch as their number, so it is given the row
numbers 0..N-1 as labels and the objective looks the multi-hot targets up by row (`_RowView`, `_MultiHotObjective`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Mapping, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ltpipe.classifier.base import build_module, init_linear_, seeded_generator
from ltpipe.classifier.lws import ScaledLogits
from ltpipe.classifier.tau_norm import tau_normalized
from ltpipe.classifier.train import Recipe, fit
from ltpipe.errors import ConfigError
from ltpipe.models.heads import LinearHead
from ltpipe.multilabel.losses import MultiLabelLoss, build_multilabel_loss
from ltpipe.multilabel.metrics import average_precisions, choose_thresholds, f1_scores
from ltpipe.multilabel.samplers import build_multilabel_sampler
from ltpipe.multilabel.validate import typed_kwargs
from ltpipe.registry import Registry, as_kwargs
from ltpipe.types import Bool, Milestones, NonNegFloat, OpenUnitFloat, PosFloat, PosInt

MULTILABEL_STAGE2 = Registry("multi-label stage-2 method")


@dataclass
class MultiLabelStage2Data:
    """Frozen-backbone features and (N, C) multi-hot targets of the train and validation splits (never the test
    set), the stage-1 head and the run seed. Class counts and N come from the train targets."""

    train_features: torch.Tensor
    train_targets: torch.Tensor
    val_features: torch.Tensor
    val_targets: torch.Tensor
    base_head: LinearHead
    seed: int

    def __post_init__(self) -> None:
        for split in ("train", "val"):
            x, y = getattr(self, f"{split}_features"), getattr(self, f"{split}_targets")
            if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
                raise ConfigError(f"{split} features must be (N, D) and targets (N, C), got {tuple(x.shape)} and "
                                  f"{tuple(y.shape)}")
            if ((y != 0) & (y != 1)).any():
                raise ConfigError(f"{split} targets must be multi-hot: every entry 0 or 1")
        if self.train_targets.shape[0] == 0:
            raise ConfigError("stage 2 needs at least one training feature, got none")
        if self.val_features.shape[1] != self.in_features or self.val_targets.shape[1] != self.num_classes:
            raise ConfigError(f"val features / targets are {tuple(self.val_features.shape)} / "
                              f"{tuple(self.val_targets.shape)}; train has {self.in_features} features and "
                              f"{self.num_classes} classes")
        if tuple(self.base_head.weight.shape) != (self.num_classes, self.in_features):
            raise ConfigError(f"stage-1 head maps {self.base_head.weight.shape[1]} features to "
                              f"{self.base_head.weight.shape[0]} classes; the data has {self.in_features} features "
                              f"and {self.num_classes} classes")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        self.train_targets = self.train_targets.bool()
        self.val_targets = self.val_targets.bool()

    @property
    def num_classes(self) -> int:
        return self.train_targets.shape[1]

    @property
    def in_features(self) -> int:
        return self.train_features.shape[1]

    @property
    def num_images(self) -> int:
        return self.train_targets.shape[0]

    @property
    def class_counts(self) -> List[int]:
        return self.train_targets.sum(dim=0).tolist()

    @property
    def device(self) -> torch.device:
        return self.train_features.device


@dataclass
class _RowView:
    """What `fit` reads from its data: features, one 1-D "label" per row (here the row number) and the seed."""

    train_features: torch.Tensor
    train_labels: torch.Tensor
    seed: int


class _MultiHotObjective:
    """`fit`'s objective: the batch mean of the multi-label loss, the batch's "labels" being row numbers."""

    def __init__(self, model: nn.Module, loss_fn: MultiLabelLoss, targets: torch.Tensor):
        self.model, self.loss_fn, self.targets = model, loss_fn, targets

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        self.loss_fn.set_epoch(epoch, total_epochs)

    def __call__(self, batches: Sequence[Tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        (x, rows), = batches
        return self.loss_fn(self.model(x), self.targets[rows]).mean()


def _train(params, model: nn.Module, data: MultiLabelStage2Data, recipe: Recipe, *, sampler: str,
           sampler_params: Mapping[str, Any] | None, loss: str, loss_params: Mapping[str, Any] | None,
           desc: str) -> List[float]:
    built_sampler = build_multilabel_sampler(sampler, data.train_targets, **as_kwargs("sampler_params", sampler_params))
    if len(built_sampler) != data.num_images:
        raise ConfigError(f"stage 2 runs epochs of N={data.num_images} draws (its lr schedule counts them); the "
                          f"{sampler!r} sampler draws {len(built_sampler)}: leave num_samples unset")
    loss_fn = build_multilabel_loss(loss, data.class_counts, data.num_images,
                                    **as_kwargs("loss_params", loss_params)).to(data.device)
    rows = _RowView(data.train_features, torch.arange(data.num_images, device=data.device), data.seed)
    return fit(params, rows, [built_sampler], _MultiHotObjective(model, loss_fn, data.train_targets), recipe,
               desc=desc)


@MULTILABEL_STAGE2.register("none")
def none(data: MultiLabelStage2Data) -> Tuple[LinearHead, Dict[str, Any]]:
    """The joint baseline: a copy of the stage-1 head."""
    return copy.deepcopy(data.base_head), {}


@MULTILABEL_STAGE2.register("tau_norm")
@typed_kwargs
def tau_norm(data: MultiLabelStage2Data, *, tau: NonNegFloat | None = None, grid_start: NonNegFloat = 0.0,
             grid_stop: NonNegFloat = 2.0, grid_num: PosInt = 21,
             criterion: Literal["map", "micro_f1"] = "micro_f1") -> Tuple[LinearHead, Dict[str, Any]]:
    """tau-normalised classifier (Kang et al., "Decoupling Representation and Classifier for Long-Tailed
    Recognition", ICLR 2020): w_j <- w_j / ||w_j||^tau, b dropped; tau=None picks the grid value with the best
    validation `criterion` (ties -> the smallest tau).

    Per-class AP only depends on the order of each class's scores, which dividing w_j by a positive number keeps, so
    validation mAP is the same for every tau (criterion "map" then always picks grid_start). "micro_f1" (one global
    threshold chosen on the same validation scores) compares classes with each other, which tau changes.
    """
    if tau is not None:
        return tau_normalized(data.base_head, tau), {"tau": float(tau)}
    if grid_stop < grid_start:
        raise ConfigError(f"tau_norm: grid_stop={grid_stop} is below grid_start={grid_start}")
    if data.val_targets.shape[0] == 0:
        raise ConfigError("tau_norm with tau=None chooses tau on the validation split, which is empty; give a "
                          "validation split or a fixed tau >= 0")
    # rounded so the recorded taus read 0.3, not 0.30000000000000004
    grid = [round(float(t), 10) for t in np.linspace(grid_start, grid_stop, grid_num)]
    curve = [_validation_score(tau_normalized(data.base_head, t), data, criterion) for t in grid]
    best = int(np.argmax(curve))  # first maximum of an ascending grid: ties go to the smallest tau
    return tau_normalized(data.base_head, grid[best]), {"tau": grid[best], "tau_grid": grid, f"val_{criterion}": curve}


@torch.no_grad()
def _validation_score(head: nn.Module, data: MultiLabelStage2Data, criterion: str) -> float:
    scores = head(data.val_features).double().cpu().numpy()
    targets = data.val_targets.cpu().numpy()
    if criterion == "map":
        return float(np.nanmean(average_precisions(scores, targets)))
    return f1_scores(scores, targets, choose_thresholds(scores, targets, per_class=False))["micro_f1"] or 0.0


@MULTILABEL_STAGE2.register("crt")
@typed_kwargs
def crt(data: MultiLabelStage2Data, *, epochs: PosInt = 10, lr: PosFloat = 0.1, batch_size: PosInt = 128,
        momentum: OpenUnitFloat = 0.9, weight_decay: NonNegFloat = 5e-4, schedule: str = "cosine",
        milestones: Milestones = (), gamma: PosFloat = 0.1, sampler: str = "class_aware",
        sampler_params: Mapping[str, Any] | None = None, loss: str = "bce",
        loss_params: Mapping[str, Any] | None = None, progress: Bool = True) -> Tuple[LinearHead, Dict[str, Any]]:
    """Classifier re-training (Kang et al., ICLR 2020) for multi-label data: a freshly initialised linear head
    trained on frozen features with class-aware sampling and any MULTILABEL_LOSSES loss."""
    recipe = Recipe(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay,
                    schedule=schedule, milestones=milestones, gamma=gamma, progress=progress)
    head = build_module(LinearHead, data.in_features, data.num_classes).to(data.device)
    init_linear_(head.weight, head.bias, seeded_generator(data.seed, data.device))
    curve = _train(head.parameters(), head, data, recipe, sampler=sampler, sampler_params=sampler_params, loss=loss,
                   loss_params=loss_params, desc="multi-label cRT")
    return head, {"loss_curve": curve}


@MULTILABEL_STAGE2.register("lws")
@typed_kwargs
def lws(data: MultiLabelStage2Data, *, epochs: PosInt = 5, lr: PosFloat = 0.1, batch_size: PosInt = 128,
        momentum: OpenUnitFloat = 0.9, weight_decay: NonNegFloat = 5e-4, schedule: str = "cosine",
        milestones: Milestones = (), gamma: PosFloat = 0.1, sampler: str = "class_aware",
        sampler_params: Mapping[str, Any] | None = None, loss: str = "bce",
        loss_params: Mapping[str, Any] | None = None, progress: Bool = True) -> Tuple[LinearHead, Dict[str, Any]]:
    """Learnable weight scaling (Kang et al., ICLR 2020) for multi-label data: logits_j = f_j (w_j x + b_j), only f
    (init 1) learned. Returned as a LinearHead with weight f_j w_j and bias f_j b_j; info["scales"] holds f.

    While every f_j > 0 this only rescales each class's scores, so per-class AP (and mAP) are those of the stage-1
    head, as for tau-norm; what changes is which scores pass a threshold shared by the classes (micro F1).
    """
    recipe = Recipe(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay,
                    schedule=schedule, milestones=milestones, gamma=gamma, progress=progress)
    model = ScaledLogits(copy.deepcopy(data.base_head).requires_grad_(False))
    curve = _train([model.f], model, data, recipe, sampler=sampler, sampler_params=sampler_params, loss=loss,
                   loss_params=loss_params, desc="multi-label LWS")
    return model.fold(), {"loss_curve": curve, "scales": model.f.detach().cpu().tolist()}


def fit_multilabel_stage2(method: str, data: MultiLabelStage2Data, **params: Any) -> Tuple[nn.Module, Dict[str, Any]]:
    """Run method `method` from MULTILABEL_STAGE2; unknown names or parameters raise ConfigError listing valid ones."""
    return MULTILABEL_STAGE2.build(method, data, **params)
