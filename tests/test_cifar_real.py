"""The real CIFAR-10 (JPEG image folders from shared/) through prepare and the loader: the LDAM CIFAR-10-LT subset.

Nothing derived from the data set is written into the repository: it is extracted into pytest's temporary folder.
"""
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ltpipe.data.imbalance import long_tailed_counts
from ltpipe.data.augment import Augment
from ltpipe.data.loader import BatchLoader
from ltpipe.data.prepare import prepare
from ltpipe.data.prepared import load_prepared

ARCHIVE = Path(__file__).resolve().parents[2] / "shared/data/cifar10-jpg.tar.gz"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="session")
def cifar10_jpg(tmp_path_factory):
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE} not available")
    root = tmp_path_factory.mktemp("cifar10")
    if shutil.which("tar"):  # GNU tar unpacks the 60,000 small files ~4x faster than the tarfile module
        subprocess.run(["tar", "xzf", str(ARCHIVE), "-C", str(root)], check=True)
    else:
        with tarfile.open(ARCHIVE) as tar:
            tar.extractall(root, filter="data")
    return root / "cifar10-jpg"


@pytest.fixture(scope="module")
def cifar10_lt(cifar10_jpg, tmp_path_factory):
    params = {"seed": 0,
              "dataset": {"name": "imagefolder", "in_memory_max_size": 64, "imagefolder": {"root": str(cifar10_jpg)}},
              "imbalance": {"profile": "exp", "factor": 100, "n_max": None, "class_order": "index"},
              "split": {"val_from": "test", "val_per_class": 20, "test_per_class": 30}}
    out = tmp_path_factory.mktemp("cifar10_lt") / "prepared"
    prepare(params, out)
    return out


def test_cifar10_lt_if100_is_the_ldam_subset(cifar10_lt):
    counts = json.loads((cifar10_lt / "class_counts.json").read_text())
    info = json.loads((cifar10_lt / "info.json").read_text())
    assert list(counts) == CLASSES
    assert list(counts.values()) == long_tailed_counts(10, 5000, "exp", 100) and sum(counts.values()) == 12406
    assert info["in_memory"] and info["channels"] == 3 and info["image_shape"] == [32, 32]
    assert info["splits"] == {"train": 12406, "val": 200, "test": 9800}  # val carved from the 10,000 test images


def test_cached_pixels_are_the_decoded_files(cifar10_lt, cifar10_jpg):
    prepared = load_prepared(cifar10_lt)
    for split in ("train", "test"):
        data = prepared.split(split)
        assert data.images.shape == (len(data), 32, 32, 3) and data.images.dtype == torch.uint8
        for k in (0, len(data) // 2, len(data) - 1):
            pixels = np.asarray(Image.open(cifar10_jpg / data.ids[k]).convert("RGB"))
            assert np.array_equal(data.images[k].numpy(), pixels)
            assert data.ids[k].split("/")[1] == CLASSES[int(data.labels[k])]


def test_train_set_normalises_to_zero_mean_unit_std(cifar10_lt):
    prepared = load_prepared(cifar10_lt)
    train = prepared.split("train")
    loader = BatchLoader(train, batch_size=4096, mean=prepared.info["mean"], std=prepared.info["std"], train=False)
    x = torch.cat([b for b, _ in loader.batches(torch.arange(len(train)), seed=0)]).double()
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3, dtype=torch.float64), atol=1e-4)
    aug = BatchLoader(train, batch_size=128, mean=prepared.info["mean"], std=prepared.info["std"], train=True,
                      augment=Augment(crop_padding=4, flip=True))
    first = next(aug.batches(torch.randperm(len(train), generator=torch.Generator().manual_seed(0)), seed=0))
    assert first[0].shape == (128, 3, 32, 32) and first[1].shape == (128,)
