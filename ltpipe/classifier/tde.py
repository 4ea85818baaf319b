"""TDE: the de-confounded inference of the stage-1 causal head, alpha chosen here so it never retrains stage 1."""
from __future__ import annotations

import copy
from typing import Any, Dict, Tuple

from torch import nn

from ltpipe.classifier.base import BOTH_TASKS, STAGE2, Stage2Data
from ltpipe.errors import ConfigError
from ltpipe.types import NonNegFloat


@STAGE2.register("tde", tasks=BOTH_TASKS)
def tde(data: Stage2Data, *, alpha: NonNegFloat = 1.0) -> Tuple[nn.Module, Dict[str, Any]]:
    """Total direct effect (Tang, Huang & Zhang, "Long-Tailed Classification by Keeping the Good and Removing the Bad
    Momentum Causal Effect", NeurIPS 2020): z_c = sum_k (tau/K) <x^_k - alpha cos(x^_k, d^_k) d^_k, w_ck / (||w_ck||
    + gamma)>, d the moving average of stage 1's training features. Authors' alpha: 1.0 CIFAR-10-LT, 1.5 CIFAR-100-LT,
    3.0 ImageNet-LT; alpha 0 is the plain causal head (stage-2 method none)."""
    from ltpipe.models.causal import CausalNormHead

    if not isinstance(data.base_head, CausalNormHead):
        raise ConfigError("stage-2 method 'tde' needs a stage 1 trained with the causal head (model.head: causal); "
                          f"this stage 1 has a {type(data.base_head).__name__}")
    head = copy.deepcopy(data.base_head).eval()
    head.alpha = alpha
    return head, {"alpha": alpha}
