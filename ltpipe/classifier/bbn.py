"""BBN's cumulative learning on frozen features: a conventional and a re-balancing classifier branch, and its head."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ltpipe.classifier.base import STAGE2, Stage2Data, build_module, seeded_generator
from ltpipe.classifier.train import Batch, Recipe, fit, sampler_and_loss
from ltpipe.errors import ConfigError
from ltpipe.losses import LTLoss
from ltpipe.models.heads import HEADS, init_linear_
from ltpipe.samplers import build_sampler
from ltpipe.types import Bool, KwargsBlock, Milestones, NonNegFloat, OpenUnitFloat, PosFloat, PosInt
from ltpipe.train.schedule import ScheduleName
from ltpipe.losses import LossName


def bbn_alpha(epoch: int, total_epochs: int) -> float:
    """BBN's cumulative-learning weight of the conventional branch: alpha = 1 - (t / T)^2, t the 0-based epoch.

    As in the official combiner (`1 - ((epoch - 1) / div_epoch) ** 2` over 1-based epochs), T is the number of epochs
    except for 90 and 180 epochs, where it is 100 and 200 (its ImageNet / iNaturalist schedules), so the last
    epoch's alpha is (2T - 1) / T^2 > 0, never 0.
    """
    div_epoch = 100 * (total_epochs // 100 + 1) if total_epochs in (90, 180) else total_epochs
    return 1.0 - (epoch / div_epoch) ** 2


@HEADS.register("bbn")
class BBNHead(nn.Module):
    """The classifier of BBN (Zhou et al., "BBN: Bilateral-Branch Network with Cumulative Learning for Long-Tailed
    Visual Recognition", CVPR 2020) on frozen features: one linear layer over the concatenated branch features,
    W = [W_c | W_r] and one bias b, so each branch is a linear classifier W_c x_c, W_r x_r sharing b.

    Training: z = W 2[alpha x_c; (1 - alpha) x_r] + b = 2 alpha W_c x_c + 2 (1 - alpha) W_r x_r + b.
    Inference: z = W [x; x] + b = (W_c + W_r) x + b, the official network's test path (both branch features
    unscaled: equal weights, alpha = 1/2 with the factor 2).
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.kwargs = dict(in_features=in_features, num_classes=num_classes)
        self.classifier = nn.Linear(2 * in_features, num_classes)

    @staticmethod
    def mixed_features(x_conventional: torch.Tensor, x_rebalancing: torch.Tensor, alpha: float) -> torch.Tensor:
        # The official combiner doubles the mixed feature, so training at alpha = 1/2 is the inference path.
        return 2 * torch.cat([alpha * x_conventional, (1 - alpha) * x_rebalancing], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([x, x], dim=1))

    def effective_weight(self) -> torch.Tensor:
        """W_c + W_r: the inference logits are effective_weight() x + b."""
        conventional, rebalancing = self.classifier.weight.chunk(2, dim=1)
        return conventional + rebalancing


class CumulativeLearning:
    """BBN's objective (Zhou et al., CVPR 2020; the official combiner's bbn_mix): alpha L(z, y_c) + (1 - alpha)
    L(z, y_r), z the mixed logits of the instance batch (x_c, y_c) and the reversed batch (x_r, y_r), each L the
    loss's own batch reduction, alpha from `bbn_alpha` per epoch."""

    def __init__(self, head: BBNHead, loss_fn: LTLoss):
        self.head, self.loss_fn, self.alpha = head, loss_fn, 1.0

    def set_epoch(self, epoch: int, total_epochs: int) -> None:
        self.alpha = bbn_alpha(epoch, total_epochs)
        self.loss_fn.set_epoch(epoch, total_epochs)

    def __call__(self, batches: Sequence[Batch]) -> torch.Tensor:
        (x_c, y_c), (x_r, y_r) = batches
        mixed = self.head.mixed_features(x_c, x_r, self.alpha)
        lam = torch.full(y_c.shape, self.alpha, dtype=mixed.dtype, device=mixed.device)
        return self.loss_fn(self.head.classifier(mixed), y_c, mixed if self.loss_fn.needs_features else None,
                            y_r, lam)


@STAGE2.register("bbn")
def bbn(data: Stage2Data, *, epochs: PosInt = 10, lr: PosFloat = 0.1, batch_size: PosInt = 128,
        momentum: OpenUnitFloat = 0.9, weight_decay: NonNegFloat = 5e-4, schedule: ScheduleName = "cosine",
        milestones: Milestones = (), gamma: PosFloat = 0.1, loss: LossName = "ce",
        loss_params: KwargsBlock = None, progress: Bool = True) -> Tuple[BBNHead, Dict[str, Any]]:
    """BBN cumulative learning on frozen features (Zhou et al., "BBN: Bilateral-Branch Network with Cumulative
    Learning for Long-Tailed Visual Recognition", CVPR 2020): each step an instance-sampled batch (conventional
    branch) and a reversed-sampled batch (re-balancing branch, p_j proportional to 1/n_j), loss
    alpha L(2 alpha W_c x_c + 2 (1 - alpha) W_r x_r + b, y_c) + (1 - alpha) L(same, y_r), alpha = 1 - (t/T)^2;
    inference (W_c + W_r) x + b.

    The paper's branches are two copies of the backbone's last residual stage; on frozen, cached features they
    cannot exist, so each branch is only its linear classifier on the same features. The classifier starts at
    nn.Linear's init (the loss's initial bias when it has one); a loss that needs a cosine classifier is refused.
    """
    recipe = Recipe(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay,
                    schedule=schedule, milestones=milestones, gamma=gamma, progress=progress)
    instance, loss_fn = sampler_and_loss(data, "instance", None, loss, loss_params)
    if loss_fn.cosine_scale is not None:
        raise ConfigError(f"bbn: loss {loss!r} needs a cosine classifier, which the BBN head does not have; "
                          "use crt with this loss, or another loss")
    reversed_ = build_sampler("reversed", data.train_labels, data.num_classes)
    head = build_module(BBNHead, data.in_features, data.num_classes).to(data.device)
    init_linear_(head.classifier.weight, head.classifier.bias, seeded_generator(data.seed, data.device))
    if loss_fn.initial_bias is not None:
        nn.init.constant_(head.classifier.bias, loss_fn.initial_bias)
    curve = fit(head.parameters(), data, [instance, reversed_], CumulativeLearning(head, loss_fn), recipe, desc="BBN")
    return head, {"loss_curve": curve, "alpha": [bbn_alpha(t, epochs) for t in range(epochs)]}
