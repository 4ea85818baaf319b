import json

import numpy as np
import pytest
import torch

from ltpipe.errors import ConfigError
from ltpipe.data.sources import SOURCES
from ltpipe.multilabel.data import MultiLabelSource, class_counts, exp_profile, make_mosaics, mosaic_digits


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path.name


# --------------------------------------------------------------------------------------------------- label CSV
def test_label_csv_multi_hot_with_spaces_blank_lines_and_derived_classes(tmp_path):
    train = write(tmp_path / "train.csv", "path,labels\n"
                                          "a.jpg,person|traffic light\n"
                                          "\n"
                                          "b.jpg, dog \n"
                                          "c.jpg,dog|person|dog\n")
    source = SOURCES.build("label_csv", root=str(tmp_path), train_list=train)
    assert isinstance(source, MultiLabelSource)
    assert source.classes == ["dog", "person", "traffic light"]
    split = source.splits["train"]
    assert split.ids == ["a.jpg", "b.jpg", "c.jpg"]
    assert split.paths == [str(tmp_path / i) for i in split.ids]
    np.testing.assert_array_equal(split.labels, [[0, 1, 1], [1, 0, 0], [1, 1, 0]])
    assert split.labels.dtype == bool
    np.testing.assert_array_equal(class_counts(split.labels), [2, 2, 1])


def test_label_csv_given_classes_fix_the_order_and_val_may_miss_a_class(tmp_path):
    train = write(tmp_path / "train.csv", "path,labels\na.jpg,cat\nb.jpg,ant|cat\n")
    val = write(tmp_path / "val.csv", "path,labels\nc.jpg,cat\n")
    source = SOURCES.build("label_csv", root=str(tmp_path), train_list=train, val_list=val,
                                      classes=["cat", "ant"])
    assert source.classes == ["cat", "ant"]
    np.testing.assert_array_equal(source.splits["train"].labels, [[1, 0], [1, 1]])
    np.testing.assert_array_equal(source.splits["val"].labels, [[1, 0]])  # no "ant" in val: allowed


def test_label_csv_subset_keeps_rows_of_the_matrix(tmp_path):
    train = write(tmp_path / "train.csv", "path,labels\na.jpg,x\nb.jpg,y\nc.jpg,x|y\n")
    split = SOURCES.build("label_csv", root=str(tmp_path), train_list=train).splits["train"]
    part = split.subset(np.array([2, 0]))
    assert part.ids == ["c.jpg", "a.jpg"]
    np.testing.assert_array_equal(part.labels, [[1, 1], [1, 0]])


@pytest.mark.parametrize("body, where, what", [
    ("a.jpg,cat\n\nb.jpg,cat|cow\n", ":4:", "'cow' is not a class"),
    ("a.jpg,cat\nb.jpg,\n", ":3:", "'b.jpg' has no labels"),
    ("a.jpg,cat\nb.jpg, | \n", ":3:", "'b.jpg' has no labels"),
    ("a.jpg,cat\nb.jpg\n", ":3:", "'b.jpg' has no labels"),
    ("a.jpg,cat\n,dog\n", ":3:", "the path is empty"),
])
def test_label_csv_errors_name_file_and_line(tmp_path, body, where, what):
    train = write(tmp_path / "train.csv", "path,labels\n" + body)
    with pytest.raises(ConfigError) as err:
        SOURCES.build("label_csv", root=str(tmp_path), train_list=train, classes=["cat", "dog"])
    assert f"train.csv{where}" in str(err.value) and what in str(err.value)


def test_label_csv_empty_class_and_unknown_val_label(tmp_path):
    train = write(tmp_path / "train.csv", "path,labels\na.jpg,cat\n")
    with pytest.raises(ConfigError, match=r"train.csv \(train\): class 'dog' has no images"):
        SOURCES.build("label_csv", root=str(tmp_path), train_list=train, classes=["cat", "dog"])
    val = write(tmp_path / "val.csv", "path,labels\nb.jpg,cat\nc.jpg,emu\n")
    with pytest.raises(ConfigError, match=r"val.csv:3: label 'emu' is not a class; valid classes: cat"):
        SOURCES.build("label_csv", root=str(tmp_path), train_list=train, val_list=val)


@pytest.mark.parametrize("text, match", [
    ("file,labels\na.jpg,cat\n", "header must start with 'path,labels'"),
    ("path,labels\n", "has no entries"),
])
def test_label_csv_malformed_files(tmp_path, text, match):
    train = write(tmp_path / "train.csv", text)
    with pytest.raises(ConfigError, match=match):
        SOURCES.build("label_csv", root=str(tmp_path), train_list=train)


def test_label_csv_missing_arguments(tmp_path):
    with pytest.raises(ConfigError, match="train_list is required"):
        SOURCES.build("label_csv", root=str(tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        SOURCES.build("label_csv", root=str(tmp_path), train_list="nope.csv")
    with pytest.raises(ConfigError, match="root"):
        SOURCES.build("label_csv", root=str(tmp_path / "absent"), train_list="x.csv")
    train = write(tmp_path / "train.csv", "path,labels\na.jpg,cat\n")
    with pytest.raises(ConfigError, match="name a class twice"):
        SOURCES.build("label_csv", root=str(tmp_path), train_list=train, classes=["cat", "cat"])


# --------------------------------------------------------------------------------------------------- COCO JSON
def coco_doc(annotations, categories=((1, "person"), (3, "car"), (7, "dog"))):
    return {
        "images": [{"id": 10, "file_name": "a.jpg"}, {"id": 20, "file_name": "b.jpg"},
                   {"id": 30, "file_name": "c.jpg"}, {"id": 40, "file_name": "d.jpg"}],
        "annotations": [{"id": k, "image_id": i, "category_id": c} for k, (i, c) in enumerate(annotations)],
        "categories": [{"id": i, "name": n} for i, n in categories],
    }


def test_coco_labels_are_the_annotated_categories_and_unlabeled_images_are_reported(tmp_path):
    # image 30 has no annotation; 10 has two boxes of one category
    doc = coco_doc([(10, 1), (10, 1), (10, 7), (20, 3), (40, 7), (40, 3), (40, 1)])
    write(tmp_path / "train.json", json.dumps(doc))
    source = SOURCES.build("coco", root=str(tmp_path), train_json="train.json", train_images="imgs")
    assert source.classes == ["person", "car", "dog"]  # category id order
    split = source.splits["train"]
    assert split.ids == ["imgs/a.jpg", "imgs/b.jpg", "imgs/d.jpg"]
    assert split.paths == [str(tmp_path / "imgs" / f) for f in ("a.jpg", "b.jpg", "d.jpg")]
    np.testing.assert_array_equal(split.labels, [[1, 0, 1], [0, 1, 0], [1, 1, 1]])
    assert source.unlabeled == {"train": ["imgs/c.jpg"]}


@pytest.mark.parametrize("annotations, match", [
    ([(10, 1), (20, 5), (40, 3), (30, 7)], r"annotations\[1\] \(image id 20\) has category_id 5"),
    ([(10, 1), (99, 3), (40, 7)], r"annotations\[1\] \(image id 99\) has image_id 99"),
    ([(10, 1), (20, 1), (40, 7)], r"class 'car' has no images"),
])
def test_coco_errors(tmp_path, annotations, match):
    write(tmp_path / "train.json", json.dumps(coco_doc(annotations)))
    with pytest.raises(ConfigError, match=match):
        SOURCES.build("coco", root=str(tmp_path), train_json="train.json")


def test_coco_splits_need_the_same_categories_and_an_image_folder(tmp_path):
    write(tmp_path / "train.json", json.dumps(coco_doc([(10, 1), (20, 3), (40, 7)])))
    write(tmp_path / "val.json", json.dumps(coco_doc([(10, 1)], categories=((1, "person"),))))
    with pytest.raises(ConfigError, match="val_images is required"):
        SOURCES.build("coco", root=str(tmp_path), train_json="train.json", val_json="val.json")
    with pytest.raises(ConfigError, match="categories differ"):
        SOURCES.build("coco", root=str(tmp_path), train_json="train.json", val_json="val.json",
                                 val_images="val")
    write(tmp_path / "bad.json", "{\n  \"images\": [,\n")
    with pytest.raises(ConfigError, match=r"bad.json:2: invalid JSON"):
        SOURCES.build("coco", root=str(tmp_path), train_json="bad.json")


# --------------------------------------------------------------------------------------------------- mosaics
def constant_images(num_classes=5, per_class=3, size=4, channels=1):
    """Image of class c is filled with c + 1, so every tile of a mosaic shows its class (0 = blank)."""
    labels = np.repeat(np.arange(num_classes), per_class)
    images = np.broadcast_to((labels + 1).astype(np.uint8)[:, None, None, None],
                             (len(labels), size, size, channels)).copy()
    return images, labels


def tile_values(mosaics, size=4):
    m = mosaics.shape[0]
    grid = mosaics.reshape(m, 2, size, 2, size, -1).transpose(0, 1, 3, 2, 4, 5).reshape(m, 4, -1)
    assert (grid == grid[..., :1]).all()  # each tile is one whole source image
    return grid[..., 0].astype(np.int64)


def test_mosaic_labels_are_the_set_of_tile_classes():
    images, labels = constant_images()
    made = make_mosaics(images, labels, 5, num_images=300, generator=torch.Generator().manual_seed(0),
                        blank_prob=0.4)
    assert made.images.shape == (300, 8, 8, 1) and made.images.dtype == np.uint8
    values = tile_values(made.images)
    expected = np.zeros((300, 6), dtype=bool)
    expected[np.arange(300)[:, None], values] = True
    np.testing.assert_array_equal(made.targets, expected[:, 1:])
    assert made.targets.any(axis=1).all()  # never an image without labels
    np.testing.assert_array_equal(values, np.where(made.tiles >= 0, labels[np.maximum(made.tiles, 0)] + 1, 0))
    assert 0.25 < (made.tiles < 0).mean() < 0.45  # blank tiles at about blank_prob


def test_mosaic_class_probs_blank_prob_and_rgb_tiles():
    images, labels = constant_images(channels=3, size=32)  # CIFAR-like (N, 32, 32, 3)
    made = make_mosaics(images, labels, 5, num_images=200, generator=torch.Generator().manual_seed(1),
                        class_probs=[0.5, 0.5, 0, 0, 0], blank_prob=0.0)
    assert made.images.shape == (200, 64, 64, 3)
    assert (made.tiles >= 0).all()
    assert not made.targets[:, 2:].any() and made.targets[:, :2].any(axis=0).all()


def test_mosaics_are_deterministic_in_the_generator():
    images, labels = constant_images()
    a, b, c = (make_mosaics(images, labels, 5, num_images=50, generator=torch.Generator().manual_seed(s))
               for s in (3, 3, 4))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.targets, b.targets)
    assert not np.array_equal(a.tiles, c.tiles)


def test_mosaic_class_without_image_is_an_error():
    images, labels = constant_images()
    with pytest.raises(ConfigError, match="class 5 has tile probability > 0 but no image"):
        make_mosaics(images, labels, 6, num_images=5, generator=torch.Generator())


def test_exp_profile():
    p = exp_profile(10, 500.0)
    assert np.isclose(p.sum(), 1) and np.isclose(p[0] / p[-1], 500) and np.all(np.diff(p) < 0)


def test_mosaic_digits_default_is_long_tailed_and_deterministic():
    source = SOURCES.build("mosaic_digits")
    assert source.classes == [str(d) for d in range(10)]
    sizes = {name: len(split) for name, split in source.splits.items()}
    assert sizes == {"train": 2000, "val": 500, "test": 1000}
    train = source.splits["train"]
    assert train.images.shape == (2000, 16, 16, 1) and train.images.dtype == np.uint8
    counts = class_counts(train.labels)
    # long-tailed by construction: head and tail classes under the default 100 / 20 thresholds, none empty
    assert counts.min() >= 1 and counts[0] >= 1000 and (counts < 20).sum() >= 2
    for name in ("val", "test"):  # uniform tiles: every class has positives to rank
        assert class_counts(source.splits[name].labels).min() >= 30
    again = mosaic_digits()
    np.testing.assert_array_equal(again.splits["test"].images, source.splits["test"].images)
    np.testing.assert_array_equal(again.splits["train"].labels, train.labels)
    assert not np.array_equal(mosaic_digits(seed=1).splits["train"].labels, train.labels)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_train": 0}, "num_train: 0: must be >= 1"), ({"blank_prob": 1.0}, "blank_prob: 1.0: must be < 1"),
    ({"num_val": 2.0}, "num_val: 2.0: must be an integer"), ({"imbalance": 0.5}, "imbalance: 0.5: must be >= 1"),
])
def test_mosaic_digits_rejects_bad_kwargs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SOURCES.build("mosaic_digits", **kwargs)


def test_multilabel_sources_are_tagged_with_their_task():
    assert SOURCES.names("multilabel") == ["coco", "label_csv", "mosaic_digits"]
    assert not set(SOURCES.names("multilabel")) & set(SOURCES.names("multiclass"))
