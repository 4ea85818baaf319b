"""cRT: classifier re-training from scratch on frozen features."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

from ltpipe.classifier.base import BOTH_TASKS, STAGE2, Stage2Data, build_module, seeded_generator
from ltpipe.models.heads import LinearHead, classifier_kwargs
from ltpipe.classifier.train import Recipe, Supervised, fit, sampler_and_loss
from ltpipe.types import Bool, KwargsBlock, Milestones, NonNegFloat, OpenUnitFloat, PosFloat, PosInt
from ltpipe.train.schedule import ScheduleName
from ltpipe.samplers import SamplerName
from ltpipe.losses import LossName


@STAGE2.register("crt", tasks=BOTH_TASKS)
def crt(data: Stage2Data, *, epochs: PosInt = 10, lr: PosFloat = 0.1, batch_size: PosInt = 128,
        momentum: OpenUnitFloat = 0.9, weight_decay: NonNegFloat = 5e-4, schedule: ScheduleName = "cosine",
        milestones: Milestones = (), gamma: PosFloat = 0.1, sampler: SamplerName = "class_balanced",
        sampler_params: KwargsBlock = None, loss: LossName = "ce",
        loss_params: KwargsBlock = None, progress: Bool = True) -> Tuple[LinearHead, Dict[str, Any]]:
    """Classifier re-training (Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
    ICLR 2020): a freshly initialised head trained with class-balanced sampling, min_{W,b} E_{(x,y)~p_cb} L(Wx+b, y).

    The head is built as stage 1 builds it for the loss: a cosine classifier (NormedLinear, no bias) for LDAM, the
    loss's initial bias for a sigmoid loss (cb_focal). Multi-label data take a multi-label loss (bce, focal_bce,
    cb_bce, db, asl) and, as in the DB paper's re-sampling, the class_aware sampler.
    """
    recipe = Recipe(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay,
                    schedule=schedule, milestones=milestones, gamma=gamma, progress=progress)
    built_sampler, loss_fn = sampler_and_loss(data, sampler, sampler_params, loss, loss_params)
    head = build_module(LinearHead, data.in_features, data.num_classes,
                        **classifier_kwargs(loss_fn.cosine_scale)).to(data.device)
    head.reset_parameters(seeded_generator(data.seed, data.device), bias=loss_fn.initial_bias)
    curve = fit(head.parameters(), data, [built_sampler], Supervised(head, loss_fn), recipe, desc="cRT")
    return head, {"loss_curve": curve}
