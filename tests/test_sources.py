import json

import numpy as np
import pytest
from imagedata import write_cifar, write_list, write_tree

from ltpipe.data.sources import SOURCES
from ltpipe.errors import ConfigError


def test_registry_names_and_unknown():
    assert SOURCES.names("multiclass") == ["cifar10", "cifar100", "digits", "imagefolder", "manifest"]
    with pytest.raises(ConfigError, match="cifar10, cifar100, coco, digits, imagefolder, label_csv, manifest"):
        SOURCES.get("mnist")
    with pytest.raises(ConfigError, match="data set 'imagefolder': roots: unknown key; did you mean root?"):
        SOURCES.validate_kwargs("imagefolder", {"roots": "x"})


# ------------------------------------------------------------------------------------------------- digits

def test_digits_scaled_to_uint8():
    from sklearn.datasets import load_digits

    raw = load_digits()
    src = SOURCES.build("digits")
    train = src.splits["train"]
    assert list(src.splits) == ["train"] and src.classes == [str(i) for i in range(10)]
    assert train.images.shape == (1797, 8, 8, 1) and train.images.dtype == np.uint8
    assert np.array_equal(train.images[..., 0], np.round(raw.images / 16 * 255).astype(np.uint8))
    assert np.array_equal(train.labels, raw.target) and train.labels.dtype == np.int64
    assert train.ids[5] == "digits/5" and train.paths is None


# ------------------------------------------------------------------------------------------------- imagefolder

def test_imagefolder_lists_sorted_classes(tmp_path):
    write_tree(tmp_path, {"train": {"zebra": 3, "ant": 2}, "test": {"zebra": 1, "ant": 2}})
    (tmp_path / "train/ant/notes.txt").write_text("not an image")
    (tmp_path / "train/ant/.hidden.png").write_bytes(b"")
    src = SOURCES.build("imagefolder", root=str(tmp_path))
    assert src.classes == ["ant", "zebra"] and set(src.splits) == {"train", "test"}
    train = src.splits["train"]
    assert train.ids == ["train/ant/000.png", "train/ant/001.png", "train/zebra/000.png", "train/zebra/001.png",
                         "train/zebra/002.png"]
    assert train.labels.tolist() == [0, 0, 1, 1, 1]
    assert train.paths[0] == str(tmp_path / "train/ant/000.png") and train.images is None


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ConfigError, match="root is required"):
        SOURCES.build("imagefolder")
    with pytest.raises(ConfigError, match="not a directory"):
        SOURCES.build("imagefolder", root=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="train"):
        SOURCES.build("imagefolder", root=str(tmp_path))
    write_tree(tmp_path, {"train": {"a": 1, "b": 1}, "test": {"a": 1, "c": 1}})
    with pytest.raises(ConfigError, match=r"missing: \['b'\].*extra: \['c'\]"):
        SOURCES.build("imagefolder", root=str(tmp_path))
    (tmp_path / "test/b").mkdir()
    (tmp_path / "test/c/000.png").unlink()
    (tmp_path / "test/c").rmdir()
    with pytest.raises(ConfigError, match="test/b' has no images"):
        SOURCES.build("imagefolder", root=str(tmp_path))
    with pytest.raises(ConfigError, match="image_size"):
        SOURCES.build("imagefolder", root=str(tmp_path), image_size=0)


# ------------------------------------------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_pickles(tmp_path, name, num_classes):
    arrays = write_cifar(tmp_path, name, {"train": 3 * num_classes, "test": num_classes}, num_classes)
    src = SOURCES.build(name, root=str(tmp_path))
    assert src.classes == [f"c{i}" for i in range(num_classes)] and set(src.splits) == {"train", "test"}
    for split in ("train", "test"):
        rows, labels = arrays[split]
        data = src.splits[split]
        assert data.images.shape == (len(rows), 32, 32, 3)
        n, h, w, c = 1, 5, 17, 2  # the pickles store each image as 3 planes of 32x32, red first
        assert data.images[n, h, w, c] == rows[n, c * 1024 + h * 32 + w]
        assert np.array_equal(data.labels, labels)
    assert src.splits["test"].ids[3] == "test/00003"


def test_cifar_missing_files_say_where(tmp_path):
    with pytest.raises(ConfigError, match="root is required"):
        SOURCES.build("cifar10")
    with pytest.raises(ConfigError, match=r"cifar-10-batches-py/data_batch_1' is missing.*download: true"):
        SOURCES.build("cifar10", root=str(tmp_path))


def test_cifar_download_failure_is_config_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(ConfigError, match="downloading cifar100.*network unreachable.*by hand"):
        SOURCES.build("cifar100", root=str(tmp_path), download=True)


def test_cifar_corrupt_pickle_names_file(tmp_path):
    write_cifar(tmp_path, "cifar10", {"train": 20, "test": 10}, 10)
    (tmp_path / "cifar-10-batches-py/data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ConfigError, match="data_batch_3"):
        SOURCES.build("cifar10", root=str(tmp_path))


# ------------------------------------------------------------------------------------------------- manifests

def test_manifest_txt(tmp_path):
    write_list(tmp_path / "train.txt", ["imgs/a.jpg 0", "imgs/b c.jpg 2", "", "imgs/d.jpg 1"])
    write_list(tmp_path / "val.txt", ["imgs/e.jpg 1"])
    src = SOURCES.build("manifest", root=str(tmp_path), train_list="train.txt", val_list=str(tmp_path / "val.txt"))
    assert src.classes == ["0", "1", "2"] and set(src.splits) == {"train", "val"}
    assert src.splits["train"].ids == ["imgs/a.jpg", "imgs/b c.jpg", "imgs/d.jpg"]
    assert src.splits["train"].labels.tolist() == [0, 2, 1]
    assert src.splits["val"].paths == [str(tmp_path / "imgs/e.jpg")]


@pytest.mark.parametrize("train, val, message", [
    (["a.jpg 0", "b.jpg one"], None, r"train.txt:2: cannot parse 'b.jpg one'"),
    (["a.jpg 0", "lonely"], None, r"train.txt:2: cannot parse"),
    (["a.jpg 0", "b.jpg -1"], None, r"train.txt:2: label -1 is out of range"),
    (["a.jpg 0", "b.jpg 1"], ["c.jpg 1", "", "d.jpg 2"], r"val.txt:3: label 2 is out of range"),
    (["a.jpg 0", "b.jpg 2"], None, r"class '1' has no images"),
])
def test_manifest_txt_errors(tmp_path, train, val, message):
    write_list(tmp_path / "train.txt", train)
    if val:
        write_list(tmp_path / "val.txt", val)
    with pytest.raises(ConfigError, match=message):
        SOURCES.build("manifest", root=str(tmp_path), train_list="train.txt", val_list="val.txt" if val else None)


def inat_doc(pairs, categories):
    return {"images": [{"id": 10 + k, "file_name": f"train/{k}.jpg"} for k in range(len(pairs))],
            "annotations": [{"image_id": 10 + k, "category_id": c} for k, c in enumerate(pairs)],
            "categories": [{"id": c, "name": f"species_{c}"} for c in categories]}


def test_manifest_inat_json(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps(inat_doc([9, 5, 7, 9], [9, 5, 7])))
    (tmp_path / "val.json").write_text(json.dumps(inat_doc([5, 11], [5, 7, 9, 11])))
    kw = dict(root=str(tmp_path), train_list="train.json", format="inat_json")
    src = SOURCES.build("manifest", **kw)
    assert src.classes == ["species_5", "species_7", "species_9"]  # sorted category ids -> contiguous labels
    assert src.splits["train"].labels.tolist() == [2, 0, 1, 2]
    with pytest.raises(ConfigError, match=r"val.json: images\[1\]: label 11 is out of range"):
        SOURCES.build("manifest", val_list="val.json", **kw)
    (tmp_path / "bad.json").write_text('{"images": [\n  1,,\n]}')
    with pytest.raises(ConfigError, match=r"bad.json:2: invalid JSON"):
        SOURCES.build("manifest", root=str(tmp_path), train_list="bad.json", format="inat_json")


def test_manifest_bad_config(tmp_path):
    with pytest.raises(ConfigError, match="txt, inat_json"):
        SOURCES.build("manifest", root=str(tmp_path), train_list="t.txt", format="csv")
    with pytest.raises(ConfigError, match="train_list is required"):
        SOURCES.build("manifest", root=str(tmp_path))
    with pytest.raises(ConfigError, match="does not exist"):
        SOURCES.build("manifest", root=str(tmp_path), train_list="t.txt")
