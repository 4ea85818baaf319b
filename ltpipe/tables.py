"""Per-class tables shared by stage 2 and evaluate."""
from __future__ import annotations

import numpy as np
import pandas as pd


def frequency_ranked(table: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by train_count, most frequent first (ties keep class order), with `rank` 0.. as first column:
    a linear plot of any column against rank is that column against class frequency."""
    ranked = table.sort_values("train_count", ascending=False, kind="stable").reset_index(drop=True)
    return ranked.assign(rank=np.arange(len(ranked)))[["rank", *table.columns]]
