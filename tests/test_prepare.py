import copy
import json

import numpy as np
import pandas as pd
import pytest
from imagedata import truncate, write_list, write_tree

from ltpipe.data.decode import decode_files
from ltpipe.data.imbalance import long_tailed_counts
from ltpipe.data.prepare import IMAGENET_MEAN, prepare
from ltpipe.data.prepared import load_prepared
from ltpipe.data.sources import SOURCES
from ltpipe.errors import ConfigError

BASE = {
    "seed": 0,
    "dataset": {"name": "digits", "in_memory_max_size": 64, "digits": {},
                "imagefolder": {"root": None, "image_size": None, "skip_bad": False}},
    "imbalance": {"profile": "exp", "factor": 10, "n_max": None, "class_order": "index"},
    "split": {"val_from": "train", "val_per_class": 5, "test_per_class": 10},
}
FILES = ["classes.json", "class_counts.json", "class_counts.csv", "info.json", "train.csv", "val.csv", "test.csv"]


def make_params(**updates):
    params = copy.deepcopy(BASE)
    for key, value in updates.items():
        *parents, leaf = key.split("__")
        node = params
        for p in parents:
            node = node[p]
        node[leaf] = value
    return params


def folder_params(root, **updates):
    return make_params(dataset__name="imagefolder", dataset__imagefolder__root=str(root), **updates)


def read_csv(out, split):
    return pd.read_csv(out / f"{split}.csv", dtype={"id": str})


@pytest.fixture(scope="module")
def digits_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "prepared"
    prepare(make_params(), out)
    return out


def test_digits_outputs(digits_out):
    out = digits_out
    for name in FILES + ["train_images.npy", "val_images.npy", "test_images.npy"]:
        assert (out / name).is_file(), name
    classes = json.loads((out / "classes.json").read_text())
    counts = json.loads((out / "class_counts.json").read_text())
    info = json.loads((out / "info.json").read_text())
    assert classes == [str(i) for i in range(10)] and list(counts) == classes
    assert list(counts.values()) == long_tailed_counts(10, info["imbalance"]["n_max"], "exp", 10)
    assert pd.read_csv(out / "class_counts.csv").to_dict("list") == {"class": list(range(10)),
                                                                    "count": list(counts.values())}
    assert info["num_classes"] == 10 and info["channels"] == 1 and info["in_memory"] and info["image_shape"] == [8, 8]
    assert info["splits"] == {"train": sum(counts.values()), "val": 50, "test": 100}


def test_digits_splits_are_disjoint_balanced_and_match_source(digits_out):
    source = SOURCES.build("digits").splits["train"]
    tables = {s: read_csv(digits_out, s) for s in ("train", "val", "test")}
    ids = [set(t["id"]) for t in tables.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert tables["val"]["label"].value_counts().eq(5).all() and tables["test"]["label"].value_counts().eq(10).all()
    counts = json.loads((digits_out / "class_counts.json").read_text())
    assert tables["train"]["label"].value_counts().sort_index().tolist() == list(counts.values())
    for split, table in tables.items():
        index = [int(i.split("/")[1]) for i in table["id"]]
        images = np.load(digits_out / f"{split}_images.npy")
        assert np.array_equal(images, source.images[index])
        assert np.array_equal(table["label"], source.labels[index])


def test_default_n_max_is_largest_feasible(digits_out):
    pools = np.bincount(SOURCES.build("digits").splits["train"].labels) - 10 - 5  # after test and val
    n_max = json.loads((digits_out / "info.json").read_text())["imbalance"]["n_max"]
    assert n_max == pools[0]  # exp puts n_max on class 0 only, the rest need far fewer


def test_mean_std_of_train_images(digits_out):
    info = json.loads((digits_out / "info.json").read_text())
    pixels = np.load(digits_out / "train_images.npy").astype(np.float64) / 255
    assert info["mean"] == pytest.approx([pixels.mean()], abs=1e-12)
    assert info["std"] == pytest.approx([pixels.std()], abs=1e-12)


def test_byte_identical_rerun_and_replaces_old_output(digits_out, tmp_path):
    out = tmp_path / "again"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    prepare(make_params(), out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in digits_out.iterdir())
    for path in digits_out.iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    assert [p.name for p in tmp_path.iterdir()] == ["again"]  # no temporary folders left behind


def test_seed_changes_selection_but_not_counts(digits_out, tmp_path):
    prepare(make_params(seed=1), tmp_path / "p")
    assert (tmp_path / "p/class_counts.json").read_bytes() == (digits_out / "class_counts.json").read_bytes()
    assert set(read_csv(tmp_path / "p", "train")["id"]) != set(read_csv(digits_out, "train")["id"])


def test_val_does_not_depend_on_imbalance_factor(digits_out, tmp_path):
    prepare(make_params(imbalance__factor=2), tmp_path / "p")
    assert read_csv(tmp_path / "p", "val").equals(read_csv(digits_out, "val"))
    assert read_csv(tmp_path / "p", "test").equals(read_csv(digits_out, "test"))


def test_class_order_shuffle_and_step(tmp_path):
    prepare(make_params(imbalance__class_order="shuffle", imbalance__profile="step", imbalance__n_max=40), tmp_path)
    info = json.loads((tmp_path / "info.json").read_text())
    counts = json.loads((tmp_path / "class_counts.json").read_text())
    order = info["imbalance"]["class_order"]
    assert sorted(order) == [str(i) for i in range(10)] and order != sorted(order)
    assert [counts[c] for c in order] == [40] * 5 + [4] * 5


def test_val_from_test(tmp_path):
    prepare(make_params(split__val_from="test"), tmp_path)
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["splits"]["val"] == 50 and info["splits"]["test"] == 50  # 10 carved per class, 5 of them to val
    pools = np.bincount(SOURCES.build("digits").splits["train"].labels) - 10
    assert info["imbalance"]["n_max"] == pools[0]


@pytest.mark.parametrize("updates, message", [
    ({"dataset__name": "mnist"}, "cifar10, cifar100, coco, digits, imagefolder, label_csv, manifest, mosaic_digits"),
    ({"dataset__digits": {"root": "x"}}, "dataset.digits.root: unknown key; dataset.digits takes no keys"),
    ({"imbalance__profile": "linear"}, "exp, step, pareto, none"),
    ({"imbalance__factor": 0.5}, "imbalance.factor: 0.5: must be >= 1"),
    ({"imbalance__class_order": "random"}, "index, shuffle"),
    ({"imbalance__n_max": 0}, "imbalance.n_max: 0: must be >= 1"),
    ({"split__val_from": "val"}, "train, test, source"),
    ({"split__val_from": "source"}, "no val split of its own.*train, test"),
    ({"split__val_per_class": 0}, "split.val_per_class: 0: must be >= 1"),
    ({"split__val_per_class": 170}, "too few for split.val_per_class=170.*val_from: test"),
    ({"split__test_per_class": 200}, "too few to carve split.test_per_class=200"),
    ({"imbalance__n_max": 500}, "needs 500 training images.*lower split.val_per_class or imbalance.n_max"),
    ({"imbalance__n_max": 5, "imbalance__factor": 10}, "0 training images"),
    ({"dataset__in_memory_max_size": 0}, "in_memory_max_size"),
    ({"seed": "zero"}, "seed: 'zero': must be an integer"),
])
def test_bad_params_fail_before_writing(tmp_path, updates, message):
    with pytest.raises(ConfigError, match=message):
        prepare(make_params(**updates), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------- image folders

def test_imagefolder_in_memory_keeps_pixels(tmp_path):
    written = write_tree(tmp_path / "data", {"train": {"b": 12, "a": 20}, "test": {"a": 3, "b": 4}})
    out = tmp_path / "out"
    prepare(folder_params(tmp_path / "data", imbalance__factor=2), out)
    info = json.loads((out / "info.json").read_text())
    assert info["in_memory"] and info["channels"] == 3 and info["image_size"] is None
    assert json.loads((out / "class_counts.json").read_text()) == {"a": 15, "b": 7}
    assert info["splits"] == {"train": 22, "val": 10, "test": 7}  # the folder's test split is kept whole
    for split in ("train", "val", "test"):
        ids = read_csv(out, split)["id"]
        assert np.array_equal(np.load(out / f"{split}_images.npy"), np.stack([written[i] for i in ids]))


def test_imagefolder_streams_large_images(tmp_path):
    write_tree(tmp_path / "data", {"train": {"a": 8, "b": 8}}, size=80)
    out = tmp_path / "out"
    prepare(folder_params(tmp_path / "data", dataset__imagefolder={"root": str(tmp_path / "data"), "image_size": 48},
                          split__test_per_class=2, split__val_per_class=2, imbalance__factor=2), out)
    info = json.loads((out / "info.json").read_text())
    assert not info["in_memory"] and info["image_size"] == 48 and info["mean"] == list(IMAGENET_MEAN)
    assert not list(out.glob("*.npy"))
    train = load_prepared(out).split("train")
    assert train.images is None and train.paths[0] == str((tmp_path / "data").resolve() / train.ids[0])


def test_imagefolder_sizes_and_channels(tmp_path):
    root = tmp_path / "data"
    write_tree(root, {"train": {"a": 6}}, size=12, seed=1)
    write_tree(root, {"train": {"b": 6}}, size=10, channels=1, seed=2)
    params = folder_params(root, split__val_per_class=1, split__test_per_class=1, imbalance__factor=2)
    with pytest.raises(ConfigError, match="differ in size.*image_size"):
        prepare(params, tmp_path / "out")
    params["dataset"]["imagefolder"]["image_size"] = 8
    prepare(params, tmp_path / "out")
    images = np.load(tmp_path / "out/train_images.npy")
    labels = read_csv(tmp_path / "out", "train")["label"].to_numpy()
    assert images.shape[1:] == (8, 8, 3)  # grayscale images join the colour ones as 3 equal channels
    gray = images[labels == 1]
    assert np.array_equal(gray[..., 0], gray[..., 2])


def test_imagefolder_val_from_source(tmp_path):
    write_tree(tmp_path / "data", {"train": {"a": 5, "b": 5}, "val": {"a": 2, "b": 1}, "test": {"a": 1, "b": 1}})
    prepare(folder_params(tmp_path / "data", split__val_from="source", imbalance__profile="none"), tmp_path / "out")
    info = json.loads((tmp_path / "out/info.json").read_text())
    assert info["splits"] == {"train": 10, "val": 3, "test": 2}


def test_unreadable_image_fails_before_writing_or_is_skipped(tmp_path):
    root = tmp_path / "data"
    write_tree(root, {"train": {"a": 10, "b": 10}, "test": {"a": 2, "b": 2}})
    truncate(root / "train/b/004.png")
    (root / "test/a/001.png").write_bytes(b"not a png at all")
    params = folder_params(root, split__val_per_class=2, imbalance__profile="none")
    with pytest.raises(ConfigError, match=r"unreadable.*(train/b/004.png|test/a/001.png).*skip_bad"):
        prepare(params, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    params["dataset"]["imagefolder"]["skip_bad"] = True
    prepare(params, tmp_path / "out")
    info = json.loads((tmp_path / "out/info.json").read_text())
    assert info["skipped"] == ["test/a/001.png", "train/b/004.png"]
    assert json.loads((tmp_path / "out/class_counts.json").read_text()) == {"a": 8, "b": 7}
    assert "train/b/004.png" not in set(read_csv(tmp_path / "out", "train")["id"])


def test_manifest_naturally_long_tailed(tmp_path):
    written = write_tree(tmp_path, {"img": {"x": 6, "y": 3}})
    ids = sorted(written)
    write_list(tmp_path / "train.txt", [f"{i} {0 if '/x/' in i else 1}" for i in ids])
    params = make_params(dataset__name="manifest", imbalance__profile="none", split__val_from="test",
                         split__val_per_class=1, split__test_per_class=2)
    params["dataset"]["manifest"] = {"root": str(tmp_path), "train_list": "train.txt"}
    prepare(params, tmp_path / "out")
    assert json.loads((tmp_path / "out/class_counts.json").read_text()) == {"0": 4, "1": 1}


@pytest.mark.parametrize("max_size", [0, 8, 64])
def test_truncated_jpeg_is_caught_when_cached_or_only_verified(tmp_path, max_size):
    written = write_tree(tmp_path, {"j": {"c": 3}}, size=40, ext="jpg")
    paths = [str(tmp_path / rel) for rel in sorted(written)]
    truncate(tmp_path / sorted(written)[1], keep=0.6)
    decoded = decode_files(paths, max_size=max_size)
    assert decoded.keep.tolist() == [0, 2] and list(decoded.bad) == [1] and decoded.channels == 3
    assert (decoded.images is None) == (max_size < 40)
