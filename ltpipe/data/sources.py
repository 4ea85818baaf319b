"""Data sets by name: each factory lists (or loads) one source into the common `Source` structure.

File-based sources only list paths and labels here; `ltpipe.data.decode` reads the pixels, once, in `prepare`.
"""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np

from ltpipe.checks import check_int
from ltpipe.errors import ConfigError
from ltpipe.registry import Registry
from ltpipe.tasks import require_every_class
from ltpipe.types import Bool, PosInt

SOURCES = Registry("data set", tasks=("multiclass",))
SPLITS = ("train", "val", "test")
MANIFEST_FORMATS = ("txt", "inat_json")


@dataclass
class SourceSplit:
    """One split: int64 labels, ids (relative path or e.g. "digits/123"), and either decoded pixels or files."""

    labels: np.ndarray
    ids: List[str]
    images: np.ndarray | None = None  # uint8 (N, H, W, Ch)
    paths: List[str] | None = None  # absolute file paths, parallel to ids

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> "SourceSplit":
        index = np.asarray(index, dtype=np.int64)
        return SourceSplit(
            labels=self.labels[index],
            ids=[self.ids[i] for i in index],
            images=None if self.images is None else self.images[index],
            paths=None if self.paths is None else [self.paths[i] for i in index],
        )


@dataclass
class Source:
    """Class names plus the splits the data set ships (`train` always; `val`, `test` when it has them)."""

    classes: List[str]
    splits: Dict[str, SourceSplit]
    root: str | None = None
    image_size: int | None = None  # resize target for file-based sources; None keeps the native size
    skip_bad: bool = False

    @property
    def from_files(self) -> bool:
        return self.splits["train"].images is None


def _check_image_size(image_size) -> None:
    check_int("image_size (null: native size)", image_size, 1, allow_none=True)


def _require_root(root, where: str, layout: str) -> Path:
    if root is None:
        raise ConfigError(f"dataset.{where}.root is required: the folder holding {layout}")
    path = Path(root)
    if not path.is_dir():
        raise ConfigError(f"dataset.{where}.root {str(root)!r} is not a directory; it must hold {layout}")
    return path


def check_labels(labels: np.ndarray, classes: Sequence[str], where: str) -> None:
    """Every label in range and every class present at least once."""
    bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
    if len(bad):
        raise ConfigError(f"{where}: label {int(labels[bad[0]])} at position {int(bad[0])} is out of range "
                          f"[0, {len(classes) - 1}]")
    require_every_class(np.bincount(labels, minlength=len(classes)), classes, where)


# --------------------------------------------------------------------------------------------------- digits

@SOURCES.register("digits")
def digits() -> Source:
    """UCI handwritten digits (Alpaydin & Kaynak, "Optical Recognition of Handwritten Digits", UCI ML Repository,
    1998), shipped with scikit-learn: 1,797 8x8 grayscale images, pixel = round(v * 255 / 16) for v in 0..16.

    No test split: `prepare` carves a balanced one.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.rint(data.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    labels = data.target.astype(np.int64)
    ids = [f"digits/{i}" for i in range(len(labels))]
    return Source(classes=[str(c) for c in data.target_names], splits={"train": SourceSplit(labels, ids, images)})


# --------------------------------------------------------------------------------------------------- CIFAR

_CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)], test=["test_batch"],
                    meta="batches.meta", names="label_names", labels="labels", tv="CIFAR10"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"], meta="meta",
                     names="fine_label_names", labels="fine_labels", tv="CIFAR100"),
}


def _unpickle(path: Path) -> Dict[str, object]:
    try:
        with open(path, "rb") as f:
            raw = pickle.load(f, encoding="bytes")  # the archives were written by Python 2
    except Exception as exc:  # corrupt or truncated archive: name the file, whatever pickle raised
        raise ConfigError(f"cannot read CIFAR batch {str(path)!r}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"CIFAR batch {str(path)!r} does not hold a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _cifar_split(folder: Path, files: List[str], spec: dict, split: str) -> Tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name in files:
        batch = _unpickle(folder / name)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            lab = np.asarray(batch[spec["labels"]], dtype=np.int64)
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"CIFAR batch {str(folder / name)!r} lacks 'data' (N x 3072 uint8) or "
                              f"{spec['labels']!r}: {exc}") from exc
        if len(lab) != len(data):
            raise ConfigError(f"CIFAR batch {str(folder / name)!r}: {len(data)} images but {len(lab)} labels")
        images.append(data.transpose(0, 2, 3, 1))  # stored channel-planar; the common layout is (N, H, W, Ch)
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)


def _cifar(name: str, root, download: bool) -> Source:
    spec = _CIFAR[name]
    layout = f"{spec['folder']}/ (the python version of {name.upper()})"
    if root is None:
        raise ConfigError(f"dataset.{name}.root is required: the folder holding {layout}")
    folder = Path(root) / spec["folder"]
    needed = spec["train"] + spec["test"] + [spec["meta"]]
    missing = [f for f in needed if not (folder / f).is_file()]
    if missing and download:
        import torchvision.datasets

        try:
            getattr(torchvision.datasets, spec["tv"])(str(root), train=True, download=True)
        except Exception as exc:  # offline, proxy, disk full...: the user needs the manual route
            raise ConfigError(f"downloading {name} into {str(root)!r} failed ({exc}); put the extracted "
                              f"{layout} there by hand, so that {str(folder / needed[0])!r} exists") from exc
        missing = [f for f in needed if not (folder / f).is_file()]
    if missing:
        raise ConfigError(
            f"{name} not found: {str(folder / missing[0])!r} is missing. Extract the python version of {name} "
            f"so that {str(folder)}/ holds {', '.join(needed)}, or set dataset.{name}.download: true"
        )
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(folder / spec["meta"])[spec["names"]]]
    splits = {}
    for split in ("train", "test"):
        images, labels = _cifar_split(folder, spec[split], spec, split)
        check_labels(labels, classes, f"{name} {split} ({folder})")
        splits[split] = SourceSplit(labels, [f"{split}/{i:05d}" for i in range(len(labels))], images)
    return Source(classes=classes, splits=splits, root=str(root))


@SOURCES.register("cifar10")
def cifar10(root: Optional[str] = None, download: Bool = False) -> Source:
    """CIFAR-10 (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", tech. report, U. Toronto 2009):
    python pickles under root/cifar-10-batches-py, 50,000 train / 10,000 test 32x32 RGB images, pixel = stored byte.
    """
    return _cifar("cifar10", root, download)


@SOURCES.register("cifar100")
def cifar100(root: Optional[str] = None, download: Bool = False) -> Source:
    """CIFAR-100 (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", tech. report, U. Toronto
    2009): python pickles under root/cifar-100-python, 100 fine classes, 500 train / 100 test images each.
    """
    return _cifar("cifar100", root, download)


# --------------------------------------------------------------------------------------------------- image folders

def image_extensions() -> Tuple[str, ...]:
    from PIL import Image

    Image.init()
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))


def _list_classes(split_dir: Path) -> List[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))


def _list_images(class_dir: Path, extensions: Tuple[str, ...]) -> List[str]:
    return sorted(e.name for e in os.scandir(class_dir)
                  if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(extensions))


@SOURCES.register("imagefolder")
def imagefolder(root: Optional[str] = None, image_size: Optional[PosInt] = None, skip_bad: Bool = False) -> Source:
    """Image folders in torchvision's ImageFolder layout, root/{train,val,test}/<class>/<image>, any format PIL reads;
    label = index of the class folder in sorted order (val optional; no test folder: `prepare` carves one).
    """
    _check_image_size(image_size)
    base = _require_root(root, "imagefolder", "train/<class>/<images> (and optionally val/, test/)")
    present = [s for s in SPLITS if (base / s).is_dir()]
    if "train" not in present:
        raise ConfigError(f"imagefolder: {str(base / 'train')!r} is missing; expected root/train/<class>/<images>")
    classes = _list_classes(base / "train")
    if not classes:
        raise ConfigError(f"imagefolder: {str(base / 'train')!r} holds no class folders")
    extensions = image_extensions()
    splits = {}
    for split in present:
        found = _list_classes(base / split)
        if found != classes:
            missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
            raise ConfigError(f"imagefolder: {split}/ has a different class set than train/ "
                              f"(missing: {missing or 'none'}, extra: {extra or 'none'}); every split needs the "
                              f"same class folders")
        ids, labels = [], []
        for label, name in enumerate(classes):
            files = _list_images(base / split / name, extensions)
            if not files:
                raise ConfigError(f"imagefolder: class folder {str(base / split / name)!r} has no images "
                                  f"(readable extensions: {', '.join(extensions)})")
            ids += [f"{split}/{name}/{f}" for f in files]
            labels += [label] * len(files)
        splits[split] = SourceSplit(np.asarray(labels, dtype=np.int64), ids, paths=[str(base / i) for i in ids])
    return Source(classes=classes, splits=splits, root=str(root), image_size=image_size, skip_bad=bool(skip_bad))


# --------------------------------------------------------------------------------------------------- manifests

def _resolve(base: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else base / path


def _parse_txt(path: Path) -> Tuple[List[str], List[int], List[int]]:
    """`relative/path.jpg label` per line; returns ids, labels and the line number of each entry."""
    ids, labels, lines = [], [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text:
                continue
            parts = text.rsplit(None, 1)
            try:
                if len(parts) != 2:
                    raise ValueError
                label = int(parts[1])
            except ValueError:
                raise ConfigError(f"{path}:{number}: cannot parse {text!r}; expected '<relative/path> <integer "
                                  f"label>'") from None
            if label < 0:
                raise ConfigError(f"{path}:{number}: label {label} is out of range; labels must be >= 0")
            ids.append(parts[0])
            labels.append(label)
            lines.append(number)
    return ids, labels, lines


def _parse_inat(path: Path) -> Tuple[List[str], List[int], Dict[int, str]]:
    """COCO-style JSON (iNaturalist 2018): images[].file_name, annotations[].category_id, categories[]."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    try:
        categories = {int(c["id"]): str(c.get("name", c["id"])) for c in doc["categories"]}
        label_of = {a["image_id"]: int(a["category_id"]) for a in doc["annotations"]}
        images = [(im["id"], im["file_name"]) for im in doc["images"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not an iNaturalist/COCO-style file (needs images[].id/file_name, "
                          f"annotations[].image_id/category_id, categories[].id): {exc!r}") from exc
    ids, labels = [], []
    for k, (image_id, name) in enumerate(images):
        if image_id not in label_of:
            raise ConfigError(f"{path}: images[{k}] (id {image_id}, {name!r}) has no annotation")
        ids.append(name)
        labels.append(label_of[image_id])
    return ids, labels, categories


def _manifest_split(list_file: Path, fmt: str, classes_by_id: Dict[int, int] | None, split: str):
    """ids, contiguous labels and the category map (built from the train file)."""
    if not list_file.is_file():
        raise ConfigError(f"manifest: {split} list {str(list_file)!r} does not exist")
    if fmt == "txt":
        ids, raw, lines = _parse_txt(list_file)
        where = [f"{list_file}:{n}" for n in lines]
        names = None
    else:
        ids, raw, names = _parse_inat(list_file)
        where = [f"{list_file}: images[{k}]" for k in range(len(ids))]
    if not ids:
        raise ConfigError(f"manifest: {split} list {str(list_file)!r} has no entries")
    if classes_by_id is None:
        known = sorted(names) if names is not None else range(max(raw) + 1)
        classes_by_id = {cid: k for k, cid in enumerate(known)}
    labels = []
    for w, cid in zip(where, raw):
        if cid not in classes_by_id:
            raise ConfigError(f"{w}: label {cid} is out of range; valid labels are those of the train list "
                              f"({min(classes_by_id)}..{max(classes_by_id)}, {len(classes_by_id)} classes)")
        labels.append(classes_by_id[cid])
    return ids, np.asarray(labels, dtype=np.int64), classes_by_id, names


@SOURCES.register("manifest")
def manifest(root: Optional[str] = None, train_list: Optional[str] = None, val_list: Optional[str] = None,
             test_list: Optional[str] = None, format: Literal["txt", "inat_json"] = "txt",
             image_size: Optional[PosInt] = None, skip_bad: Bool = False) -> Source:
    """List-file data sets: ImageNet-LT / Places-LT (Liu et al., "Large-Scale Long-Tailed Recognition in an Open
    World", CVPR 2019; `txt`: "<path relative to root> <label>" per line) and iNaturalist 2018 (Van Horn et al.,
    "The iNaturalist Species Classification and Detection Dataset", CVPR 2018; `inat_json`: COCO-style JSON).

    Naturally long-tailed: use with imbalance.profile none. No test list: `prepare` carves a balanced one.
    """
    if format not in MANIFEST_FORMATS:
        raise ConfigError(f"unknown manifest format {format!r}; valid choices: {', '.join(MANIFEST_FORMATS)}")
    _check_image_size(image_size)
    base = _require_root(root, "manifest", "the images the list files name")
    if train_list is None:
        raise ConfigError("dataset.manifest.train_list is required (a list file, relative to root or absolute)")
    splits, classes_by_id, names = {}, None, None
    for split, list_name in (("train", train_list), ("val", val_list), ("test", test_list)):
        if list_name is None:
            continue
        ids, labels, classes_by_id, split_names = _manifest_split(_resolve(base, list_name), format,
                                                                  classes_by_id, split)
        names = names or split_names
        splits[split] = SourceSplit(labels, ids, paths=[str(base / i) for i in ids])
    classes = [names[cid] if names else str(cid) for cid in classes_by_id]
    check_labels(splits["train"].labels, classes, f"manifest train list {train_list!r}")
    return Source(classes=classes, splits=splits, root=str(root), image_size=image_size, skip_bad=bool(skip_bad))


# Registered in SOURCES on import (the multi-label data sets: label_csv, coco, mosaic_digits).
from ltpipe.multilabel import data as _multilabel_data  # noqa: E402,F401
