"""Weight balancing, stage 2: classifier fine-tuning with a class-balanced loss, weight decay and MaxNorm."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ltpipe.checks import check_real
from ltpipe.classifier.base import STAGE2, Stage2Data, plain_copy
from ltpipe.models.heads import LinearHead
from ltpipe.classifier.train import Recipe, Supervised, fit, sampler_and_loss


@STAGE2.register("weight_balancing")
def weight_balancing(data: Stage2Data, *, epochs: int = 10, lr: float = 0.01, batch_size: int = 64,
                     momentum: float = 0.9, weight_decay: float = 0.1, schedule: str = "cosine",
                     milestones: Sequence[int] = (), gamma: float = 0.1, max_norm: float = 0.1,
                     sampler: str = "instance", sampler_params: Optional[Mapping[str, Any]] = None,
                     loss: str = "cb_ce", loss_params: Optional[Mapping[str, Any]] = None,
                     progress: bool = True) -> Tuple[LinearHead, Dict[str, Any]]:
    """Weight balancing, stage 2 (Alshammari et al., "Long-Tailed Recognition via Weight Balancing", CVPR 2022):
    fine-tune the stage-1 classifier with the class-balanced loss (cb_ce, beta 0.9999 by default), weight decay and
    MaxNorm projected gradient descent: after every step w_i <- w_i * min(1, T / ||w_i||).

    As in the paper's code (MaxNorm_via_PGD.setPerLayerThresh), the threshold is relative to the stage-1 norms:
    T = min_i ||w_i|| + max_norm * (max_i ||w_i|| - min_i ||w_i||); the bias is not constrained. Defaults follow
    the paper's second-stage demo (lr 0.01, weight decay 0.1, batch 64, 10 epochs, cosine lr, instance sampling).
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
