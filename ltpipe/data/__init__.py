"""Data layer: sources by name, long-tailed subsampling, the `prepare` stage, and batch loading for training."""
from ltpipe.data.imbalance import long_tailed_counts
from ltpipe.data.loader import BatchLoader
from ltpipe.data.prepare import prepare
from ltpipe.data.prepared import Prepared, PreparedSplit, load_prepared
from ltpipe.data.sources import SOURCES, Source, SourceSplit

__all__ = ["SOURCES", "BatchLoader", "Prepared", "PreparedSplit", "Source", "SourceSplit", "load_prepared",
           "long_tailed_counts", "prepare"]
