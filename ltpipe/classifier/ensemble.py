"""The old/new classifier ensemble of Du & Wu, "No One Left Behind: Improving the Worst Categories in Long-Tailed
Learning" (CVPR 2023): p = (softmax(z_new / t_new) + softmax(z_old / t_old)) / 2, with z_old the stage-1 head's logits
and z_new the retrained stage-2 head's, both on the same frozen features."""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ltpipe.checks import check_real
from ltpipe.classifier.base import build_module
from ltpipe.errors import ConfigError
from ltpipe.models.heads import HEADS
from ltpipe.types import PosFloat


def head_spec(head: nn.Module) -> Dict[str, Any]:
    """{"head": its HEADS name, "kwargs": its constructor arguments}: what rebuilds `head` from the registry."""
    name = next((n for n in HEADS.names() if type(head) is HEADS.get(n)), None)
    if name is None:
        raise ConfigError(f"{type(head).__name__} is not a registered classifier head; registered: "
                          f"{', '.join(HEADS.names())}")
    return {"head": name, "kwargs": dict(head.kwargs)}


@HEADS.register("ensemble")
class EnsembleHead(nn.Module):
    """logits = log p, p = (softmax(z_new / t_new) + softmax(z_old / t_old)) / 2: argmax gives the ensemble's class and
    softmax its probabilities. `old` and `new` are `head_spec`s, so save_head/load_head rebuild both heads."""

    def __init__(self, old: Mapping[str, Any], new: Mapping[str, Any], *, t_old: PosFloat, t_new: PosFloat):
        super().__init__()
        self.old = HEADS.build(old["head"], **old["kwargs"])
        self.new = HEADS.build(new["head"], **new["kwargs"])
        self.t_old = check_real("ensemble t_old", t_old, low=0, include_low=False)
        self.t_new = check_real("ensemble t_new", t_new, low=0, include_low=False)

    @property
    def kwargs(self) -> Dict[str, Any]:
        return dict(old=head_spec(self.old), new=head_spec(self.new), t_old=self.t_old, t_new=self.t_new)

    def effective_weight(self) -> torch.Tensor:
        """The retrained head's class vectors (what the weight-norm plot compares with stage 1)."""
        return self.new.effective_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_p = torch.stack([F.log_softmax(self.new(x) / self.t_new, dim=1),
                             F.log_softmax(self.old(x) / self.t_old, dim=1)])
        # log of the mean probability without leaving log space: small probabilities stay finite
        return torch.logsumexp(log_p, dim=0) - math.log(2)


def ensemble_heads(old: nn.Module, new: nn.Module, *, t_old: PosFloat, t_new: PosFloat) -> EnsembleHead:
    """The ensemble of copies of the stage-1 head `old` and the stage-2 head `new`, in eval mode (it never trains)."""
    ensemble = build_module(EnsembleHead, head_spec(old), head_spec(new), t_old=t_old, t_new=t_new)
    ensemble.old, ensemble.new = copy.deepcopy(old), copy.deepcopy(new)
    return ensemble.eval()
