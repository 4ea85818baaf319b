"""Initialise a backbone (and its head) from a local weights file or from another ltpipe run's stage-1 folder.

Accepted sources: safetensors; PyTorch checkpoints (`torch.load(weights_only=True)`: no code from the file runs)
holding a state dict, or a dict with `state_dict_ema` / `model_ema` / `state_dict` / `model` inside (EMA weights
first, as timm does); timm's or torchvision's key layout; another ltpipe run's `artifacts/stage1` folder
(model.safetensors with keys `backbone.*` / `head.*`). Reading is timm's `load_state_dict`, which also removes
DataParallel/DDP and torch.compile wrappers (`module.`, `_orig_mod.`). Then:

1. a leading key prefix (`backbone.`, `model.`, `encoder.`, ...) is removed if more keys then name backbone tensors;
2. timm backbones: the architecture's `checkpoint_filter_fn` converts foreign layouts and resizes ViT position
   embeddings to the model's image size, as `timm.create_model(pretrained=True)` does;
3. a first convolution with other input channels is adapted by timm's `adapt_input_conv` (grey: RGB kernels summed);
4. the file's classifier (timm's `pretrained_cfg['classifier']`, else `head`, `fc`, `classifier`, `linear`) fills
   ltpipe's head; 5. tensors of another shape (a 1000-class classifier for 10 classes) and names the model lacks
   are dropped, and reported.

`timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))` does 2, 3 and drops a classifier
of another size, but it builds a fresh timm model, knows neither ltpipe's backbone/head split nor the CIFAR ResNets,
fails on any other difference and reports nothing: hence this module, built from its parts.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ltpipe.errors import ConfigError
from ltpipe.types import Bool, UnitFloat

GENERIC_CLASSIFIERS = ("head", "fc", "classifier", "linear")


@dataclass
class LoadReport:
    """What `load_pretrained` did: model keys (`backbone.*`, `head.*`) loaded or left at their initialisation, and
    the file's keys (wrappers and prefix removed) that were dropped, with the reason."""

    source: str
    loaded: List[str]
    dropped: Dict[str, str]
    missing: List[str]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        dropped = [f"{k}: {v}" for k, v in self.dropped.items()]
        return (f"pretrained weights {self.source}: loaded {len(self.loaded)} tensors; dropped {len(self.dropped)}"
                f"{_examples(dropped)}; missing {len(self.missing)}{_examples(self.missing)}")


def read_weights(path, *, use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """The tensors of a weights file or of an ltpipe stage-1 folder, DataParallel/compile wrappers removed."""
    from timm.models import load_state_dict

    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"pretrained weights not found: {file} (expected a .safetensors, .pt or .pth file, or "
                          "another ltpipe run's artifacts/stage1 folder)")
    try:
        state = load_state_dict(str(file), use_ema=use_ema)
    except Exception as err:  # whatever the parser raises, an unreadable user file is a configuration error
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot read pretrained weights {file}: {reason}") from err
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, Mapping) else {}
    if not tensors:
        raise ConfigError(f"pretrained weights {file} hold no tensors (expected a state dict, or a checkpoint with "
                          "state_dict / model / model_ema inside)")
    return tensors


def load_pretrained(path, backbone: nn.Module, head: Optional[nn.Module] = None, *, use_ema: Bool = True,
                    min_loaded: UnitFloat = 0.5) -> LoadReport:
    """Copy the matching tensors of `path` into `backbone` and `head` (in place) and report what happened.

    Fails with ConfigError, before changing anything, if less than `min_loaded` of the backbone's values (elements
    of its floating-point tensors) find a tensor of the same name and shape: a file of another architecture.
    """
    state = read_weights(path, use_ema=use_ema)
    targets = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    if head is not None:
        targets.update({f"head.{k}": v for k, v in head.state_dict().items()})
    backbone_keys = {k[len("backbone."):] for k in targets if k.startswith("backbone.")}
    inside, outside = _split_prefix(state, backbone_keys)
    state = {**outside, **_timm_filter(inside, backbone, path)}
    classifier = _classifier_name([k for k in state if k not in backbone_keys], backbone)
    first_conv = _first_conv(backbone)

    loaded: Dict[str, torch.Tensor] = {}
    dropped: Dict[str, str] = {}
    for key, value in state.items():
        if key in backbone_keys:
            target = f"backbone.{key}"
        elif classifier and key.startswith(classifier + ".") and f"head.{key[len(classifier) + 1:]}" in targets:
            target = f"head.{key[len(classifier) + 1:]}"
        else:
            dropped[key] = "unexpected: the model has no tensor of this name"
            continue
        expected = targets[target].shape
        if value.shape != expected and key == first_conv and value.dim() == 4 and _same_but_in_chans(value, expected):
            from timm.models import adapt_input_conv

            value = adapt_input_conv(expected[1], value, base_chans=value.shape[1])
        if value.shape != expected:
            dropped[key] = f"shape mismatch: file {tuple(value.shape)}, model {tuple(expected)}"
            continue
        loaded[target] = value

    _check_enough(path, targets, loaded, dropped, min_loaded)
    prefix = len("backbone.")
    backbone.load_state_dict({k[prefix:]: v for k, v in loaded.items() if k.startswith("backbone.")}, strict=False)
    if head is not None:
        head.load_state_dict({k[len("head."):]: v for k, v in loaded.items() if k.startswith("head.")}, strict=False)
    return LoadReport(source=str(path), loaded=[k for k in targets if k in loaded], dropped=dropped,
                      missing=[k for k in targets if k not in loaded])


def _split_prefix(state: Dict[str, torch.Tensor], backbone_keys) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """(the keys under the best prefix, with it removed; the other keys). The best prefix ('' or one or two leading
    name parts) is the one under which most keys name backbone tensors; ties go to the shortest."""
    candidates = {""} | {".".join(k.split(".")[:n]) + "." for k in state for n in (1, 2) if k.count(".") >= n}

    def matches(prefix: str) -> int:
        return sum(k[len(prefix):] in backbone_keys for k in state if k.startswith(prefix))

    best = max(sorted(candidates, key=lambda p: (len(p), p)), key=matches)
    inside = {k[len(best):]: v for k, v in state.items() if k.startswith(best)}
    return inside, {k: v for k, v in state.items() if not k.startswith(best)}


def _timm_filter(state: Dict[str, torch.Tensor], backbone: nn.Module, path) -> Dict[str, torch.Tensor]:
    # timm passes each architecture's filter to its builder only, so it is found by its conventional module-level name.
    filter_fn = getattr(sys.modules[type(backbone).__module__], "checkpoint_filter_fn", None)
    if not hasattr(backbone, "pretrained_cfg") or filter_fn is None:
        return state
    try:
        return filter_fn(state, backbone)
    except Exception as err:  # timm's filters assert on layouts they cannot convert
        raise ConfigError(f"pretrained weights {path} cannot be converted by timm's checkpoint_filter_fn for "
                          f"{type(backbone).__name__}: {err}") from err


def _classifier_name(keys: List[str], backbone: nn.Module) -> Optional[str]:
    names = getattr(backbone, "pretrained_cfg", {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return next((n for n in names + GENERIC_CLASSIFIERS if f"{n}.weight" in keys), None)


def _first_conv(backbone: nn.Module) -> Optional[str]:
    return next((f"{n}.weight" for n, m in backbone.named_modules() if isinstance(m, nn.Conv2d)), None)


def _same_but_in_chans(value: torch.Tensor, expected: torch.Size) -> bool:
    return value.shape[0] == expected[0] and value.shape[2:] == expected[2:]


def _check_enough(path, targets, loaded, dropped, min_loaded: float) -> None:
    sizes = {k: v.numel() for k, v in targets.items() if k.startswith("backbone.") and v.is_floating_point()}
    total = sum(sizes.values())
    found = sum(n for k, n in sizes.items() if k in loaded)
    if total and found < min_loaded * total:
        missing = [k for k in sizes if k not in loaded]
        raise ConfigError(f"pretrained weights {path} do not fit this backbone: {found / total:.0%} of its values "
                          f"found a tensor of the same name and shape (at least {min_loaded:.0%} needed); file keys "
                          f"e.g. {', '.join(list(dropped)[:3]) or '-'}; model keys e.g. {', '.join(missing[:3])}")


def _examples(items: List[str], n: int = 4) -> str:
    if not items:
        return ""
    return f" ({', '.join(items[:n])}{', ...' if len(items) > n else ''})"
