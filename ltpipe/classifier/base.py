"""What every stage-2 method receives, the method registry, and the small helpers the methods share."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

import torch
from torch import nn

from ltpipe.models.heads import LinearHead
from ltpipe.errors import ConfigError
from ltpipe.multilabel.metrics import VALIDATION_METRICS
from ltpipe.registry import Registry
from ltpipe.tasks import Task, task_of

# Methods fit the multiclass task unless they register the tasks they fit.
STAGE2 = Registry("stage-2 method", fixed=("data", "progress"), tasks=("multiclass",))
BOTH_TASKS = ("multiclass", "multilabel")


@dataclass
class Stage2Data:
    """Frozen-backbone features of the train split and the validation split (never the test set), their labels in
    the task's format (int64 class indices (N,) or an (N, C) multi-hot matrix), the train images per class, the
    stage-1 head, the run seed, the task (default: the one whose format the train labels have) and optionally
    `train_views`, (V, N, D) features of V augmented views of the train images, which the training loop of
    ltpipe.classifier.train uses in turn, one per epoch, in place of `train_features`."""

    train_features: torch.Tensor
    train_labels: torch.Tensor
    val_features: torch.Tensor
    val_labels: torch.Tensor
    class_counts: List[int]
    base_head: LinearHead
    seed: int
    task: Optional[Task] = None
    train_views: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        num_classes = len(self.class_counts)
        self.task = self.task or task_of(self.train_labels)
        for split in ("train", "val"):
            x, y = getattr(self, f"{split}_features"), getattr(self, f"{split}_labels")
            setattr(self, f"{split}_labels", self.task.check(y, num_classes, f"{split} labels").to(y.device))
            if x.dim() != 2 or x.shape[0] != y.shape[0]:
                raise ConfigError(f"{split} features must be (N, D) with one row per label row, got {tuple(x.shape)} "
                                  f"and labels {tuple(y.shape)}")
        if self.train_labels.shape[0] == 0:
            raise ConfigError("stage 2 needs at least one training feature, got none")
        views = self.train_views
        if views is not None and (views.dim() != 3 or views.shape[0] == 0
                                  or tuple(views.shape[1:]) != tuple(self.train_features.shape)):
            raise ConfigError(f"train_views must be (V, N, D) with V >= 1 and (N, D) = train features "
                              f"{tuple(self.train_features.shape)}, got {tuple(views.shape)}")
        if self.val_features.shape[1] != self.in_features:
            raise ConfigError(f"val features have dimension {self.val_features.shape[1]}, train features "
                              f"{self.in_features}")
        if tuple(self.base_head.weight.shape) != (num_classes, self.in_features):
            raise ConfigError(f"stage-1 head maps {self.base_head.weight.shape[1]} features to "
                              f"{self.base_head.weight.shape[0]} classes; the data has {self.in_features} features "
                              f"and {num_classes} classes")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    @property
    def in_features(self) -> int:
        return self.train_features.shape[1]

    @property
    def num_images(self) -> int:
        return self.train_labels.shape[0]

    @property
    def device(self) -> torch.device:
        return self.train_features.device


def seeded_generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def build_module(cls, *args: Any, **kwargs: Any) -> nn.Module:
    """Construct without advancing the global RNG: the constructor's default init is overwritten by the caller."""
    with torch.random.fork_rng(devices=[]):
        return cls(*args, **kwargs)


@torch.no_grad()
def make_linear(weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *, center: Optional[torch.Tensor] = None,
                normalize_input: bool = False, scale: float = 1.0) -> LinearHead:
    """A LinearHead with the given weight (used as is), bias and input centre."""
    num_classes, in_features = weight.shape
    head = build_module(LinearHead, in_features, num_classes, bias=bias is not None, normalize_input=normalize_input,
                        center_input=center is not None, scale=scale).to(weight.device)
    head.weight.copy_(weight)
    if bias is not None:
        head.bias.copy_(bias)
    if center is not None:
        head.center.copy_(center)
    return head


def linear_like(base: LinearHead, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> LinearHead:
    """A plain LinearHead (no weight normalisation) with `base`'s input processing and logit scale."""
    return make_linear(weight, bias, center=base.center, normalize_input=base.normalize_input, scale=base.scale)


def plain_copy(base: LinearHead) -> LinearHead:
    """The stage-1 head with its effective weight stored as a plain weight: same logits, trainable W and b."""
    bias = None if base.bias is None else base.bias.detach()
    return linear_like(base, base.effective_weight().detach(), bias)


@torch.no_grad()
def validation_score(head: nn.Module, data: Stage2Data) -> float:
    """The task's selection metric (`Task.selection_metric`: mean per-class recall for one label per image, micro F1
    at the best shared threshold for multi-label data) of `head` on the validation split."""
    scores = head(data.val_features).double().cpu().numpy()
    targets = data.task.multi_hot(data.val_labels.cpu(), data.num_classes).numpy()
    return VALIDATION_METRICS[data.task.selection_metric](scores, targets)
