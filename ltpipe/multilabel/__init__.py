"""Multi-label long-tailed recognition (issue 12): the pieces specific to images with a set of labels, held as an
(N, C) bool multi-hot matrix: data sources and the DB paper's long-tailed subsets, BCE-family losses, and mAP / F1
metrics. They register in the pipeline's registries (SOURCES, LOSSES) tagged with the multilabel task; samplers and
stage-2 methods serve both tasks from `ltpipe.samplers` and `ltpipe.classifier` (see `ltpipe.tasks`).
"""
