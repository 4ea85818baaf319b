"""tau-normalisation of the stage-1 classifier weights, tau chosen on the validation split."""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from ltpipe.checks import check_int, check_real
from ltpipe.classifier.base import BOTH_TASKS, STAGE2, Stage2Data, linear_like, validation_score
from ltpipe.models.heads import LinearHead
from ltpipe.errors import ConfigError


@torch.no_grad()
def tau_normalized(base: LinearHead, tau: float) -> LinearHead:
    """w_i / ||w_i||^tau of the effective stage-1 weight, bias dropped (tau = 0 keeps W exactly)."""
    weight = base.effective_weight().detach()
    # clamp: an all-zero row stays zero instead of 0/0
    norms = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return linear_like(base, weight / norms.pow(tau), None)


@STAGE2.register("tau_norm", tasks=BOTH_TASKS)
def tau_norm(data: Stage2Data, *, tau: Optional[float] = None, grid_start: float = 0.0, grid_stop: float = 2.0,
             grid_num: int = 21) -> Tuple[LinearHead, Dict[str, Any]]:
    """tau-normalised classifier (Kang et al., "Decoupling Representation and Classifier for Long-Tailed
    Recognition", ICLR 2020): w_i <- w_i / ||w_i||^tau, b dropped.

    tau=None picks, from linspace(grid_start, grid_stop, grid_num), the value with the best validation score of the
    task (ties -> the smallest tau); info records the grid and its curve (`val_balanced_acc`, `val_micro_f1`). The
    score is the mean per-class recall for one label per image (what the authors' tau_norm.py reports per tau; top-1
    accuracy on a balanced val split); for multi-label data it is micro F1 at the best threshold shared by all
    classes, because per-class AP only depends on each class's score order, which dividing w_j by a positive number
    keeps: validation mAP is the same for every tau.
    """
    if tau is not None:
        check_real("tau", tau, low=0)
        return tau_normalized(data.base_head, tau), {"tau": float(tau)}
    check_real("grid_start", grid_start, low=0)
    check_real("grid_stop", grid_stop, low=grid_start)
    check_int("grid_num", grid_num, 1)
    if data.val_labels.shape[0] == 0:
        raise ConfigError("tau_norm with tau=None chooses tau on the validation split, which is empty; give a "
                          "validation split or a fixed tau >= 0")
    # rounded so the recorded taus read 0.3, not 0.30000000000000004
    grid = [round(float(t), 10) for t in np.linspace(grid_start, grid_stop, grid_num)]
    curve = [validation_score(tau_normalized(data.base_head, t), data) for t in grid]
    best = int(np.argmax(curve))  # first maximum of an ascending grid: ties go to the smallest tau
    return tau_normalized(data.base_head, grid[best]), {"tau": grid[best], "tau_grid": grid,
                                                        f"val_{data.task.selection_metric}": curve}
