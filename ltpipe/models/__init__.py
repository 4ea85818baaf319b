"""Backbones (built-in CIFAR ResNets or any timm model) and the backbone + head classifier of stage 1."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from ltpipe.models.causal import CausalNormHead
from ltpipe.models.heads import LinearHead, classifier_kwargs
from ltpipe.errors import ConfigError
from ltpipe.io import load_tensors, save_tensors, write_json
from ltpipe.models.resnet_cifar import CifarResNet
from ltpipe.registry import Registry
from ltpipe.types import NonNegFloat, PosFloat, PosInt, UnitFloat

BACKBONES = Registry("backbone", fixed=("in_chans",))


def _cifar_resnet(depth: int):
    def factory(in_chans: int = 3) -> nn.Module:
        return CifarResNet(depth, in_chans=in_chans)

    factory.__doc__ = f"CIFAR ResNet-{depth} (He et al., CVPR 2016): 3 stages x {(depth - 2) // 6} basic blocks."
    return factory


for _depth in (8, 20, 32, 44, 56, 110):
    BACKBONES.register(f"resnet{_depth}")(_cifar_resnet(_depth))


@BACKBONES.register("bbn_resnet32")
def bbn_resnet32(in_chans: int = 3) -> nn.Module:
    """BBN's ResNet-32 (Zhou et al., CVPR 2020), the backbone of the causal-TDE CIFAR numbers (Tang et al., NeurIPS
    2020): ResNet-32 whose last block is two parallel blocks on the same input, concatenated (128 features)."""
    return CifarResNet(32, in_chans=in_chans, branches=2)


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


# The classifier heads stage 1 trains, by name (model.head); their keyword arguments are the model.heads.<name> block.
# `cosine_scale` is not a params key: it is the loss's (LDAM's s), so the head outputs the logits the loss trained.
STAGE1_HEADS = Registry("classifier head", fixed=("in_features", "num_classes", "cosine_scale"))
HeadName = STAGE1_HEADS.name_type()


@STAGE1_HEADS.register("linear")
def linear_head(in_features: int, num_classes: int) -> nn.Module:
    """nn.Linear: logits = W x + b."""
    return LinearHead(in_features, num_classes, **classifier_kwargs(None))


@STAGE1_HEADS.register("cosine")
def cosine_head(in_features: int, num_classes: int, cosine_scale: float = 1.0) -> nn.Module:
    """LDAM's NormedLinear (Cao et al., NeurIPS 2019) times the loss's scale s: logits = s * x/||x|| . w_j/||w_j||,
    no bias. The reference code multiplies by s inside the loss; here the head does, so that softmax(logits) is the
    probability the loss trained (NLL, ECE, logit adjustment and `ltpipe predict` see s * cos, not cos)."""
    return LinearHead(in_features, num_classes, **classifier_kwargs(cosine_scale))


@STAGE1_HEADS.register("causal")
def causal_head(in_features: int, num_classes: int, *, num_heads: PosInt = 2, tau: PosFloat = 16.0,
                gamma: NonNegFloat = 0.03125, momentum: UnitFloat = 0.9) -> nn.Module:
    """The causal-TDE classifier (Tang et al., NeurIPS 2020): z = sum_k (tau/K) <x_k/||x_k||, w_k/(||w_k||+gamma)>,
    with a moving average of the training features; stage 1 trains and validates with alpha 0 (plain logits), the
    TDE inference is stage 2's `tde` method, so its alpha never retrains stage 1."""
    return CausalNormHead(in_features, num_classes, num_heads=num_heads, tau=tau, gamma=gamma, alpha=0.0,
                          momentum=momentum)


class Classifier(nn.Module):
    """backbone -> features -> head (`head` from STAGE1_HEADS with `head_kwargs`).

    `initial_bias` (not part of the saved config: it only shapes the init) is the constant the head's bias starts at,
    e.g. the class prior of a sigmoid loss; None (or a head without bias) keeps the head's own init.
    `cosine_scale` (saved) is the loss's scale of a cosine head (`LTLoss.cosine_scale`); None for other losses.
    """

    def __init__(self, backbone: str, num_classes: int, in_chans: int, head: str = "linear",
                 head_kwargs: Optional[Dict[str, Any]] = None, initial_bias: Optional[float] = None,
                 cosine_scale: Optional[float] = None):
        super().__init__()
        head_kwargs = dict(head_kwargs or {})
        self.config: Dict[str, Any] = dict(backbone=backbone, num_classes=num_classes, in_chans=in_chans, head=head,
                                           head_kwargs=head_kwargs, cosine_scale=cosine_scale)
        self.backbone = build_backbone(backbone, in_chans)
        # A cosine head saved before its scale was recorded (cosine_scale None) outputs bare cosines, as it did then.
        self.head = STAGE1_HEADS.build(head, self.backbone.num_features, num_classes,
                                       cosine_scale=1.0 if cosine_scale is None else cosine_scale, **head_kwargs)
        # A backbone that comes with its authors' classifier init (the CIFAR ResNets) gives the plain linear head that
        # init; normalised (cosine) and causal heads keep their own, as in the reference code.
        if head == "linear" and hasattr(self.backbone, "init_classifier_"):
            self.backbone.init_classifier_(self.head.weight)
        if initial_bias is not None and getattr(self.head, "bias", None) is not None:
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
