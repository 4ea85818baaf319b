"""Backbones (built-in CIFAR ResNets or any timm model) and the backbone + head classifier of stage 1."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from ltpipe.models.heads import LinearHead, classifier_kwargs
from ltpipe.errors import ConfigError
from ltpipe.io import load_tensors, save_tensors, write_json
from ltpipe.models.resnet_cifar import CifarResNet
from ltpipe.registry import Registry

BACKBONES = Registry("backbone", fixed=("in_chans",))


def _cifar_resnet(depth: int):
    def factory(in_chans: int = 3) -> nn.Module:
        return CifarResNet(depth, in_chans=in_chans)

    factory.__doc__ = f"CIFAR ResNet-{depth} (He et al., CVPR 2016): 3 stages x {(depth - 2) // 6} basic blocks."
    return factory


for _depth in (8, 20, 32, 44, 56, 110):
    BACKBONES.register(f"resnet{_depth}")(_cifar_resnet(_depth))


def _check_timm_name(name: str) -> None:
    import timm

    if not timm.is_model(name):
        raise ConfigError(
            f"unknown backbone {name!r}; valid choices: the built-in {', '.join(BACKBONES.names())}, "
            "or any timm model name (see timm.list_models())"
        )


def check_backbone(name: str) -> None:
    if name not in BACKBONES:
        _check_timm_name(name)


def build_backbone(name: str, in_chans: int) -> nn.Module:
    """A feature extractor with `.num_features`: built-in name first, else a timm model without its classifier.

    timm models are created with pretrained=False: ltpipe never downloads weights at run time.
    """
    if name in BACKBONES:
        return BACKBONES.get(name)(in_chans=in_chans)
    _check_timm_name(name)
    import timm

    return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_chans)


class Classifier(nn.Module):
    """backbone -> features -> head: nn.Linear, or with `cosine` LDAM's NormedLinear (logits cos(x, w_j), no bias).

    `initial_bias` (not part of the saved config: it only shapes the init) is the constant the head's bias starts at,
    e.g. the class prior of a sigmoid loss; None keeps nn.Linear's init.
    """

    def __init__(self, backbone: str, num_classes: int, in_chans: int, cosine: bool = False,
                 initial_bias: Optional[float] = None):
        super().__init__()
        self.config: Dict[str, Any] = dict(backbone=backbone, num_classes=num_classes, in_chans=in_chans,
                                           cosine=cosine)
        self.backbone = build_backbone(backbone, in_chans)
        self.head = LinearHead(self.backbone.num_features, num_classes, **classifier_kwargs(cosine))
        if initial_bias is not None and self.head.bias is not None:
            nn.init.constant_(self.head.bias, initial_bias)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        """logits, or (logits, features) with `return_features` (one call, so DDP sees the whole forward)."""
        features = self.backbone(x)
        logits = self.head(features)
        return (logits, features) if return_features else logits


def save_classifier(out_dir, model: Classifier) -> None:
    out_dir = Path(out_dir)
    save_tensors(out_dir / "model.safetensors", model.state_dict())
    write_json(out_dir / "model.json", model.config)


def load_classifier(model_dir) -> Classifier:
    model_dir = Path(model_dir)
    model = Classifier(**json.loads((model_dir / "model.json").read_text()))
    model.load_state_dict(load_tensors(model_dir / "model.safetensors"))
    return model.eval()
