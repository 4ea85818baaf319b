"""The causal-TDE classifier head of Tang, Huang & Zhang, "Long-Tailed Classification by Keeping the Good and Removing
the Bad Momentum Causal Effect" (NeurIPS 2020), after the authors' code (KaihuaTang/Long-Tailed-Recognition.pytorch:
classification/models/CausalNormClassifier.py, and the moving average in classification/run_networks.py).

Features x and weights w_c are cut into K heads (equal slices of the feature dimensions); x^_k = x_k / ||x_k||.
Training:   z_c = sum_k (tau/K) <x^_k, w_ck / (||w_ck|| + gamma)>
Inference:  z_c = sum_k (tau/K) <x^_k - alpha cos(x^_k, d^_k) d^_k, w_ck / (||w_ck|| + gamma)>, d^_k = d_k / ||d_k||
with d the moving average of the training features, d <- momentum * d + mean_batch(x), updated by each training
forward (the authors' accumulation, not an EMA weighted 1 - momentum: only its direction is used).

alpha only acts at inference: set `head.alpha` (or call `tde_logits(x, alpha)`) on a trained head to change it.
Authors' alpha: 1.0 CIFAR-10-LT, 1.5 CIFAR-100-LT, 3.0 ImageNet-LT; 2 heads, tau 16, gamma 1/32 everywhere.
Deviations: norms are clamped at 1e-12, so a zero feature slice (or d before any training step) gives 0, not NaN,
and TDE with d = 0 equals the training logits; the authors' ImageNet schedule of momentum (1 - 0.1 min(50 lr, 1) per
epoch) is not reproduced: momentum is the constant of their CIFAR runs.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List

import torch
from torch import nn

from ltpipe.errors import ConfigError
from ltpipe.models.heads import HEADS
from ltpipe.types import NonNegFloat, PosFloat, PosInt, UnitFloat

_EPS = 1e-12


def _l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / torch.norm(x, 2, 1, keepdim=True).clamp_min(_EPS)


@HEADS.register("causal")
class CausalNormHead(nn.Module):
    """Cosine-style multi-head classifier with de-confounded (TDE) inference; no bias, as in the authors' code."""

    def __init__(self, in_features: PosInt, num_classes: PosInt, *, num_heads: PosInt = 2, tau: PosFloat = 16.0,
                 gamma: NonNegFloat = 0.03125, alpha: NonNegFloat = 1.0, momentum: UnitFloat = 0.9):
        super().__init__()
        if in_features % num_heads:
            divisors = [str(k) for k in range(1, in_features + 1) if not in_features % k]
            raise ConfigError(f"causal head: num_heads={num_heads} must divide the feature dimension {in_features}; "
                              f"valid choices: {', '.join(divisors)}")
        self.in_features, self.num_classes, self.num_heads = in_features, num_classes, num_heads
        self.tau, self.gamma, self.alpha, self.momentum = tau, gamma, alpha, momentum
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.register_buffer("embed", torch.zeros(in_features))  # d, the moving average of training features
        bound = 1.0 / math.sqrt(in_features)  # the authors' reset_parameters
        nn.init.uniform_(self.weight, -bound, bound)

    @property
    def kwargs(self) -> Dict[str, Any]:
        """The constructor's arguments, with the current alpha: what save_head stores."""
        return dict(in_features=self.in_features, num_classes=self.num_classes, num_heads=self.num_heads,
                    tau=self.tau, gamma=self.gamma, alpha=self.alpha, momentum=self.momentum)

    def _split(self, t: torch.Tensor) -> List[torch.Tensor]:
        return list(torch.split(t, self.in_features // self.num_heads, dim=1))

    def _per_head(self, fn, t: torch.Tensor) -> torch.Tensor:
        return torch.cat([fn(part) for part in self._split(t)], dim=1)

    def effective_weight(self) -> torch.Tensor:
        """The class vectors the logits use (per-head causal_norm), e.g. for the weight-norm plot."""
        return self.normed_weight()

    def normed_weight(self) -> torch.Tensor:
        """w_ck / (||w_ck|| + gamma) per head: the authors' causal_norm."""
        return self._per_head(lambda w: w / (torch.norm(w, 2, 1, keepdim=True) + self.gamma), self.weight)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The training logits (no de-confounding)."""
        scale = self.tau / self.num_heads
        return torch.mm(self._per_head(_l2_normalize, x) * scale, self.normed_weight().t())

    def tde_logits(self, x: torch.Tensor, alpha: float) -> torch.Tensor:
        """The total-direct-effect logits: each unit head feature minus alpha times its projection on d^_k."""
        scale = self.tau / self.num_heads
        heads = zip(self._split(self._per_head(_l2_normalize, x)),
                    self._split(self._per_head(_l2_normalize, self.embed.view(1, -1))),
                    self._split(self.normed_weight()))
        output = []
        for nx, nc, nw in heads:
            # cos exactly as the authors compute it, though both vectors are unit already
            cos = (nx * nc).sum(-1, keepdim=True) / torch.norm(nx, 2, 1, keepdim=True).clamp_min(_EPS) \
                / torch.norm(nc, 2, 1, keepdim=True).clamp_min(_EPS)
            output.append(torch.mm((nx - cos * alpha * nc) * scale, nw.t()))
        return sum(output)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.embed.mul_(self.momentum).add_(x.detach().mean(0))
            return self.logits(x)
        return self.tde_logits(x, self.alpha)
