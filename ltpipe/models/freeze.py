"""Stages of a backbone and freezing the first ones for fine-tuning (parameters and BatchNorm statistics).

Stages are timm's coarse parameter groups (`model.group_matcher(coarse=True)` read by `timm.models.group_with_matcher`):
group 0 is the stem, groups 1..S the stages in forward order (ResNet: layer1..layer4; ViT: one transformer block each;
the built-in CIFAR ResNets: their 3 stages). Tensors no matcher claims (ConvNeXt's final `head.norm`) are in no stage.

BatchNorm layers are not swapped for timm's FrozenBatchNorm2d (as `timm.utils.freeze` does): that drops
`num_batches_tracked` from the state dict, so the saved stage-1 model would no longer load strictly into an unfrozen
one. A frozen BatchNorm here stays the same module, pinned to eval mode: it normalises with, and never updates, its
running statistics, and its state-dict keys are unchanged.
"""
from __future__ import annotations

import functools
from itertools import chain
from typing import List

import torch
from torch import nn

from ltpipe.errors import ConfigError
from ltpipe.types import Int

# A name no group matcher claims: it lands in timm's group of unmatched tensors and so identifies that group.
_UNMATCHED = "\x00unmatched"


def stage_groups(backbone: nn.Module, *, coarse: bool = True) -> List[List[str]]:
    """Parameter and buffer names of the stem (index 0) and of each stage (1..S); `coarse=False` gives timm's finer
    groups (one per block) that layer-wise lr decay uses."""
    from timm.models._manipulate import group_with_matcher  # public group_parameters() skips buffers

    if not hasattr(backbone, "group_matcher"):
        raise ConfigError(f"backbone {type(backbone).__name__} has no group_matcher(): its stages are unknown "
                          "(only freeze_stages -1 and no layer decay are possible)")
    names = [n for n, _ in chain(backbone.named_parameters(), backbone.named_buffers())] + [_UNMATCHED]
    groups = group_with_matcher(((n, None) for n in names), backbone.group_matcher(coarse=coarse))
    return [groups[i] for i in sorted(groups) if _UNMATCHED not in groups[i]]


def num_stages(backbone: nn.Module) -> int:
    """S, the number of stages after the stem: freeze_stages accepts -1..S."""
    return len(stage_groups(backbone)) - 1


def backbone_num_stages(name: str, in_chans: int = 3) -> int:
    """`num_stages` of backbone `name` (built-in or timm) without allocating its weights, to check params early."""
    from ltpipe.models import build_backbone

    with torch.device("meta"):
        return num_stages(build_backbone(name, in_chans))


def check_freeze_stages(k: int, stages: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not -1 <= k <= stages:
        raise ConfigError(f"freeze_stages must be an integer in [-1, {stages}] (-1: train everything, 0: freeze the "
                          f"stem, k: the stem and the first k of the backbone's {stages} stages), got {k!r}")
    return k


def freeze_stages(backbone: nn.Module, k: Int) -> List[str]:
    """Freeze the stem and the first k stages (k = 0: the stem only; k = -1: nothing) and return the names of the
    frozen parameters. Frozen parameters stop requiring gradients; frozen BatchNorm layers stay in eval mode."""
    if type(k) is int and k == -1:  # needs no stage structure: any backbone can train everything
        return []
    groups = stage_groups(backbone)
    check_freeze_stages(k, len(groups) - 1)
    frozen = set(chain.from_iterable(groups[: k + 1]))
    for name, module in backbone.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            own = chain(module.named_parameters(recurse=False), module.named_buffers(recurse=False))
            if any((f"{name}.{t}" if name else t) in frozen for t, _ in own):
                _pin_eval(module)
    params = [(n, p) for n, p in backbone.named_parameters() if n in frozen]
    for _, param in params:
        param.requires_grad_(False)
    return [n for n, _ in params]


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def _pin_eval(module: nn.Module) -> None:
    # An instance attribute shadows nn.Module.train, so the parent's model.train() cannot switch this layer back to
    # batch statistics; functools.partial (not a lambda) keeps the module deep-copyable and picklable.
    module.train = functools.partial(_stay_in_eval, module)
    module.eval()
