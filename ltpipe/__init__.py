"""ltpipe: a decoupled two-stage pipeline for long-tailed image classification."""

__version__ = "0.1.0"
