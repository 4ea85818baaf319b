"""Evaluate driver: test-set logits of stage 2 -> metrics.json, per-class table, confusion records and (optionally) a
t-SNE map of the test features. Every output is byte-identical for identical inputs, so DVC never reruns downstream
work or reports a spurious change."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ltpipe.checks import check_int
from ltpipe.data.prepared import load_prepared
from ltpipe.errors import ConfigError
from ltpipe.io import read_json, write_csv, write_json
from ltpipe.schema import as_params
from ltpipe.metrics import compute_metrics, confusion_records, per_class_table
from ltpipe.tables import frequency_ranked

TSNE_COLUMNS = ("x", "y", "class")
_TSNE_DECIMALS = 4


def tsne_table(features: np.ndarray, labels: np.ndarray, class_names: Sequence[str], *, max_points: int = 2000,
               seed: int = 0, perplexity: float = 30.0) -> pd.DataFrame:
    """2-D t-SNE (van der Maaten & Hinton, "Visualizing Data using t-SNE", JMLR 2008) of at most `max_points`
    samples (a seeded uniform subsample, kept in input order): KL(P || Q) with Student-t Q, PCA init.

    Perplexity is clipped to n - 1 (scikit-learn needs perplexity < n); coordinates are rounded to 4 decimals.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    features = np.asarray(features)
    labels = np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels) or len(features) < 2:
        raise ConfigError(f"t-SNE needs (N, D) features with N >= 2 and one label per row, got features "
                          f"{features.shape} and labels {labels.shape}")
    check_int("tsne max_points", max_points, 2)
    names = np.asarray(list(class_names), dtype=object)
    if labels.min() < 0 or labels.max() >= len(names):
        raise ConfigError(f"labels must lie in [0, {len(names) - 1}] for {len(names)} class names")
    keep = np.arange(len(features))
    if len(features) > max_points:
        generator = torch.Generator().manual_seed(int(seed))
        keep = torch.randperm(len(features), generator=generator)[:max_points].sort().values.numpy()
    points = features[keep].astype(np.float64)
    tsne = TSNE(n_components=2, perplexity=min(float(perplexity), len(points) - 1.0), init="pca",
                learning_rate="auto", random_state=int(seed))
    # One OpenMP thread: the result is the same for any thread count, and on a busy machine scikit-learn's spinning
    # Barnes-Hut threads were measured 40x slower (300 points: 41 s on 2 threads vs 1 s on one).
    with threadpool_limits(limits=1, user_api="openmp"):
        embedded = tsne.fit_transform(points)
    # +0.0 turns -0.0 into 0.0, so the CSV text does not depend on the sign of a rounded zero.
    coords = np.round(embedded, _TSNE_DECIMALS) + 0.0
    return pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], "class": names[labels[keep]]})


def evaluate(params, prepared_dir, stage2_dir, out_dir, features_dir=None) -> None:
    """Write metrics.json, per_class.csv (frequency-ranked), confusion.csv and tsne.csv into `out_dir`.

    tsne.csv always exists so DVC can declare it: with `evaluate.tsne: false` it holds only its header.
    """
    params = as_params(params)
    cfg = params.evaluate
    if cfg.tsne and features_dir is None:
        raise ConfigError("evaluate.tsne is true but no features folder was given (pass --features)")
    prepared = load_prepared(prepared_dir)
    labels = prepared.split("test").labels.numpy()
    logits = np.load(Path(stage2_dir) / "logits_test.npy")
    groups = dict(many_threshold=cfg.many_threshold, few_threshold=cfg.few_threshold)
    # A method whose scores are not logits (NCM's cosines) says so in its info: NLL and ECE would mislead there.
    probabilistic = read_json(Path(stage2_dir) / "info.json").get("probabilistic", True)
    metrics = compute_metrics(logits, labels, prepared.class_counts, logit_adjust_tau=cfg.logit_adjust_tau,
                              probabilistic=probabilistic, **groups)
    table = per_class_table(logits, labels, prepared.class_counts, prepared.classes, **groups)
    if cfg.tsne:
        features = np.load(Path(features_dir) / "test_features.npy")
        tsne = tsne_table(features, labels, prepared.classes, max_points=cfg.tsne_max_points,
                          seed=params.seed)
    else:
        tsne = pd.DataFrame(columns=list(TSNE_COLUMNS))
    out_dir = Path(out_dir)
    write_json(out_dir / "metrics.json", metrics)
    write_csv(out_dir / "per_class.csv", frequency_ranked(table))
    write_csv(out_dir / "confusion.csv", confusion_records(logits, labels, prepared.classes))
    write_csv(out_dir / "tsne.csv", tsne)
