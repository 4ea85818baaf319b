"""Data layer: sources by name, long-tailed subsampling, the `prepare` stage, and batch loading for training.

Submodules are imported where used, so that a stage depends only on the data modules it needs."""
