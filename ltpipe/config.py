"""Validate the whole params.yaml up front: every stage calls this first, so a bad name or value in a later
stage fails in seconds, before an earlier stage spends hours training."""
from __future__ import annotations

from typing import Any, Dict

from ltpipe.errors import ConfigError
from ltpipe.registry import named_kwargs

REQUIRED = {
    "seed": None,
    "model": ("backbone",),
    "loss": None,
    "losses": (),
    "train": ("epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup_epochs", "schedule", "sampler",
              "mixer", "augment"),
    "samplers": (),
    "mixers": (),
    "stage2": ("method",),
    "evaluate": (),
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


def validate(params: Dict[str, Any]) -> None:
    """Names (with their keyword arguments) and cheap numeric checks for every stage; raises ConfigError."""
    from ltpipe.classifier import STAGE2
    from ltpipe.data.augment import build_augment
    from ltpipe.data.prepare import check_prepare_params
    from ltpipe.evaluate import check_evaluate_params
    from ltpipe.losses import LOSSES
    from ltpipe.mixing import MIXERS
    from ltpipe.models import check_backbone
    from ltpipe.samplers import SAMPLERS
    from ltpipe.train.schedule import check_schedule

    check_prepare_params(params)
    _require(params)
    LOSSES.check_kwargs(params["loss"], named_kwargs(params["losses"], params["loss"], "losses"), fixed=("class_counts",))
    train = params["train"]
    SAMPLERS.check_kwargs(train["sampler"], named_kwargs(params["samplers"], train["sampler"], "samplers"),
                          fixed=("labels", "num_classes"))
    MIXERS.check_kwargs(train["mixer"], named_kwargs(params["mixers"], train["mixer"], "mixers"), fixed=("class_counts",))
    build_augment(train["augment"])
    check_backbone(params["model"]["backbone"])
    check_schedule(epochs=int(train["epochs"]), warmup_epochs=int(train["warmup_epochs"]), schedule=train["schedule"],
                   milestones=list(train.get("milestones") or []), gamma=float(train.get("gamma", 0.1)))
    if int(train["batch_size"]) < 1:
        raise ConfigError(f"train.batch_size must be >= 1, got {train['batch_size']}")
    stage2 = params["stage2"]
    STAGE2.check_kwargs(stage2["method"], named_kwargs(stage2, stage2["method"], "stage2"), fixed=("data",))
    check_evaluate_params(params["evaluate"])


def load_validated_params(path: str = "params.yaml") -> Dict[str, Any]:
    from ltpipe.io import load_params

    params = load_params(path)
    validate(params)
    return params


def stage_main(description: str, run, *flags: str, with_params: bool = True) -> None:
    """The whole of a `stages/*.py` entry point: parse the path flags dvc.yaml passes, validate params.yaml, then
    call `run([params,] *paths)` with the paths in the order of `flags`."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    for flag in flags:
        parser.add_argument(flag, required=True)
    args = vars(parser.parse_args())
    paths = [args[flag.lstrip("-").replace("-", "_")] for flag in flags]
    params = load_validated_params()
    run(*([params] if with_params else []), *paths)
