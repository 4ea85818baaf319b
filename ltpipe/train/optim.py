"""Optimizers by name through timm's factory (`timm.optim.create_optimizer_v2`), with optional layer-wise lr decay.

`sgd` is the optimizer ltpipe always used, torch.optim.SGD(params, lr, momentum, weight_decay, nesterov), nesterov
false unless asked for (timm's own `sgd` defaults to Nesterov) and off without momentum: `build_sgd`'s exact steps.

Weight decay: the SGD family (sgd, momentum, nesterov) decays every parameter, as ltpipe always did and as the
CIFAR-LT recipes do; every other optimizer follows timm and exempts tensors with <= 1 dimension (biases, norm
weights) and the backbone's `no_weight_decay()` names (ViT's pos_embed, cls_token). `filter_bias_and_bn` in an
optimizer's kwargs block overrides either default.

Layer-wise lr decay (Bao et al., "BEiT", ICLR 2022): of L parameter groups (the stem, timm's fine groups of the
backbone, the head last) group i gets lr * layer_decay^(L-1-i). The factor goes into each group's `lr` rather than
timm's `lr_scale` key: timm's schedulers multiply `lr_scale` in, torch's LambdaLR (ltpipe.train.schedule) would
ignore it, and it scales each group's own initial lr, so the factors survive the schedule.
"""
from __future__ import annotations

import fnmatch
import importlib.util
import inspect
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ltpipe.checks import check_real
from ltpipe.errors import ConfigError
from ltpipe.models.freeze import stage_groups
from ltpipe.types import NonNegFloat, OpenUnitFloat, PosFloat, UnitFloat

# Passed by build_optimizer itself, so not accepted from an optimizer's kwargs block.
_COMMON = ("params", "lr", "weight_decay", "momentum")


def optimizer_names() -> List[str]:
    """timm's optimizers that train with a plain loss.backward() here: second-order ones (AdaHessian needs
    backward(create_graph=True)) and those of packages not installed (apex, bitsandbytes) are left out."""
    from timm.optim import get_optimizer_info, list_optimizers

    def usable(name: str) -> bool:
        info = get_optimizer_info(name)
        package = info.opt_class.split(".")[0] if isinstance(info.opt_class, str) else None
        return not info.second_order and (package is None or importlib.util.find_spec(package) is not None)

    return [n for n in list_optimizers() if usable(n)]


def _optimizer_class(name: str) -> type:
    from timm.optim import get_optimizer_class

    if name not in optimizer_names():
        raise ConfigError(f"unknown optimizer {name!r}; valid choices: {', '.join(optimizer_names())}")
    return get_optimizer_class(name, bind_defaults=False)


def check_optimizer(name: str, opt_kwargs: Optional[Mapping[str, Any]] = None) -> None:
    """Fail early on an unknown optimizer name or a keyword its kwargs block cannot pass to it."""
    accepted = [p for p in inspect.signature(_optimizer_class(name)).parameters if p not in _COMMON]
    accepted.append("filter_bias_and_bn")
    unknown = sorted(set(opt_kwargs or {}) - set(accepted))
    if unknown:
        raise ConfigError(f"optimizer {name!r} takes no parameter {', '.join(map(repr, unknown))} in its kwargs "
                          f"block; valid parameters: {', '.join(accepted)}")


def param_groups(model: nn.Module, *, lr: float, weight_decay: float, layer_decay: Optional[float] = None,
                 filter_bias_and_bn: bool = True) -> List[Dict[str, Any]]:
    """Trainable parameters grouped by (layer, decayed or not), each group with its own `lr` and `weight_decay`.

    `model` is ltpipe's Classifier (layers from its `.backbone`, the head on top) or a bare backbone.
    """
    trunk = getattr(model, "backbone", model)
    prefix = "backbone." if trunk is not model else ""
    exempt = [prefix + n for n in getattr(trunk, "no_weight_decay", set)()] if filter_bias_and_bn else []
    layer_of: Dict[str, int] = {}
    top = 0
    if layer_decay is not None:
        layers = stage_groups(trunk, coarse=False)
        layer_of = {prefix + n: i for i, names in enumerate(layers) for n in names}
        top = len(layers)  # the head, and backbone tensors in no group (ConvNeXt's head.norm), as timm does
    groups: Dict[Tuple[int, bool], Dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_of.get(name, top)
        decay = not (filter_bias_and_bn and (param.ndim <= 1 or name.endswith(".bias")
                                             or any(fnmatch.fnmatch(name, p) for p in exempt)))
        if (layer, decay) not in groups:
            scale = 1.0 if layer_decay is None else layer_decay ** (top - layer)
            groups[layer, decay] = {"params": [], "lr": lr * scale, "weight_decay": weight_decay if decay else 0.0}
        groups[layer, decay]["params"].append(param)
    return list(groups.values())


def build_optimizer(model: nn.Module, *, name: str, lr: PosFloat, weight_decay: NonNegFloat,
                    momentum: OpenUnitFloat = 0.9, layer_decay: Optional[UnitFloat] = None,
                    opt_kwargs: Optional[Mapping[str, Any]] = None) -> torch.optim.Optimizer:
    """Optimizer `name` (see `optimizer_names()`) over `model`'s trainable parameters; `opt_kwargs` is the
    optimizer's own kwargs block (e.g. betas, eps), `momentum` only reaches optimizers that have one.
    Put a LambdaLR from `ltpipe.train.schedule.lr_lambda` on top for the schedule."""
    from timm.optim import create_optimizer_v2, get_optimizer_info

    check_optimizer(name, opt_kwargs)
    check_real("lr", lr, low=0, include_low=False)
    check_real("weight_decay", weight_decay, low=0)
    check_real("momentum", momentum, low=0, high=1, include_high=False)
    if layer_decay is not None:
        check_real("layer_decay", layer_decay, low=0, high=1, include_low=False)
    # YAML has no tuples; torch wants betas as one.
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in (opt_kwargs or {}).items()}
    is_sgd = get_optimizer_info(name).opt_class is torch.optim.SGD
    filter_bias_and_bn = bool(kwargs.pop("filter_bias_and_bn", not is_sgd))
    if name == "sgd":
        kwargs.setdefault("nesterov", False)
    if is_sgd and momentum == 0:
        kwargs["nesterov"] = False  # torch refuses Nesterov without momentum
    groups = param_groups(model, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay,
                          filter_bias_and_bn=filter_bias_and_bn)
    try:
        return create_optimizer_v2(groups, opt=name, lr=lr, weight_decay=weight_decay, momentum=momentum, **kwargs)
    except (TypeError, ValueError, AssertionError, ImportError) as err:
        raise ConfigError(f"optimizer {name!r} rejected its parameters {kwargs}: {err}") from err
