"""Nearest class mean classifier on centred, L2-normalised features."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
import torch.nn.functional as F

from ltpipe.classifier.base import STAGE2, Stage2Data, make_linear
from ltpipe.models.heads import LinearHead


@STAGE2.register("ncm")
@torch.no_grad()
def ncm(data: Stage2Data) -> Tuple[LinearHead, Dict[str, Any]]:
    """Nearest class mean (Kang et al., "Decoupling Representation and Classifier for Long-Tailed Recognition",
    ICLR 2020; Mensink et al., "Distance-Based Image Classification", TPAMI 2013):
    logit_c = cos(g(x), m_c), g(x) = (x - mu) / ||x - mu||, m_c = mean of g over class c's training features.

    A class without training features gets a zero mean, hence logit 0.
    """
    x, y = data.train_features, data.train_labels
    center = x.mean(0)
    g = F.normalize(x - center, dim=1)
    # the class sum has the class mean's direction: the 1/n_c factor vanishes under normalisation
    sums = torch.zeros(data.num_classes, data.in_features, dtype=g.dtype, device=g.device).index_add_(0, y, g)
    # Cosine similarities are scores, not logits of a probability model: evaluate reports no NLL / ECE for them.
    return make_linear(F.normalize(sums, dim=1), None, center=center, normalize_input=True), {"probabilistic": False}
