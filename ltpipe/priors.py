"""Class priors from training counts, shared by the prior-aware losses and post-hoc logit adjustment."""
from __future__ import annotations

from typing import Sequence

import torch


def class_prior(class_counts: Sequence[int]) -> torch.Tensor:
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    return (counts / counts.sum()).float()


def log_prior(class_counts: Sequence[int]) -> torch.Tensor:
    # A class with no training image has prior 0: clamp so log stays finite (its logit is pushed far down).
    return class_prior(class_counts).clamp_min(1e-12).log()


def posthoc_logit_adjust(logits: torch.Tensor, class_counts: Sequence[int], tau: float) -> torch.Tensor:
    """Menon et al., "Long-tail learning via logit adjustment" (ICLR 2021): argmax_y f_y(x) - tau * log pi_y."""
    return logits - tau * log_prior(class_counts).to(logits.device, logits.dtype)
