"""Classifier heads: features (N, D) -> logits (N, C). Saved as safetensors plus the kwargs that rebuild them."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ltpipe.io import load_tensor_metadata, load_tensors, save_tensors
from ltpipe.registry import Registry

HEADS = Registry("classifier head")


@torch.no_grad()
def init_linear_(weight: torch.Tensor, bias: Optional[torch.Tensor], generator: Optional[torch.Generator] = None):
    """nn.Linear's default init (Kaiming-uniform weight, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) bias), from `generator`."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    if bias is not None:
        bound = 1 / math.sqrt(weight.shape[1])
        nn.init.uniform_(bias, -bound, bound, generator=generator)


def classifier_kwargs(cosine_scale: Optional[float]) -> Dict[str, Any]:
    """LinearHead arguments of a trained classifier: nn.Linear (`cosine_scale` None), or LDAM's NormedLinear times its
    loss's scale s (logits s * cos(x, w_j) = s * x/||x|| . w_j/||w_j||, no bias)."""
    cosine = cosine_scale is not None
    return dict(bias=not cosine, normalize_input=cosine, normalize_weight=cosine,
                scale=1.0 if cosine_scale is None else float(cosine_scale))


@HEADS.register("linear")
class LinearHead(nn.Module):
    """logits = scale * (W g(x) + b), with g(x) = x, or (x - mu) / ||x - mu|| when `normalize_input`.

    `normalize_weight` uses W_i / ||W_i||; with `normalize_input` and no bias this is LDAM's NormedLinear
    (`classifier_kwargs(cosine=True)`).
    """

    def __init__(self, in_features: int, num_classes: int, *, bias: bool = True, normalize_input: bool = False,
                 center_input: bool = False, normalize_weight: bool = False, scale: float = 1.0):
        super().__init__()
        self.kwargs = dict(in_features=in_features, num_classes=num_classes, bias=bias, normalize_input=normalize_input,
                           center_input=center_input, normalize_weight=normalize_weight, scale=scale)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        self.bias = nn.Parameter(torch.empty(num_classes)) if bias else None
        self.register_buffer("center", torch.zeros(in_features) if center_input else None)
        self.normalize_input, self.normalize_weight, self.scale = normalize_input, normalize_weight, scale
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None, bias: Optional[float] = None) -> None:
        """nn.Linear's init from `generator`; `bias` (when given) is the constant every bias starts at."""
        init_linear_(self.weight, self.bias, generator)
        if self.normalize_weight:
            # NormedLinear starts every class vector at unit norm; the norm of a normalised weight sets its step size.
            self.weight.div_(self.weight.norm(dim=1, keepdim=True))
        if bias is not None and self.bias is not None:
            self.bias.fill_(bias)

    def effective_weight(self) -> torch.Tensor:
        return F.normalize(self.weight, dim=1) if self.normalize_weight else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.center is not None:
            x = x - self.center
        if self.normalize_input:
            x = F.normalize(x, dim=1)
        return self.scale * F.linear(x, self.effective_weight(), self.bias)


def save_head(path, head: nn.Module) -> None:
    name = next(n for n in HEADS.names() if type(head) is HEADS.get(n))
    save_tensors(path, head.state_dict(), metadata={"head": name, "kwargs": head.kwargs})


def load_head(path) -> nn.Module:
    import ltpipe.classifier  # noqa: F401  (registers the stage-2 heads, e.g. BBN's, in HEADS)
    import ltpipe.models.causal  # noqa: F401  (the causal-TDE head)

    meta = load_tensor_metadata(path)
    head = HEADS.build(meta["head"], **meta["kwargs"])
    head.load_state_dict(load_tensors(path))
    return head
