"""Weight balancing, stage 2: classifier fine-tuning with a class-balanced loss, weight decay and MaxNorm."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

from ltpipe.checks import check_real
from ltpipe.classifier.base import STAGE2, Stage2Data, plain_copy
from ltpipe.models.heads import LinearHead
from ltpipe.classifier.train import Recipe, Supervised, fit, sampler_and_loss
from ltpipe.types import Bool, KwargsBlock, Milestones, NonNegFloat, OpenUnitFloat, PosFloat, PosInt
from ltpipe.train.schedule import ScheduleName
from ltpipe.samplers import SamplerName
from ltpipe.losses import LossName


@STAGE2.register("weight_balancing")
def weight_balancing(data: Stage2Data, *, epochs: PosInt = 10, lr: PosFloat = 0.01, batch_size: PosInt = 64,
                     momentum: OpenUnitFloat = 0.9, weight_decay: NonNegFloat = 0.1, schedule: ScheduleName = "cosine",
                     milestones: Milestones = (), gamma: PosFloat = 0.1, max_norm: NonNegFloat = 0.1,
                     sampler: SamplerName = "instance", sampler_params: KwargsBlock = None,
                     loss: LossName = "cb_softmax_bce", loss_params: KwargsBlock = None,
                     progress: Bool = True) -> Tuple[LinearHead, Dict[str, Any]]:
    """Weight balancing, stage 2 (Alshammari et al., "Long-Tailed Recognition via Weight Balancing", CVPR 2022):
    fine-tune the stage-1 classifier (W and b) with a class-balanced loss and weight decay, projecting with MaxNorm
    after every epoch: w_i <- w_i * min(1, T / ||w_i||).

    As in the authors' code (ShadeAlsha/LTR-weight-balancing, utils/regularizers.py MaxNorm_via_PGD, called once per
    training epoch in utils/trainval.py), T = min_i ||w_i|| + max_norm * (max_i ||w_i|| - min_i ||w_i||) over the
    stage-1 norms and the bias is not constrained. Defaults are their only second-stage run (demo2, CIFAR-100-LT
    imbalance 100; the paper gives no CIFAR-10 values): lr 0.01, weight decay 0.1, batch 64, 10 epochs, cosine lr,
    instance sampling, MaxNorm 0.1, and their class-balanced loss CB_loss(..., "softmax", beta=0.9999), which is
    binary cross-entropy on the softmax probabilities (`cb_softmax_bce`; `cb_ce` is the softmax cross-entropy form).

    Differences from their code: the cosine lr decays per step (theirs steps CosineAnnealingLR at the start of each
    epoch, so its last epoch runs at lr 0); the final head is returned, not the epoch with the best test accuracy.
    """
    check_real("max_norm", max_norm, low=0)
    recipe = Recipe(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay,
                    schedule=schedule, milestones=milestones, gamma=gamma, progress=progress)
    built_sampler, loss_fn = sampler_and_loss(data, sampler, sampler_params, loss, loss_params)
    head = plain_copy(data.base_head)
    norms = head.weight.detach().norm(dim=1)
    threshold = norms.min() + max_norm * (norms.max() - norms.min())

    def project() -> None:
        head.weight.mul_((threshold / head.weight.norm(dim=1).clamp_min(1e-12)).clamp(max=1)[:, None])

    curve = fit(head.parameters(), data, [built_sampler], Supervised(head, loss_fn), recipe, project=project,
                desc="weight balancing")
    return head, {"loss_curve": curve, "max_norm_threshold": threshold.item()}
