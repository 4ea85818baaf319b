"""The multilabel task through the stage drivers: prepare (the embedded mosaics and a label-CSV data set written here,
with its bad-input errors), stage 1, features, stage 2 (crt, tau_norm, lws, none) and evaluate."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from imagedata import save_image

from conftest import ROOT
from ltpipe.data.prepare import prepare
from ltpipe.data.prepared import load_prepared
from ltpipe.errors import ConfigError
from ltpipe.evaluate import evaluate
from ltpipe.features import extract_features
from ltpipe.multilabel.metrics import choose_thresholds, map_metrics
from ltpipe.recipes import compose_params
from ltpipe.stage2 import retrain_classifier
from ltpipe.train.stage1 import train_backbone

# The demo recipe, small: 400 training mosaics (imbalance 20 keeps the rarest digit in a few of them), 2 epochs.
SMALL = ["dataset.mosaic_digits.num_train=400", "dataset.mosaic_digits.num_val=120",
         "dataset.mosaic_digits.num_test=120", "dataset.mosaic_digits.imbalance=20.0", "train.epochs=2",
         "train.warmup_epochs=1", "stage2.crt.epochs=2", "stage2.lws.epochs=2", "runtime.device=cpu"]


def multilabel_params(*overrides):
    return compose_params(["recipe=multilabel_digits", *SMALL, *overrides], ROOT / "conf")


def hot(labels_column, classes):
    return np.array([[c in text.split("|") for c in classes] for text in labels_column])


# --------------------------------------------------------------------------------------------------- prepare
@pytest.fixture(scope="module")
def mosaics(tmp_path_factory):
    out = tmp_path_factory.mktemp("mosaics") / "prepared"
    prepare(multilabel_params(), out)
    return out


def test_prepare_mosaics_writes_multi_hot_manifests_and_co_occurrence_counts(mosaics):
    info = json.loads((mosaics / "info.json").read_text())
    assert info["task"] == "multilabel" and info["splits"] == {"train": 400, "val": 120, "test": 120}
    assert info["imbalance"]["profile"] == "none"
    classes = json.loads((mosaics / "classes.json").read_text())
    train = pd.read_csv(mosaics / "train.csv", dtype=str)
    assert list(train.columns) == ["id", "labels"] and train["labels"].str.contains("|", regex=False).any()
    targets = hot(train["labels"], classes)
    counts = json.loads((mosaics / "class_counts.json").read_text())
    # an image with k labels counts in each of its k classes
    assert list(counts.values()) == targets.sum(0).tolist() and sum(counts.values()) > len(train)
    prepared = load_prepared(mosaics)
    assert prepared.task.name == "multilabel" and prepared.class_counts == targets.sum(0).tolist()
    labels = prepared.split("train").labels
    assert labels.dtype == torch.bool and labels.shape == (400, 10) and np.array_equal(labels.numpy(), targets)
    assert prepared.split("train").images.shape == (400, 16, 16, 1)


def test_prepare_is_byte_reproducible(mosaics, tmp_path):
    prepare(multilabel_params(), tmp_path / "again")
    for name in ("train.csv", "test.csv", "class_counts.json", "info.json", "train_images.npy"):
        assert (tmp_path / "again" / name).read_bytes() == (mosaics / name).read_bytes(), name


# --------------------------------------------------------------------------------------------------- label CSV
CLASSES = ["cat", "dog", "person"]


def write_label_csv(root, rows, name="train.csv"):
    """8x8 grey PNGs and a `path,labels` list naming them; rows: label texts (the image is made for each row)."""
    rng = np.random.default_rng(len(rows))
    lines = ["path,labels"]
    for k, labels in enumerate(rows):
        path = f"images/{name[:-4]}_{k:03d}.png"
        save_image(root / path, rng.integers(0, 256, size=(8, 8, 1), dtype=np.uint8))
        lines.append(f"{path},{labels}")
    (root / name).write_text("\n".join(lines) + "\n")
    return name


def csv_params(root, **dataset):
    params = multilabel_params()
    params["dataset"]["name"] = "label_csv"
    params["dataset"]["label_csv"].update(root=str(root), **dataset)
    params["split"].update(val_from="train", val_fraction=0.2, test_fraction=0.25)
    return params


# 40 images: "person" in most, "cat" often with it, "dog" rare
POOL = ["person"] * 16 + ["cat|person"] * 12 + ["cat"] * 6 + ["dog|person"] * 4 + ["dog"] * 2


def test_prepare_label_csv_carves_val_and_test_and_keeps_co_occurrence(tmp_path):
    train = write_label_csv(tmp_path, POOL)
    out = tmp_path / "prepared"
    prepare(csv_params(tmp_path, train_list=train), out)
    info = json.loads((out / "info.json").read_text())
    # no test list: a quarter of the 40 images is test, then a fifth of the rest val; the train pool keeps the rest
    assert info["splits"] == {"train": 24, "val": 6, "test": 10} and info["dataset"] == "label_csv"
    assert not info["in_memory"] or info["image_shape"] == [8, 8]
    ids = {s: pd.read_csv(out / f"{s}.csv", dtype=str)["id"].tolist() for s in ("train", "val", "test")}
    assert sorted(sum(ids.values(), [])) == sorted(f"images/train_{k:03d}.png" for k in range(40))
    classes = json.loads((out / "classes.json").read_text())
    assert classes == CLASSES  # the sorted label names of the train list
    train_hot = hot(pd.read_csv(out / "train.csv", dtype=str)["labels"], classes)
    assert list(json.loads((out / "class_counts.json").read_text()).values()) == train_hot.sum(0).tolist()


def test_prepare_label_csv_with_the_db_builder(tmp_path):
    train = write_label_csv(tmp_path, POOL)
    test = write_label_csv(tmp_path, ["cat", "dog|person", "person"], name="test.csv")
    params = csv_params(tmp_path, train_list=train, test_list=test)
    params["imbalance"].update(profile="pareto", n_max=20)
    params["imbalance"]["pareto"].update(n_min=2)
    prepare(params, tmp_path / "prepared")
    info = json.loads((tmp_path / "prepared/info.json").read_text())
    assert info["splits"]["test"] == 3, "the source's own test list is kept whole"
    record = info["imbalance"]
    assert record["profile"] == "pareto" and record["visit_order"][0] == "person" and record["n_min"] == 2
    counts = json.loads((tmp_path / "prepared/class_counts.json").read_text())
    train_hot = hot(pd.read_csv(tmp_path / "prepared/train.csv", dtype=str)["labels"], CLASSES)
    assert list(counts.values()) == train_hot.sum(0).tolist() and min(counts.values()) >= 1
    assert max(counts.values()) <= 20 + 12, "the visited first class gets its target; co-occurrence drifts"


@pytest.mark.parametrize("rows, dataset, message", [
    (POOL + ["cat|horse"], {"classes": CLASSES}, "train.csv:42: label 'horse' is not a class; valid classes: cat, "
                                                 "dog, person"),
    (POOL + [""], {}, "train.csv:42: image 'images/train_040.png' has no labels"),
    (POOL, {"classes": CLASSES + ["zebra"]}, "class 'zebra' has no images"),
])
def test_prepare_label_csv_bad_input_fails_before_anything_is_written(tmp_path, rows, dataset, message):
    train = write_label_csv(tmp_path, rows)
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "prepared"
    with pytest.raises(ConfigError, match=message):
        prepare(csv_params(tmp_path, train_list=train, **dataset), out)
    assert not list((tmp_path / "out").iterdir()), "nothing is written, not even a temporary folder"


def test_prepare_label_csv_unknown_name_in_the_test_list(tmp_path):
    train = write_label_csv(tmp_path, POOL)
    test = write_label_csv(tmp_path, ["cat", "bird"], name="test.csv")
    with pytest.raises(ConfigError, match="test.csv:3: label 'bird' is not a class; valid classes: cat, dog, person"):
        prepare(csv_params(tmp_path, train_list=train, test_list=test), tmp_path / "prepared")


def test_val_from_source_without_a_val_list_is_an_error(tmp_path):
    train = write_label_csv(tmp_path, POOL)
    params = csv_params(tmp_path, train_list=train)
    params["split"]["val_from"] = "source"
    with pytest.raises(ConfigError, match="has no val split of its own"):
        prepare(params, tmp_path / "prepared")


# --------------------------------------------------------------------------------------------------- the stages
@pytest.fixture(scope="module")
def stage1(mosaics, tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    params = multilabel_params()
    train_backbone(params, mosaics, root / "stage1", root / "live", resume_dir=root / "resume")
    extract_features(params, root / "stage1", mosaics, root / "features")
    return root


def test_stage1_logs_val_map_and_precision_at_1(stage1):
    logged = json.loads((stage1 / "live/metrics.json").read_text())
    assert set(logged["val"]) == {"acc", "map"} and 0 < logged["val"]["map"] <= 1
    assert set(logged["train"]) == {"loss", "acc", "lr"}
    assert len((stage1 / "live/plots/metrics/val/map.tsv").read_text().splitlines()) == 1 + 2  # header + 2 epochs
    assert np.load(stage1 / "features/train_features.npy").shape[0] == 400


def test_best_val_selects_the_epoch_by_validation_map(mosaics, tmp_path):
    # Here validation mAP peaks at epoch 4 and precision@1 at epoch 2: the metric decides.
    params = multilabel_params("train.select=best_val", "train.epochs=4", "train.lr=0.5")
    train_backbone(params, mosaics, tmp_path / "stage1", tmp_path / "live", resume_dir=tmp_path / "resume")
    rows = (tmp_path / "live/plots/metrics/val/map.tsv").read_text().splitlines()[1:]
    val_map = [float(row.split("\t")[1]) for row in rows]
    assert json.loads((tmp_path / "live/metrics.json").read_text())["selected_epoch"] == 1 + int(np.argmax(val_map))


@pytest.mark.parametrize("method", ["crt", "tau_norm", "lws", "none"])
def test_stage2_and_evaluate(mosaics, stage1, tmp_path, method):
    params = multilabel_params(f"stage2.method={method}")
    retrain_classifier(params, mosaics, stage1 / "stage1", stage1 / "features", tmp_path / "stage2")
    evaluate(params, mosaics, tmp_path / "stage2", tmp_path / "metrics")
    info = json.loads((tmp_path / "stage2/info.json").read_text())
    assert info["method"] == method
    if method == "tau_norm":
        assert info["tau"] in info["tau_grid"] and len(info["val_micro_f1"]) == len(info["tau_grid"])
    metrics = json.loads((tmp_path / "metrics/metrics.json").read_text())
    assert {"mAP", "head_mAP", "medium_mAP", "tail_mAP", "micro_f1", "macro_f1", "num_test",
            "classes_without_positives"} <= set(metrics) and "accuracy" not in metrics
    prepared = load_prepared(mosaics)
    test = prepared.task.multi_hot(prepared.split("test").labels, 10).numpy()
    val = prepared.task.multi_hot(prepared.split("val").labels, 10).numpy()
    logits = {s: np.load(tmp_path / f"stage2/logits_{s}.npy") for s in ("val", "test")}
    expected = map_metrics(logits["test"], test, prepared.class_counts, prepared.classes)
    assert all(metrics[k] == v for k, v in expected.items())
    assert (metrics["num_head"], metrics["num_medium"], metrics["num_tail"]) == (expected["num_head"],
                                                                                expected["num_medium"],
                                                                                expected["num_tail"])
    table = pd.read_csv(tmp_path / "metrics/per_class.csv", dtype={"class": str})
    assert {"rank", "train_count", "ap", "accuracy", "threshold", "f1"} <= set(table.columns)
    assert table["train_count"].is_monotonic_decreasing
    # thresholds come from the validation logits, never the test set
    chosen = dict(zip(prepared.classes, choose_thresholds(logits["val"], val)))
    np.testing.assert_allclose(table["threshold"], [chosen[c] for c in table["class"]])
    assert (tmp_path / "metrics/confusion.csv").read_text() == "actual,predicted\n"


def test_a_class_without_test_positives_is_left_out_and_named(mosaics, stage1, tmp_path):
    params = multilabel_params("stage2.method=none")
    retrain_classifier(params, mosaics, stage1 / "stage1", stage1 / "features", tmp_path / "stage2")
    # the same data with digit 9 removed from every test image's labels (images left without a label are dropped)
    edited = tmp_path / "prepared"
    edited.mkdir()
    for f in mosaics.iterdir():
        (edited / f.name).write_bytes(f.read_bytes())
    test = pd.read_csv(edited / "test.csv", dtype=str)
    test["labels"] = test["labels"].str.split("|").map(lambda names: "|".join(n for n in names if n != "9"))
    keep = (test["labels"] != "").to_numpy()
    test[keep].to_csv(edited / "test.csv", index=False)
    np.save(edited / "test_images.npy", np.load(mosaics / "test_images.npy")[keep])
    np.save(tmp_path / "stage2/logits_test.npy", np.load(tmp_path / "stage2/logits_test.npy")[keep])
    evaluate(params, edited, tmp_path / "stage2", tmp_path / "metrics")
    metrics = json.loads((tmp_path / "metrics/metrics.json").read_text())
    assert metrics["classes_without_positives"] == ["9"] and metrics["num_classes_without_positives"] == 1
    table = pd.read_csv(tmp_path / "metrics/per_class.csv", dtype={"class": str}).set_index("class")
    assert np.isnan(table.loc["9", "ap"]) and table.loc["9", "test_positives"] == 0
    assert metrics["mAP"] == pytest.approx(table["ap"].dropna().mean(), abs=1e-6)


def test_predict_gives_each_class_its_sigmoid(mosaics, stage1, tmp_path):
    from ltpipe.models import load_classifier
    from ltpipe.models.heads import load_head
    from ltpipe.predict import Predictor

    retrain_classifier(multilabel_params("stage2.method=none"), mosaics, stage1 / "stage1", stage1 / "features",
                       tmp_path)
    prepared = load_prepared(mosaics)
    predictor = Predictor(load_classifier(stage1 / "stage1").backbone, load_head(tmp_path / "head.safetensors"),
                          prepared)
    probs = predictor.probabilities(prepared.split("test")).numpy()
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-np.load(tmp_path / "logits_test.npy").astype(np.float64))),
                               rtol=1e-5)


def test_causal_head_frozen_stem_and_tde_work_for_multilabel_data(mosaics, tmp_path):
    """The head and backbone options of single-label training: the causal head, stage freezing, stage-2 tde."""
    params = multilabel_params("model.head=causal", "model.freeze_stages=1", "train.epochs=1", "train.warmup_epochs=0",
                               "stage2.method=tde")
    train_backbone(params, mosaics, tmp_path / "stage1", tmp_path / "live", resume_dir=tmp_path / "resume")
    assert json.loads((tmp_path / "stage1/init.json").read_text())["frozen"]
    extract_features(params, tmp_path / "stage1", mosaics, tmp_path / "features")
    retrain_classifier(params, mosaics, tmp_path / "stage1", tmp_path / "features", tmp_path / "stage2")
    evaluate(params, mosaics, tmp_path / "stage2", tmp_path / "metrics")
    assert json.loads((tmp_path / "stage2/info.json").read_text())["alpha"] == 1.0
    assert 0 < json.loads((tmp_path / "metrics/metrics.json").read_text())["mAP"] <= 1
