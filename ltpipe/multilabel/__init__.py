"""Multi-label long-tailed recognition (issue 12): multi-hot data, the DB paper's long-tailed subsets, BCE-family
losses, class-aware sampling, mAP / F1 metrics and stage-2 helpers on frozen features.

Labels are an (N, C) bool multi-hot matrix; a multi-label data set is an `ltpipe.data.sources.Source` whose splits
hold such a matrix in `labels`. Each module has one job and its own registry where a name is chosen in params.yaml.
"""
