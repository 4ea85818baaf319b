"""The evaluate driver on a hand-written prepared folder: frequency-ranked per-class table, byte-reproducible outputs,
the optional t-SNE map, and bad params."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from ltpipe.errors import ConfigError
from ltpipe.evaluate import evaluate, tsne_table
from ltpipe.metrics import compute_metrics, per_class_table
from ltpipe.tables import frequency_ranked

CLASSES = ["ant", "bee", "cow", "dog"]
COUNTS = [5, 50, 20, 50]  # two classes tie at 50: rank keeps class order between them
CFG = dict(many_threshold=40, few_threshold=10, logit_adjust_tau=1.0, tsne=False, tsne_max_points=2000)


def write_prepared(directory, classes, counts, test_labels, *, images=None, test_ids=None, image_size=None,
                   mean=(0.5,), std=(0.25,)):
    """The files `ltpipe.data.prepared.load_prepared` reads. With `images` (uint8 N,H,W,Ch) an in-memory set, else a
    streamed one whose test files are `directory / test_ids[i]`, loaded at `image_size`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "classes.json").write_text(json.dumps(classes))
    (directory / "class_counts.json").write_text(json.dumps(dict(zip(classes, counts))))
    info = {"in_memory": images is not None, "root": str(directory), "mean": list(mean), "std": list(std),
            "channels": len(mean), "image_size": image_size,
            "image_shape": list(images.shape[1:3]) if images is not None else None}
    (directory / "info.json").write_text(json.dumps(info))
    test_ids = test_ids or [f"test/{i}" for i in range(len(test_labels))]
    for split in ("train", "val", "test"):
        labels, ids = (test_labels, test_ids) if split == "test" else ([], [])
        pd.DataFrame({"id": ids, "label": labels}).to_csv(directory / f"{split}.csv", index=False)
        if images is not None:
            np.save(directory / f"{split}_images.npy", images if split == "test" else images[:0])
    return directory


def cluster_data(seed=0, per_class=15, dim=6):
    """Test labels (balanced) and logits that are right most of the time, plus well-separated features."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    logits = torch.randn(len(labels), len(CLASSES), generator=generator)
    logits[torch.arange(len(labels)), labels] += 1.5
    features = 10.0 * torch.eye(len(CLASSES), dim)[labels] + torch.randn(len(labels), dim, generator=generator)
    return labels.numpy(), logits.numpy(), features.numpy().astype(np.float32)


def run_evaluate(tmp_path, name, cfg, with_features=True, seed=0, info=()):
    labels, logits, features = cluster_data()
    prepared = write_prepared(tmp_path / "prepared", CLASSES, COUNTS, labels)
    (tmp_path / "stage2").mkdir(exist_ok=True)
    np.save(tmp_path / "stage2" / "logits_test.npy", logits)
    (tmp_path / "stage2" / "info.json").write_text(json.dumps({"method": "crt", **dict(info)}))
    (tmp_path / "features").mkdir(exist_ok=True)
    np.save(tmp_path / "features" / "test_features.npy", features)
    out = tmp_path / name
    evaluate({"seed": seed, "evaluate": cfg}, prepared, tmp_path / "stage2", out,
             tmp_path / "features" if with_features else None)
    return out, labels, logits


def test_frequency_ranked_sorts_by_count_with_stable_ties():
    table = pd.DataFrame({"class": CLASSES, "train_count": COUNTS, "accuracy": [0.1, 0.2, 0.3, 0.4]})
    ranked = frequency_ranked(table)
    assert list(ranked.columns) == ["rank", "class", "train_count", "accuracy"]
    assert ranked["rank"].tolist() == [0, 1, 2, 3]
    assert ranked["class"].tolist() == ["bee", "dog", "cow", "ant"]
    assert ranked["train_count"].is_monotonic_decreasing
    # Rows move whole: every class keeps its own accuracy.
    assert dict(zip(ranked["class"], ranked["accuracy"])) == dict(zip(table["class"], table["accuracy"]))


def test_evaluate_outputs_match_metric_functions_and_are_byte_identical(tmp_path):
    first, labels, logits = run_evaluate(tmp_path, "a", CFG)
    second, _, _ = run_evaluate(tmp_path, "b", CFG)
    names = ["metrics.json", "per_class.csv", "confusion.csv", "tsne.csv"]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name

    groups = dict(many_threshold=40, few_threshold=10)
    expected = compute_metrics(logits, labels, COUNTS, logit_adjust_tau=1.0, **groups)
    assert json.loads((first / "metrics.json").read_text()) == expected

    per_class = pd.read_csv(first / "per_class.csv")
    assert per_class.columns[0] == "rank" and per_class["rank"].tolist() == list(range(len(CLASSES)))
    assert per_class["train_count"].tolist() == sorted(COUNTS, reverse=True)
    reference = per_class_table(logits, labels, COUNTS, CLASSES, **groups).set_index("class")
    joined = per_class.merge(reference.reset_index(), on="class", suffixes=("", "_ref"))
    np.testing.assert_allclose(joined["accuracy"], joined["accuracy_ref"])
    assert (joined["shot"] == joined["shot_ref"]).all()

    confusion = pd.read_csv(first / "confusion.csv")
    assert confusion["actual"].tolist() == [CLASSES[i] for i in labels]
    # t-SNE off: the declared output exists with its header only.
    assert (first / "tsne.csv").read_text() == "x,y,class\n"


def test_evaluate_tsne_map_is_seeded_subsampled_and_keeps_clusters(tmp_path):
    cfg = dict(CFG, tsne=True, tsne_max_points=40)
    first, labels, _ = run_evaluate(tmp_path, "a", cfg)
    second, _, _ = run_evaluate(tmp_path, "b", cfg)
    assert (first / "tsne.csv").read_bytes() == (second / "tsne.csv").read_bytes()
    tsne = pd.read_csv(first / "tsne.csv")
    assert list(tsne.columns) == ["x", "y", "class"] and len(tsne) == 40
    # A subsample never holds more of a class than the test set has.
    available = pd.Series([CLASSES[i] for i in labels]).value_counts()
    assert (tsne["class"].value_counts() <= available[tsne["class"].value_counts().index]).all()
    # Well-separated clusters stay separated: each point's nearest 2-D neighbour has its class.
    xy = tsne[["x", "y"]].to_numpy()
    dist = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    assert (tsne["class"].to_numpy()[dist.argmin(1)] == tsne["class"].to_numpy()).mean() >= 0.95
    other_seed, _, _ = run_evaluate(tmp_path, "c", cfg, seed=1)
    assert (other_seed / "tsne.csv").read_bytes() != (first / "tsne.csv").read_bytes()


def test_tsne_table_without_subsampling_keeps_input_order():
    labels, _, features = cluster_data(per_class=4)
    table = tsne_table(features, labels, CLASSES, max_points=100, seed=0)
    assert table["class"].tolist() == [CLASSES[i] for i in labels]
    assert np.isfinite(table[["x", "y"]].to_numpy()).all()
    # Coordinates are rounded to 4 decimals, so the CSV text is stable.
    np.testing.assert_array_equal(table[["x", "y"]].to_numpy(), np.round(table[["x", "y"]].to_numpy(), 4))


def test_tsne_needs_features_folder_and_valid_shapes(tmp_path):
    with pytest.raises(ConfigError, match="--features"):
        run_evaluate(tmp_path, "a", dict(CFG, tsne=True), with_features=False)
    with pytest.raises(ConfigError, match=r"\(N, D\)"):
        tsne_table(np.zeros((3, 2)), np.zeros(4, dtype=int), CLASSES)
    with pytest.raises(ConfigError, match=r"\[0, 3\]"):
        tsne_table(np.zeros((3, 2)), np.array([0, 1, 4]), CLASSES)


def test_scores_that_are_not_logits_get_no_nll_or_ece(tmp_path):
    out, _, _ = run_evaluate(tmp_path, "a", CFG)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["nll"] is not None and metrics["ece"] is not None
    out, _, _ = run_evaluate(tmp_path, "b", CFG, info={"probabilistic": False})
    cosine = json.loads((out / "metrics.json").read_text())
    assert cosine["nll"] is None and cosine["ece"] is None
    assert cosine["accuracy"] == metrics["accuracy"]
