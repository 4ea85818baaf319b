"""Evaluate driver: test-set logits of stage 2 -> metrics.json, per-class table, confusion records and (optionally) a
t-SNE map of the test features. Every output is byte-identical for identical inputs, so DVC never reruns downstream
work or reports a spurious change.

What is measured depends on the task of the prepared data (`ltpipe.tasks`), one report per task name in REPORTS:
top-1 and many/medium/few-shot accuracy with calibration for one label per image (`ltpipe.metrics`); mAP overall and
by head/medium/tail with micro/macro F1 at validation-chosen thresholds for multi-label data
(`ltpipe.multilabel.metrics`). Both per-class tables have the columns the DVC plots of dvc.yaml read (rank,
train_count, accuracy, ap), so `dvc plots show` works for either task."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import numpy as np
import pandas as pd
import torch

from ltpipe.checks import check_int
from ltpipe.data.prepared import Prepared, load_prepared
from ltpipe.errors import ConfigError
from ltpipe.io import read_json, write_csv, write_json
from ltpipe.metrics import compute_metrics, confusion_records, per_class_table
from ltpipe.multilabel import metrics as multilabel_metrics
from ltpipe.registry import Registry
from ltpipe.schema import as_params
from ltpipe.tables import frequency_ranked
from ltpipe.tasks import task_of

CONFUSION_COLUMNS = ("actual", "predicted")
# task name -> f(evaluate params, prepared data, stage-2 folder) -> (metrics, per-class table in class order, confusion)
REPORTS = Registry("task report")
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
    # One label per image: its class; multi-label: the image's class names joined by "|".
    names = np.asarray(task_of(labels).describe(labels, list(class_names)), dtype=object)
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
    return pd.DataFrame({"x": coords[:, 0], "y": coords[:, 1], "class": names[keep]})


@REPORTS.register("multiclass")
def multiclass_report(cfg, prepared: Prepared, stage2_dir: Path) -> Tuple[Dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """`compute_metrics`, the per-class table (plus each class's one-vs-rest AP of the softmax probabilities, for the
    AP plot both tasks share) and one confusion record per test image."""
    labels = prepared.split("test").labels.numpy()
    logits = np.load(stage2_dir / "logits_test.npy")
    groups = dict(many_threshold=cfg.many_threshold, few_threshold=cfg.few_threshold)
    # A method whose scores are not logits (NCM's cosines) says so in its info: NLL and ECE would mislead there.
    probabilistic = read_json(stage2_dir / "info.json").get("probabilistic", True)
    metrics = compute_metrics(logits, labels, prepared.class_counts, logit_adjust_tau=cfg.logit_adjust_tau,
                              probabilistic=probabilistic, **groups)
    table = per_class_table(logits, labels, prepared.class_counts, prepared.classes, **groups)
    probabilities = prepared.task.probabilities(torch.from_numpy(logits).double()).numpy()
    targets = prepared.task.multi_hot(labels, len(prepared.classes)).numpy()
    table["ap"] = multilabel_metrics.average_precisions(probabilities, targets)
    return metrics, table, confusion_records(logits, labels, prepared.classes)


@REPORTS.register("multilabel")
def multilabel_report(cfg, prepared: Prepared, stage2_dir: Path) -> Tuple[Dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """`map_metrics` (mAP overall and by head / medium / tail; classes without a positive test image are left out and
    named) and micro / macro F1 on the test set at thresholds chosen on the validation logits (`evaluate.f1_thresholds`:
    each class's best F1, or the best micro F1 of one shared threshold); the per-class AP table at those thresholds.
    There is no single-label confusion matrix: confusion.csv holds its header only."""
    classes, counts = prepared.classes, prepared.class_counts
    splits = ("val", "test")
    hot = {split: prepared.task.multi_hot(prepared.split(split).labels, len(classes)).numpy() for split in splits}
    scores = {split: np.load(stage2_dir / f"logits_{split}.npy") for split in splits}
    thresholds = multilabel_metrics.choose_thresholds(scores["val"], hot["val"],
                                                      per_class=cfg.f1_thresholds == "per_class")
    groups = dict(head_threshold=cfg.head_threshold, tail_threshold=cfg.tail_threshold)
    metrics = multilabel_metrics.map_metrics(scores["test"], hot["test"], counts, classes, **groups)
    metrics.update(multilabel_metrics.f1_scores(scores["test"], hot["test"], thresholds))
    table = multilabel_metrics.per_class_table(scores["test"], hot["test"], counts, classes, thresholds=thresholds,
                                               **groups)
    return metrics, table, pd.DataFrame(columns=list(CONFUSION_COLUMNS))


def evaluate(params, prepared_dir, stage2_dir, out_dir, features_dir=None) -> None:
    """Write metrics.json, per_class.csv (frequency-ranked), confusion.csv and tsne.csv into `out_dir`.

    tsne.csv always exists so DVC can declare it: with `evaluate.tsne: false` it holds only its header.
    """
    params = as_params(params)
    cfg = params.evaluate
    if cfg.tsne and features_dir is None:
        raise ConfigError("evaluate.tsne is true but no features folder was given (pass --features)")
    prepared = load_prepared(prepared_dir)
    metrics, table, confusion = REPORTS.get(prepared.task.name)(cfg, prepared, Path(stage2_dir))
    if cfg.tsne:
        features = np.load(Path(features_dir) / "test_features.npy")
        tsne = tsne_table(features, prepared.split("test").labels.numpy(), prepared.classes,
                          max_points=cfg.tsne_max_points, seed=params.seed)
    else:
        tsne = pd.DataFrame(columns=list(TSNE_COLUMNS))
    out_dir = Path(out_dir)
    write_json(out_dir / "metrics.json", metrics)
    write_csv(out_dir / "per_class.csv", frequency_ranked(table))
    write_csv(out_dir / "confusion.csv", confusion)
    write_csv(out_dir / "tsne.csv", tsne)
