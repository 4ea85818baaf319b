"""Validate the whole params.yaml up front: every stage calls this first, so a bad name or value in a later
stage fails in seconds, before an earlier stage spends hours training."""
from __future__ import annotations

from typing import Any, Dict

from ltpipe.errors import ConfigError

REQUIRED = {
    "seed": None,
    "dataset": ("name", "in_memory_max_size"),
    "imbalance": ("profile", "factor", "n_max", "class_order"),
    "split": ("val_from", "val_per_class", "test_per_class"),
    "model": ("backbone",),
    "loss": None,
    "losses": (),
    "train": ("epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs", "schedule", "sampler",
              "mixer", "augment"),
    "samplers": (),
    "mixers": (),
    "stage2": ("method",),
    "evaluate": ("many_threshold", "few_threshold", "logit_adjust_tau"),
}


def _require(params: Dict[str, Any]) -> None:
    for section, keys in REQUIRED.items():
        if section not in params:
            raise ConfigError(f"params.yaml: missing top-level key {section!r}")
        if keys is None:
            continue
        if not isinstance(params[section], dict):
            raise ConfigError(f"params.yaml: {section!r} must be a mapping, got {params[section]!r}")
        missing = [k for k in keys if k not in params[section]]
        if missing:
            raise ConfigError(f"params.yaml: missing {', '.join(f'{section}.{k}' for k in missing)}")


def _block(section: Dict[str, Any], name: str, where: str) -> Dict[str, Any]:
    block = (section or {}).get(name) or {}
    if not isinstance(block, dict):
        raise ConfigError(f"params.yaml: {where}.{name} must be a mapping of keyword arguments, got {block!r}")
    return block


def validate(params: Dict[str, Any]) -> None:
    """Names (with their keyword arguments) and cheap numeric checks for every stage; raises ConfigError."""
    from ltpipe.classifier import STAGE2
    from ltpipe.data.sources import SOURCES
    from ltpipe.losses import LOSSES
    from ltpipe.mixing import MIXERS
    from ltpipe.models import check_backbone
    from ltpipe.samplers import SAMPLERS
    from ltpipe.train.schedule import check_schedule

    _require(params)
    if not isinstance(params["seed"], int):
        raise ConfigError(f"seed must be an integer, got {params['seed']!r}")
    dataset = params["dataset"]
    SOURCES.check_kwargs(dataset["name"], _block(dataset, dataset["name"], "dataset"))
    LOSSES.check_kwargs(params["loss"], _block(params["losses"], params["loss"], "losses"), fixed=("class_counts",))
    train = params["train"]
    SAMPLERS.check_kwargs(train["sampler"], _block(params["samplers"], train["sampler"], "samplers"),
                          fixed=("labels", "num_classes"))
    MIXERS.check_kwargs(train["mixer"], _block(params["mixers"], train["mixer"], "mixers"), fixed=("class_counts",))
    check_backbone(params["model"]["backbone"])
    check_schedule(epochs=int(train["epochs"]), warmup_epochs=int(train["warmup_epochs"]), schedule=train["schedule"],
                   milestones=list(train.get("milestones") or []), gamma=float(train.get("gamma", 0.1)))
    if int(train["batch_size"]) < 1:
        raise ConfigError(f"train.batch_size must be >= 1, got {train['batch_size']}")
    stage2 = params["stage2"]
    STAGE2.check_kwargs(stage2["method"], _block(stage2, stage2["method"], "stage2"), fixed=("data",))
    ev = params["evaluate"]
    if not 0 <= int(ev["few_threshold"]) <= int(ev["many_threshold"]):
        raise ConfigError("evaluate: need 0 <= few_threshold <= many_threshold, got "
                          f"few_threshold={ev['few_threshold']}, many_threshold={ev['many_threshold']}")


def load_validated_params(path: str = "params.yaml") -> Dict[str, Any]:
    from ltpipe.io import load_params

    params = load_params(path)
    validate(params)
    return params
