"""Recipes: DVC's Hydra composition of conf/config.yaml with a conf/recipe/<name>.yaml group and overrides.

`dvc exp run -S recipe=ldam_drw -S train.epochs=10` composes and writes params.yaml itself; `compose_params` does the
same composition (Hydra's compose API, dumped with OmegaConf as DVC dumps it) for `ltpipe compose` (params.yaml for
`dvc repro`) and for `ltpipe validate --recipe`, so every recipe can be checked without running anything.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

from ltpipe.errors import ConfigError

CONF_DIR = "conf"
CONFIG_NAME = "config"
RECIPE_GROUP = "recipe"


def recipe_names(conf_dir: str | os.PathLike = CONF_DIR) -> List[str]:
    folder = Path(conf_dir) / RECIPE_GROUP
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no recipe folder (run from the repository root, or pass --conf)")
    return sorted(p.stem for p in folder.glob("*.yaml"))


def compose_yaml(overrides: Sequence[str] = (), conf_dir: str | os.PathLike = CONF_DIR) -> str:
    """params.yaml text for the Hydra `overrides` (e.g. ["recipe=ldam_drw", "train.epochs=10"])."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    conf = Path(conf_dir).resolve()
    if not (conf / f"{CONFIG_NAME}.yaml").is_file():
        raise ConfigError(f"{conf / (CONFIG_NAME + '.yaml')}: not found (run from the repository root, or pass --conf)")
    for override in overrides:
        key, _, value = override.partition("=")
        if key == RECIPE_GROUP and value not in recipe_names(conf):
            raise ConfigError(f"recipe {value!r}: unknown; valid choices: {', '.join(recipe_names(conf))}")
    try:
        with initialize_config_dir(config_dir=str(conf), version_base=None):
            cfg = compose(config_name=CONFIG_NAME, overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot compose {' '.join(overrides) or 'the defaults'}: {str(exc).splitlines()[0]}") from None
    return OmegaConf.to_yaml(cfg)


def compose_params(overrides: Sequence[str] = (), conf_dir: str | os.PathLike = CONF_DIR) -> Dict[str, Any]:
    import yaml

    return yaml.safe_load(compose_yaml(overrides, conf_dir))
