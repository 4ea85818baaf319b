"""cRT: classifier re-training from scratch on frozen features."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from ltpipe.classifier.base import STAGE2, Stage2Data, build_module, init_linear_, seeded_generator
from ltpipe.models.heads import LinearHead
from ltpipe.classifier.train import Recipe, Supervised, fit, sampler_and_loss


@STAGE2.register("crt")
def crt(data: Stage2Data, *, epochs: int = 10, lr: float = 0.1, batch_size: int = 128, momentum: float = 0.9,
        weight_decay: float = 5e-4, schedule: str = "cosine", milestones: Sequence[int] = (), gamma: float = 0.1,
        sampler: str = "class_balanced", sampler_params: Optional[Mapping[str, Any]] = None, loss: str = "ce",
        loss_params: Optional[Mapping[str, Any]] = None, progress: bool = True) -> Tuple[LinearHead, Dict[str, Any]]:
    """Classifier re-training (Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
    ICLR 2020): a freshly initialised head trained with class-balanced sampling, min_{W,b} E_{(x,y)~p_cb} L(Wx+b, y).

    A loss that needs a cosine classifier (LDAM) gets a normalised, bias-free head, as in stage 1.
    """
    recipe = Recipe(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay,
                    schedule=schedule, milestones=milestones, gamma=gamma, progress=progress)
    built_sampler, loss_fn = sampler_and_loss(data, sampler, sampler_params, loss, loss_params)
    normed = loss_fn.needs_normed_classifier
    head = build_module(LinearHead, data.in_features, data.num_classes, bias=not normed,
                        normalize_weight=normed).to(data.device)
    init_linear_(head.weight, head.bias, seeded_generator(data.seed, data.device))
    curve = fit(head.parameters(), data, [built_sampler], Supervised(head, loss_fn), recipe, desc="cRT")
    return head, {"loss_curve": curve}
