"""MiSLAS stage 2: classifier and per-class logit scales retrained with label-aware smoothing."""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ltpipe.checks import check_real
from ltpipe.classifier.base import STAGE2, Stage2Data
from ltpipe.models.heads import LinearHead
from ltpipe.classifier.lws import ScaledLogits
from ltpipe.classifier.train import Recipe, Supervised, fit, sampler_and_loss


@STAGE2.register("mislas")
def mislas(data: Stage2Data, *, epochs: int = 10, lr: float = 0.1, head_lr_factor: float = 0.2,
           batch_size: int = 128, momentum: float = 0.9, weight_decay: float = 2e-4, schedule: str = "cosine",
           milestones: Sequence[int] = (), gamma: float = 0.1, sampler: str = "class_balanced",
           sampler_params: Optional[Mapping[str, Any]] = None, eps_head: float = 0.4, eps_tail: float = 0.1,
           shape: str = "concave", power: float = 2.0, progress: bool = True) -> Tuple[LinearHead, Dict[str, Any]]:
    """MiSLAS stage 2 (Zhong et al., "Improving Calibration for Long-Tailed Recognition", CVPR 2021): the stage-1
    classifier and a learnable per-class logit scale f (init 1) fine-tuned with class-balanced sampling and
    label-aware smoothing, L = -sum_c q_c log p_c, q = (1 - eps_y) onehot(y) + eps_y / C, eps_y from eps_tail
    (rarest class) to eps_head (most frequent) along the paper's `shape` (concave sin by default; `power` is the
    exponent of its "exp" shape), i.e. the `las` loss.

    As in the paper's code, the classifier learns at head_lr_factor * lr and f at lr; defaults are its CIFAR-100-LT
    (imbalance 100) settings. Shifted BN does not apply: the backbone is frozen and the features are precomputed.
    Returned as one LinearHead with weight f_i w_i and bias f_i b_i.
    """
    check_real("head_lr_factor", head_lr_factor, low=0, include_low=False)
    recipe = Recipe(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay,
                    schedule=schedule, milestones=milestones, gamma=gamma, progress=progress)
    built_sampler, loss_fn = sampler_and_loss(data, sampler, sampler_params, "las",
                                              dict(eps_head=eps_head, eps_tail=eps_tail, shape=shape, power=power))
    model = ScaledLogits(copy.deepcopy(data.base_head).requires_grad_(True))
    groups = [{"params": list(model.head.parameters()), "lr": lr * head_lr_factor}, {"params": [model.f]}]
    curve = fit(groups, data, [built_sampler], Supervised(model, loss_fn), recipe, desc="MiSLAS")
    return model.fold(), {"loss_curve": curve, "scales": model.f.detach().cpu().tolist()}
