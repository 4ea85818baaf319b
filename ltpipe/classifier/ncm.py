"""Nearest class mean classifier on centred, L2-normalised features."""
from __future__ import annotations

from typing import Any, Dict, Literal, Tuple

import torch
import torch.nn.functional as F

from ltpipe.classifier.base import BOTH_TASKS, STAGE2, Stage2Data, make_linear
from ltpipe.models.heads import LinearHead


@STAGE2.register("ncm", tasks=BOTH_TASKS)
@torch.no_grad()
def ncm(data: Stage2Data, *, distance: Literal["l2", "cosine"] = "l2") -> Tuple[LinearHead, Dict[str, Any]]:
    """Nearest class mean (Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
    ICLR 2020; Mensink et al., "Distance-Based Image Classification", TPAMI 2013), on g(x) = (x - mu) / ||x - mu||
    with m_c the mean of g over the training images of class c (for multi-label data, over every image holding c):
    l2 logit_c = -||g(x) - m_c||^2, cosine logit_c = cos(g(x), m_c).

    l2 is the authors' default (classifier-balancing's KNNClassifier with feat_type cl2n, dist_type l2: the means are
    not re-normalised, so a class whose features spread less has a longer mean and a higher score); cosine is the
    paper's other rule. -||g - m||^2 = 2 g.m - ||m||^2 - 1, a linear head on g. A class without training features
    gets a zero mean.
    """
    x = data.train_features
    center = x.mean(0)
    g = F.normalize(x - center, dim=1)
    hot = data.task.multi_hot(data.train_labels, data.num_classes).to(g.dtype)
    means = (hot.T @ g) / hot.sum(0).clamp_min(1)[:, None]
    # Distances and cosines are scores, not logits of a probability model: evaluate reports no NLL / ECE for them.
    info = {"probabilistic": False}
    if distance == "cosine":
        return make_linear(F.normalize(means, dim=1), None, center=center, normalize_input=True), info
    return make_linear(2 * means, -means.square().sum(1) - 1, center=center, normalize_input=True), info
