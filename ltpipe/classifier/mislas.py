"""MiSLAS stage 2: classifier and per-class logit scales retrained with label-aware smoothing."""
from __future__ import annotations

import copy
from typing import Any, Dict, Literal, Mapping, Optional, Tuple

from ltpipe.checks import check_real
from ltpipe.classifier.base import STAGE2, Stage2Data
from ltpipe.models.heads import LinearHead
from ltpipe.classifier.lws import ScaledLogits
from ltpipe.classifier.train import Recipe, Supervised, fit, sampler_and_loss
from ltpipe.types import Bool, KwargsBlock, Milestones, NonNegFloat, OpenUnitFloat, PosFloat, PosInt, UnitFloat
from ltpipe.train.schedule import ScheduleName
from ltpipe.samplers import SamplerName


@STAGE2.register("mislas")
def mislas(data: Stage2Data, *, epochs: PosInt = 10, lr: PosFloat = 0.1, head_lr_factor: PosFloat = 0.5,
           batch_size: PosInt = 128, momentum: OpenUnitFloat = 0.9, weight_decay: NonNegFloat = 2e-4,
           schedule: ScheduleName = "cosine", milestones: Milestones = (), gamma: PosFloat = 0.1, sampler: SamplerName = "class_aware",
           sampler_params: KwargsBlock = None, eps_head: UnitFloat = 0.3, eps_tail: UnitFloat = 0.0,
           shape: Literal["concave", "linear", "convex", "exp"] = "concave", power: PosFloat = 2.0,
           progress: Bool = True) -> Tuple[LinearHead, Dict[str, Any]]:
    """MiSLAS stage 2 (Zhong et al., "Improving Calibration for Long-Tailed Recognition", CVPR 2021): the stage-1
    classifier (W, b, at head_lr_factor * lr) and a learnable per-class logit scale f (init 1, at lr) fine-tuned with
    class-aware sampling and label-aware smoothing, L = -sum_c q_c log p_c, q = (1 - eps_y) onehot(y) + eps_y / C,
    eps_y from eps_tail (rarest class) to eps_head (most frequent) along `shape` (`power` is the exponent of "exp"),
    i.e. the `las` loss. Returned as one LinearHead with weight f_i w_i and bias f_i b_i.

    Defaults are the authors' CIFAR-10-LT imbalance-100 config (dvlab-research/MiSLAS, config/cifar10/
    cifar10_imb001_stage2_mislas.yaml): eps 0.3 / 0.0, head_lr_factor 0.5, lr 0.1, batch 128, weight decay 2e-4,
    10 epochs, their ClassAwareSampler (4 draws per class, the `class_aware` sampler). Their other configs
    (eps_head / eps_tail, head_lr_factor): CIFAR-10-LT IF50 0.2 / 0.0, 0.2; IF10 0.1 / 0.0, 0.2; CIFAR-100-LT IF100
    0.4 / 0.1, 0.2; IF50 0.3 / 0.0, 0.1; IF10 0.2 / 0.0, 0.1; ImageNet-LT 0.3 / 0.0, 0.05 (batch 256, wd 5e-4);
    iNaturalist 2018 0.3 / 0.0, 0.05 (batch 256, wd 1e-4); Places-LT 0.4 / 0.1, 0.05 (batch 256, wd 5e-4).

    Differences from their code: the cosine lr decays per step (theirs per epoch); the features are cached, so
    stage 2 sees augmented images only through `stage2.train_views` (without it, 0.5 top-1 less on CIFAR-10-LT
    IF100 than their loop: README) and no shifted BN (their CIFAR-100 and large-scale configs re-estimate BN
    statistics); the final head is returned, not the epoch with the best test accuracy.
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
