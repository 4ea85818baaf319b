"""Nearest class mean classifier on centred, L2-normalised features."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F

from ltpipe.classifier.base import BOTH_TASKS, STAGE2, Stage2Data, make_linear
from ltpipe.models.heads import LinearHead


@STAGE2.register("ncm", tasks=BOTH_TASKS)
@torch.no_grad()
def ncm(data: Stage2Data) -> Tuple[LinearHead, Dict[str, Any]]:
    """Nearest class mean (Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
    ICLR 2020; Mensink et al., "Distance-Based Image Classification", TPAMI 2013):
    logit_c = cos(g(x), m_c), g(x) = (x - mu) / ||x - mu||, m_c = mean of g over the training images of class c
    (for multi-label data, over every image holding c).

    A class without training features gets a zero mean, hence logit 0.
    """
    x = data.train_features
    center = x.mean(0)
    g = F.normalize(x - center, dim=1)
    hot = data.task.multi_hot(data.train_labels, data.num_classes).to(g.dtype)
    # the class sum has the class mean's direction: the 1/n_c factor vanishes under normalisation
    sums = hot.T @ g
    # Cosine similarities are scores, not logits of a probability model: evaluate reports no NLL / ECE for them.
    return make_linear(F.normalize(sums, dim=1), None, center=center, normalize_input=True), {"probabilistic": False}
