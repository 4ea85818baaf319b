"""Stage 2 of the decoupled pipeline: retrain or adjust only the classifier on the frozen backbone's features.

Every method is a factory `(data, *, explicit kwargs) -> (head, info)` in STAGE2: `head` maps features to logits and
is registered in HEADS (so save_head/load_head round-trip it), `info` is JSON-able (chosen tau, loss curve, ...).
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Tuple

from torch import nn

from ltpipe.classifier.base import BOTH_TASKS, STAGE2, Stage2Data
from ltpipe.models.heads import LinearHead

__all__ = ["STAGE2", "Stage2Data", "fit_stage2"]


@STAGE2.register("none", tasks=BOTH_TASKS)
def none(data: Stage2Data) -> Tuple[LinearHead, Dict[str, Any]]:
    """The joint baseline of Kang et al. ("Decoupling Representation and Classifier for Long-Tailed Recognition",
    ICLR 2020): a copy of the stage-1 head, logits = s (W g(x) + b) unchanged."""
    return copy.deepcopy(data.base_head), {}


def fit_stage2(method: str, data: Stage2Data, **params: Any) -> Tuple[nn.Module, Dict[str, Any]]:
    """Run stage-2 method `method` from STAGE2; unknown names or parameters raise ConfigError listing valid ones."""
    return STAGE2.build(method, data, **params)


# Imported for their registrations in STAGE2 (and BBNHead's in HEADS).
from ltpipe.classifier import bbn, crt, ensemble, lws, mislas, ncm, tau_norm, tde, weight_balancing  # noqa: E402,F401
