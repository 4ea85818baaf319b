"""The task a run solves, chosen once by the top-level `task` key of params.yaml:

- `multiclass`: one label per image, held as int64 class indices (N,);
- `multilabel`: a set of labels per image, held as an (N, C) bool multi-hot matrix.

A `Task` object carries what every stage needs to know about its label format: how labels are checked, written to
and read from the prepared manifests, counted per class (an image with k labels counts once in each of its k
classes), turned into multi-hot targets and into probabilities. `prepare` takes the task from params and records it
in `info.json`; every later stage takes it from the prepared data, so the key is read in one place.

Which data sets, losses, samplers, mixers and stage-2 methods fit a task is a tag on their registry entries
(`Registry.fits`), checked by the params schema before any stage works. What a stage does differently per task (the
splits `prepare` makes, the report `evaluate` writes) is registered under the task's name in that stage's own module:
DVC tracks a stage's code by module, and evaluation code inside this one would make stage 1 depend on it.
"""
from __future__ import annotations

from typing import Any, List, Sequence

import numpy as np
import torch

from ltpipe.errors import ConfigError
from ltpipe.registry import Registry

TASKS = Registry("task")
# Separates the class names of one image in the prepared manifests (`labels` column of a multi-label data set).
LABEL_SEPARATOR = "|"


def require_every_class(counts: Sequence[int], classes: Sequence[str], where: str) -> None:
    """ConfigError naming the first class with no image: a class no training image holds cannot be learned."""
    empty = np.flatnonzero(np.asarray(counts) == 0)
    if len(empty):
        raise ConfigError(f"{where}: class {classes[empty[0]]!r} has no images ({len(empty)} empty class(es) in "
                          f"total); every class needs at least one training image")


class Task:
    """Base: the label format of one task. Methods take numpy arrays or torch tensors and return tensors."""

    name: str = ""
    label_column: str = ""  # the manifest column (`{split}.csv`) holding the labels
    # What stage 2 maximises on the validation split when a method chooses a value (tau-norm's tau).
    selection_metric: str = ""
    # The per-epoch validation metric of stage 1 that `train.select: best_val` maximises (a key of VALIDATION_METRICS).
    epoch_metric: str = ""
    # What stage 1 logs on the validation split every epoch (keys of VALIDATION_METRICS, epoch_metric among them).
    val_metrics: tuple = ()

    def check(self, labels: Any, num_classes: int, what: str = "labels") -> torch.Tensor:
        """`labels` as this task's tensor (int64 (N,) or bool (N, C)); ConfigError if they are not of its format."""
        raise NotImplementedError

    def counts(self, labels: Any, num_classes: int) -> np.ndarray:
        """(C,) int64 images holding each class."""
        return self.multi_hot(labels, num_classes).sum(dim=0).numpy().astype(np.int64)

    def multi_hot(self, labels: Any, num_classes: int) -> torch.Tensor:
        """(N, C) bool targets; for one label per image, its one-hot rows."""
        raise NotImplementedError

    def members(self, labels: Any, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(counts (C,), members): the images of each class, class-major (class j's at offsets j:j + counts[j], in
        image order), what every class-then-image sampler draws from."""
        raise NotImplementedError

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's probability of each class given its logits (N, C)."""
        raise NotImplementedError

    def top1_hits(self, predicted: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(N,) float: 1 where the predicted class (N,) is one of the image's labels. No checks, so no device sync:
        training loops call it every step."""
        raise NotImplementedError

    def encode(self, labels: Any, classes: Sequence[str]) -> List[Any]:
        """The manifest column of `labels`."""
        raise NotImplementedError

    def decode(self, column: Sequence[str], classes: Sequence[str], where: str) -> torch.Tensor:
        """Labels from the manifest column `column` (strings as read); ConfigError naming `where` and the row."""
        raise NotImplementedError

    def describe(self, labels: Any, classes: Sequence[str]) -> List[str]:
        """One text per image naming its labels (for tables and maps coloured by class)."""
        hot = self.multi_hot(labels, len(classes)).numpy()
        return [LABEL_SEPARATOR.join(classes[j] for j in np.flatnonzero(row)) for row in hot]


@TASKS.register("multiclass")
class MultiClass(Task):
    """One label per image: int64 class indices; probabilities are the softmax."""

    name = "multiclass"
    label_column = "label"
    # Mean per-class recall: what long-tailed evaluation reports (classifier-balancing's tau_norm.py scores each tau
    # by it); on a class-balanced val split it is top-1 accuracy, on an imbalanced one the head cannot outvote the tail.
    selection_metric = "balanced_acc"
    epoch_metric = "balanced_acc"
    val_metrics = ("acc", "balanced_acc", "map")

    def check(self, labels, num_classes, what="labels"):
        labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ConfigError(f"{what} must be integer class indices, got dtype {labels.dtype}")
        if labels.dim() != 1:
            raise ConfigError(f"{what} must be a 1-D tensor of class indices (one label per image), got shape "
                              f"{tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ConfigError(f"{what} must lie in [0, {num_classes - 1}] (num_classes={num_classes}), found "
                              f"[{int(labels.min())}, {int(labels.max())}]")
        return labels.long()

    def counts(self, labels, num_classes):
        return torch.bincount(self.check(labels, num_classes), minlength=num_classes).numpy().astype(np.int64)

    def multi_hot(self, labels, num_classes):
        labels = self.check(labels, num_classes)
        return torch.nn.functional.one_hot(labels, num_classes).bool()

    def members(self, labels, num_classes):
        labels = self.check(labels, num_classes)
        return torch.bincount(labels, minlength=num_classes), torch.argsort(labels, stable=True)

    def probabilities(self, logits):
        return torch.softmax(logits, dim=1)

    def top1_hits(self, predicted, labels):
        return (predicted == labels).float()

    def encode(self, labels, classes):
        return [int(c) for c in np.asarray(labels)]

    def decode(self, column, classes, where):
        try:
            labels = np.asarray([int(v) for v in column], dtype=np.int64)
        except ValueError as exc:
            raise ConfigError(f"{where}: a label is not a class index ({exc}); run the prepare stage again") from None
        return self.check(labels, len(classes), f"{where} labels")


@TASKS.register("multilabel")
class MultiLabel(Task):
    """A set of labels per image: an (N, C) bool multi-hot matrix, every image with at least one label; probabilities
    are each class's sigmoid. Manifests hold the class names joined by `LABEL_SEPARATOR`."""

    name = "multilabel"
    label_column = "labels"
    # Per-class AP only depends on the order of each class's scores, so a per-class rescaling (tau-norm, LWS) cannot
    # change it: a choice among such heads is made on micro F1 (one threshold shared by all classes) instead.
    selection_metric = "micro_f1"
    epoch_metric = "map"
    val_metrics = ("acc", "map")

    def check(self, labels, num_classes, what="labels"):
        labels = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        if labels.dim() != 2 or labels.shape[1] != num_classes:
            raise ConfigError(f"{what} must be an (N, {num_classes}) multi-hot matrix (one row per image), got "
                              f"shape {tuple(labels.shape)}")
        if labels.dtype != torch.bool and ((labels != 0) & (labels != 1)).any():
            raise ConfigError(f"{what} must be multi-hot: every entry 0 or 1")
        labels = labels.bool()
        unlabeled = torch.nonzero(~labels.any(dim=1)).flatten()
        if unlabeled.numel():
            raise ConfigError(f"{what}: row {int(unlabeled[0])} has no label ({unlabeled.numel()} such row(s)); every "
                              f"image needs at least one")
        return labels

    def multi_hot(self, labels, num_classes):
        return self.check(labels, num_classes)

    def members(self, labels, num_classes):
        labels = self.check(labels, num_classes)
        return labels.sum(dim=0), torch.nonzero(labels.T)[:, 1]

    def probabilities(self, logits):
        return torch.sigmoid(logits)

    def top1_hits(self, predicted, labels):
        return labels.gather(1, predicted[:, None]).squeeze(1).float()

    def encode(self, labels, classes):
        bad = [c for c in classes if LABEL_SEPARATOR in c]
        if bad:
            raise ConfigError(f"class name {bad[0]!r} contains {LABEL_SEPARATOR!r}, which separates the labels of an "
                              f"image in the prepared manifests; rename the class")
        return self.describe(labels, classes)

    def decode(self, column, classes, where):
        index = {c: j for j, c in enumerate(classes)}
        labels = np.zeros((len(column), len(classes)), dtype=bool)
        for row, text in enumerate(column):
            for name in str(text).split(LABEL_SEPARATOR):
                if name not in index:
                    raise ConfigError(f"{where}: row {row + 1} has label {name!r}, which is not a class; run the "
                                      f"prepare stage again")
                labels[row, index[name]] = True
        return self.check(labels, len(classes), f"{where} labels")


def get_task(name: str) -> Task:
    """The Task of `name` (ConfigError listing the valid names otherwise)."""
    return TASKS.get(name)()


def task_of(labels: Any) -> Task:
    """The task whose format `labels` have: (N, C) multi-hot for multilabel, anything else (checked by the task) is
    one label per image. For library entry points that take labels without a task (samplers, stage-2 data)."""
    shape = labels.shape if hasattr(labels, "shape") else np.shape(labels)
    return MultiLabel() if len(shape) == 2 else MultiClass()
