"""Tiny synthetic image data for the data-layer tests: folders of PNGs, list files, fake CIFAR pickles."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
from PIL import Image


def random_pixels(rng: np.random.Generator, n: int, size: int | tuple, channels: int = 3) -> np.ndarray:
    h, w = (size, size) if isinstance(size, int) else size
    return rng.integers(0, 256, size=(n, h, w, channels), dtype=np.uint8)


def save_image(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def write_tree(root: Path, counts: Dict[str, Dict[str, int]], size=16, channels: int = 3, seed: int = 0,
               ext: str = "png") -> Dict[str, np.ndarray]:
    """root/<split>/<class>/<k>.png for counts[split][class] images each; returns {relative id: pixels}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, per_class in counts.items():
        for name, n in per_class.items():
            for k, pixels in enumerate(random_pixels(rng, n, size, channels)):
                rel = f"{split}/{name}/{k:03d}.{ext}"
                save_image(root / rel, pixels)
                written[rel] = pixels
    return written


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def write_cifar(root: Path, name: str, per_split: Dict[str, int], num_classes: int, seed: int = 0) -> Dict:
    """A fake python-pickle CIFAR archive (bytes keys, channel-planar rows, as the real files); returns the arrays."""
    rng = np.random.default_rng(seed)
    cifar10 = name == "cifar10"
    folder = root / ("cifar-10-batches-py" if cifar10 else "cifar-100-python")
    folder.mkdir(parents=True)
    files = {"train": [f"data_batch_{i}" for i in range(1, 6)] if cifar10 else ["train"],
             "test": ["test_batch"] if cifar10 else ["test"]}
    label_key = b"labels" if cifar10 else b"fine_labels"
    out = {}
    for split, names in files.items():
        n = per_split[split]
        labels = np.arange(n) % num_classes
        rows = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        out[split] = (rows, labels)
        for part, idx in zip(names, np.array_split(np.arange(n), len(names))):
            _dump(folder / part, {b"data": rows[idx], label_key: labels[idx].tolist()})
    names_key = b"label_names" if cifar10 else b"fine_label_names"
    _dump(folder / ("batches.meta" if cifar10 else "meta"), {names_key: [f"c{i}".encode() for i in range(num_classes)]})
    return out


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_list(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))
