"""BBN-style bilateral-branch cumulative learning on frozen features, and its head."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ltpipe.checks import check_int
from ltpipe.classifier.base import STAGE2, Stage2Data, build_module, seeded_generator
from ltpipe.models.heads import HEADS, init_linear_
from ltpipe.classifier.train import Batch, Recipe, fit, sampler_and_loss
from ltpipe.losses import LTLoss
from ltpipe.samplers import build_sampler


def bbn_alpha(epoch: int, total_epochs: int) -> float:
    """BBN's cumulative-learning weight of the conventional branch: alpha = 1 - (t / T)^2, t the 0-based epoch."""
    return 1.0 - (epoch / total_epochs) ** 2


@HEADS.register("bbn")
class BBNHead(nn.Module):
    """Two branches on the features, each Linear + ReLU (width `hidden`), and one shared linear classifier
    (Zhou et al., "BBN: Bilateral-Branch Network with Cumulative Learning for Long-Tailed Visual Recognition",
    CVPR 2020): logits = W [alpha f_c(x_c); (1 - alpha) f_r(x_r)] + b; inference feeds x to both with alpha = 0.5.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int):
        super().__init__()
        self.kwargs = dict(in_features=in_features, num_classes=num_classes, hidden=hidden)
        self.conventional = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.rebalancing = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU())
        self.classifier = nn.Linear(2 * hidden, num_classes)

    def mixed_features(self, x_conventional: torch.Tensor, x_rebalancing: torch.Tensor, alpha: float) -> torch.Tensor:
        return torch.cat([alpha * self.conventional(x_conventional),
                          (1 - alpha) * self.rebalancing(x_rebalancing)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.mixed_features(x, x, 0.5))


class CumulativeLearning:
    """BBN's objective (Zhou et al., CVPR 2020): alpha L(out, y_c) + (1 - alpha) L(out, y_r), out from the instance
    batch (conventional branch) and the reversed batch (re-balancing branch), alpha from `bbn_alpha` per epoch."""

    def __init__(self, head: BBNHead, loss_fn: LTLoss):
        self.head, self.loss_fn, self.alpha = head, loss_fn, 1.0

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        self.alpha = bbn_alpha(epoch, total_epochs)
        self.loss_fn.set_epoch(epoch, total_epochs)

    def __call__(self, batches: Sequence[Batch]) -> torch.Tensor:
        (x_c, y_c), (x_r, y_r) = batches
        mixed = self.head.mixed_features(x_c, x_r, self.alpha)
        out = self.head.classifier(mixed)
        features = mixed if self.loss_fn.needs_features else None
        return (self.alpha * self.loss_fn(out, y_c, features)
                + (1 - self.alpha) * self.loss_fn(out, y_r, features)).mean()


@STAGE2.register("bbn")
def bbn(data: Stage2Data, *, epochs: int = 10, lr: float = 0.1, batch_size: int = 128, momentum: float = 0.9,
        weight_decay: float = 5e-4, schedule: str = "cosine", milestones: Sequence[int] = (), gamma: float = 0.1,
        hidden: Optional[int] = None, loss: str = "ce", loss_params: Optional[Mapping[str, Any]] = None,
        progress: bool = True) -> Tuple[BBNHead, Dict[str, Any]]:
    """BBN cumulative learning on frozen features (Zhou et al., "BBN: Bilateral-Branch Network with Cumulative
    Learning for Long-Tailed Visual Recognition", CVPR 2020): instance-sampled and reversed-sampled batches each
    step, loss = alpha L(W[alpha f_c; (1-alpha) f_r], y_c) + (1-alpha) L(same, y_r), alpha = 1 - (t/T)^2.

    The branches are small adapters on the cached features (the backbone stays frozen); hidden=None uses D.
    """
    hidden = data.in_features if hidden is None else hidden
    check_int("hidden", hidden, 1)
    recipe = Recipe(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay,
                    schedule=schedule, milestones=milestones, gamma=gamma, progress=progress)
    instance, loss_fn = sampler_and_loss(data, "instance", None, loss, loss_params)
    reversed_ = build_sampler("reversed", data.train_labels, data.num_classes)
    head = build_module(BBNHead, data.in_features, data.num_classes, hidden).to(data.device)
    generator = seeded_generator(data.seed, data.device)
    for layer in (head.conventional[0], head.rebalancing[0], head.classifier):
        init_linear_(layer.weight, layer.bias, generator)
    objective = CumulativeLearning(head, loss_fn)
    curve = fit(head.parameters(), data, [instance, reversed_], objective, recipe, desc="BBN")
    return head, {"loss_curve": curve, "alpha": [bbn_alpha(t, epochs) for t in range(epochs)]}
