"""LWS: learnable per-class scaling of the frozen stage-1 logits."""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from ltpipe.classifier.base import BOTH_TASKS, STAGE2, Stage2Data, linear_like
from ltpipe.models.heads import LinearHead
from ltpipe.types import Bool, KwargsBlock, Milestones, NonNegFloat, OpenUnitFloat, PosFloat, PosInt
from ltpipe.classifier.train import Recipe, Supervised, fit, sampler_and_loss
from ltpipe.train.schedule import ScheduleName
from ltpipe.samplers import SamplerName
from ltpipe.losses import LossName


class ScaledLogits(nn.Module):
    """f_i * head(x)_i with a learnable per-class scale f initialised to 1: the LWS layer of Kang et al.
    ("Decoupling Representation and Classifier for Long-Tailed Recognition", ICLR 2020), reused by MiSLAS."""

    def __init__(self, head: LinearHead):
        super().__init__()
        self.head = head
        self.f = nn.Parameter(torch.ones(head.weight.shape[0], dtype=head.weight.dtype, device=head.weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.f * self.head(x)

    @torch.no_grad()
    def fold(self) -> LinearHead:
        """f_i * s (w_i g(x) + b_i) = s ((f_i w_i) g(x) + f_i b_i): the same logits from one plain LinearHead."""
        bias = None if self.head.bias is None else self.f * self.head.bias
        return linear_like(self.head, self.f[:, None] * self.head.effective_weight(), bias)


@STAGE2.register("lws", tasks=BOTH_TASKS)
def lws(data: Stage2Data, *, epochs: PosInt = 5, lr: PosFloat = 0.1, batch_size: PosInt = 128,
        momentum: OpenUnitFloat = 0.9, weight_decay: NonNegFloat = 5e-4, schedule: ScheduleName = "cosine",
        milestones: Milestones = (), gamma: PosFloat = 0.1, sampler: SamplerName = "class_balanced",
        sampler_params: KwargsBlock = None, loss: LossName = "ce", loss_params: KwargsBlock = None,
        progress: Bool = True) -> Tuple[LinearHead, Dict[str, Any]]:
    """Learnable weight scaling (Kang et al., "Decoupling Representation and Classifier for Long-Tailed
    Recognition", ICLR 2020): logits_i = f_i * (w_i x + b_i), only f (init 1) learned, W and b frozen.

    Returned as a LinearHead with weight f_i w_i and bias f_i b_i; info["scales"] holds f. For multi-label data (a
    multi-label loss, class-aware sampling) a positive f_i keeps class i's score order and hence its AP: what changes
    is which scores pass a threshold shared by the classes. Nothing keeps f_i positive (neither does the authors'
    code); a negative one reverses the class's ranking, which the recorded scales show.
    """
    recipe = Recipe(epochs=epochs, lr=lr, batch_size=batch_size, momentum=momentum, weight_decay=weight_decay,
                    schedule=schedule, milestones=milestones, gamma=gamma, progress=progress)
    built_sampler, loss_fn = sampler_and_loss(data, sampler, sampler_params, loss, loss_params)
    model = ScaledLogits(copy.deepcopy(data.base_head).requires_grad_(False))
    curve = fit([model.f], data, [built_sampler], Supervised(model, loss_fn), recipe, desc="LWS")
    return model.fold(), {"loss_curve": curve, "scales": model.f.detach().cpu().tolist()}
