"""Multi-label data sets: every image carries a set of labels, held as an (N, C) bool multi-hot matrix.

A multi-label data set is a `MultiLabelSource`: an `ltpipe.data.sources.Source` whose splits' `labels` are that
matrix (so `SourceSplit.subset` and the file decoding of `prepare` apply unchanged), plus the ids of images dropped
for having no label. Sources, registered in `ltpipe.data.sources.SOURCES` for the multilabel task (`dataset.name`):

- `label_csv`: CSV list files with a header and columns `path,labels`; `path` is relative to `root` (or absolute),
  `labels` the image's class names separated by `|` (names may contain spaces; blanks around names are ignored), e.g.
  `images/0001.jpg,person|traffic light`.
- `coco`: COCO-style instances JSON; an image's labels are the categories annotated in it.
- `mosaic_digits`: the embedded default, no download: 2x2 mosaics of scikit-learn's 8x8 digits (see `make_mosaics`).

Problems are ConfigErrors naming the file and line or image id, raised before anything is written: a label that is
not a class, a listed image with no label, a class with no training image.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from pydantic import Field

from ltpipe.data.sources import SOURCES, Source, SourceSplit, _require_root, _resolve, digits
from ltpipe.errors import ConfigError
from ltpipe.tasks import LABEL_SEPARATOR, require_every_class
from ltpipe.types import Bool, Float, Int, OpenUnitFloat, PosInt

MULTILABEL = ("multilabel",)
_SEED_STRIDE = 1_000_003
# One random stream per purpose: changing the test size never moves the training mosaics.
_MOSAIC_STREAMS = ("pools", "train", "val", "test")
_POOL_FRACTIONS = (0.6, 0.2, 0.2)  # digits behind train / val / test mosaics: no digit image is in two splits

ImbalanceFactor = Annotated[Float, Field(ge=1)]


@dataclass
class MultiLabelSource(Source):
    """A Source with (N, C) bool `labels` per split; `unlabeled[split]` lists the ids dropped for having no label."""

    unlabeled: Dict[str, List[str]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------- checks

def check_every_class_present(targets: np.ndarray, classes: Sequence[str], where: str) -> None:
    """ConfigError naming the first class of `targets` (N, C) that no image holds."""
    require_every_class(class_counts(targets), classes, where)


def class_counts(targets: np.ndarray) -> np.ndarray:
    """(C,) int64 images holding each class: an image with k labels counts once in each of its k classes."""
    return np.asarray(targets, dtype=bool).sum(axis=0, dtype=np.int64)


# --------------------------------------------------------------------------------------------------- label CSV

def read_label_csv(path: Path, classes: Sequence[str] | None) -> Tuple[List[str], np.ndarray, List[str]]:
    """(paths as written, (N, C) bool targets, classes) of a `path,labels` CSV; classes=None takes the sorted set of
    names found in the file."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the label list ({exc})") from exc
    if list(table.columns[:2]) != ["path", "labels"]:
        raise ConfigError(f"{path}:1: header must start with 'path,labels', got {','.join(table.columns)!r}")
    # Header is line 1 and blank lines are kept as empty rows, so row k is line k + 2.
    lines = table.index.to_numpy() + 2
    table = table[(table["path"].str.strip() != "") | (table["labels"].str.strip() != "")]
    if table.empty:
        raise ConfigError(f"{path}: the label list has no entries")
    no_path = np.flatnonzero(table["path"].str.strip() == "")
    if len(no_path):
        raise ConfigError(f"{path}:{lines[table.index[no_path[0]]]}: the path is empty; each line is <path>,<labels>")
    names = table["labels"].str.split(LABEL_SEPARATOR, regex=False).explode().str.strip()
    names = names[names != ""]
    if classes is None:
        classes = sorted(names.unique())
    if len(set(classes)) != len(classes):
        raise ConfigError(f"classes {list(classes)!r} name a class twice; class names must be unique")
    column = pd.Index(list(classes)).get_indexer(names)
    if (column < 0).any():
        first = int(np.argmax(column < 0))
        raise ConfigError(f"{path}:{lines[names.index[first]]}: label {names.iloc[first]!r} is not a class; "
                          f"valid classes: {', '.join(classes)}")
    targets = np.zeros((len(table), len(classes)), dtype=bool)
    targets[table.index.get_indexer(names.index), column] = True
    unlabeled = np.flatnonzero(~targets.any(axis=1))
    if len(unlabeled):
        row = table.index[unlabeled[0]]
        raise ConfigError(f"{path}:{lines[row]}: image {table.loc[row, 'path']!r} has no labels "
                          f"({len(unlabeled)} such line(s)); give at least one class name in 'labels'")
    return table["path"].str.strip().tolist(), targets, list(classes)


@SOURCES.register("label_csv", tasks=MULTILABEL)
def label_csv(root: Optional[str] = None, train_list: Optional[str] = None, val_list: Optional[str] = None,
              test_list: Optional[str] = None, classes: Optional[List[str]] = None,
              image_size: Optional[PosInt] = None, skip_bad: Bool = False) -> MultiLabelSource:
    """Multi-label list files (`path,labels` CSV, labels separated by `|`), one per split; train_list is required.

    classes=None: the sorted label names of the train list; val and test lists must use those names.
    """
    base = _require_root(root, "label_csv", "the images the list files name")
    if train_list is None:
        raise ConfigError("dataset.label_csv.train_list is required (a CSV with columns path,labels)")
    splits: Dict[str, SourceSplit] = {}
    for split, name in (("train", train_list), ("val", val_list), ("test", test_list)):
        if name is None:
            continue
        list_file = _resolve(base, name)
        if not list_file.is_file():
            raise ConfigError(f"label_csv: {split} list {str(list_file)!r} does not exist")
        ids, targets, classes = read_label_csv(list_file, classes)
        if split == "train":
            check_every_class_present(targets, classes, f"{list_file} (train)")
        splits[split] = SourceSplit(targets, ids, paths=[str(_resolve(base, i)) for i in ids])
    return MultiLabelSource(classes=classes, splits=splits, root=str(root), image_size=image_size,
                            skip_bad=bool(skip_bad))


# --------------------------------------------------------------------------------------------------- COCO JSON

def read_coco_instances(path: Path) -> Tuple[List[str], List[str], np.ndarray, List[str]]:
    """(category names in id order, file names, (N, C) bool targets, file names of the images with no annotation,
    which are left out of the other two) of a COCO-style instances file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
    try:
        categories = sorted((int(c["id"]), str(c["name"])) for c in doc["categories"])
        image_ids = np.array([int(im["id"]) for im in doc["images"]], dtype=np.int64)
        files = [str(im["file_name"]) for im in doc["images"]]
        ann_images = np.array([int(a["image_id"]) for a in doc["annotations"]], dtype=np.int64)
        ann_categories = np.array([int(a["category_id"]) for a in doc["annotations"]], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: not a COCO-style instances file (needs images[].id/file_name, "
                          f"annotations[].image_id/category_id, categories[].id/name): {exc!r}") from exc
    ids, counts = np.unique(image_ids, return_counts=True)
    if (counts > 1).any():
        raise ConfigError(f"{path}: image id {int(ids[np.argmax(counts > 1)])} appears more than once in images")
    rows = pd.Index(image_ids).get_indexer(ann_images)
    cols = pd.Index([cid for cid, _ in categories]).get_indexer(ann_categories)
    for what, index, values, known in (("image_id", rows, ann_images, "images"),
                                       ("category_id", cols, ann_categories, "categories")):
        if (index < 0).any():
            k = int(np.argmax(index < 0))
            raise ConfigError(f"{path}: annotations[{k}] (image id {int(ann_images[k])}) has {what} "
                              f"{int(values[k])}, which is not among the {known}")
    targets = np.zeros((len(files), len(categories)), dtype=bool)
    targets[rows, cols] = True
    labeled = targets.any(axis=1)
    files_arr = np.asarray(files, dtype=object)
    return [name for _, name in categories], files_arr[labeled].tolist(), targets[labeled], \
        files_arr[~labeled].tolist()


@SOURCES.register("coco", tasks=MULTILABEL)
def coco(root: Optional[str] = None, train_json: Optional[str] = None, train_images: str = "train2017",
         val_json: Optional[str] = None, val_images: Optional[str] = None, test_json: Optional[str] = None,
         test_images: Optional[str] = None, image_size: Optional[PosInt] = None,
         skip_bad: Bool = False) -> MultiLabelSource:
    """COCO-style instances files (Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014), as used for
    COCO-LT by Wu et al. (ECCV 2020): labels = the categories annotated in each image, classes = the categories in id
    order. `<split>_images` is the image folder under root that the file names are relative to.

    Images with no annotation are dropped and listed in `unlabeled` (train2017 has about a thousand).
    """
    base = _require_root(root, "coco", "the image folders and, unless absolute, the instances files")
    if train_json is None:
        raise ConfigError("dataset.coco.train_json is required (e.g. annotations/instances_train2017.json)")
    splits: Dict[str, SourceSplit] = {}
    unlabeled: Dict[str, List[str]] = {}
    classes: List[str] | None = None
    for split, name, folder in (("train", train_json, train_images), ("val", val_json, val_images),
                                ("test", test_json, test_images)):
        if name is None:
            continue
        if folder is None:
            raise ConfigError(f"dataset.coco.{split}_images is required with {split}_json: the folder under root "
                              f"that its file names are relative to")
        json_file = _resolve(base, name)
        if not json_file.is_file():
            raise ConfigError(f"coco: {split} file {str(json_file)!r} does not exist")
        names, files, targets, dropped = read_coco_instances(json_file)
        if classes is not None and names != classes:
            raise ConfigError(f"{json_file}: its categories differ from the train file's; every split needs the "
                              f"same categories")
        classes = names
        if split == "train":
            check_every_class_present(targets, classes, f"{json_file} (train)")
        ids = [f"{folder}/{f}" for f in files]
        splits[split] = SourceSplit(targets, ids, paths=[str(base / i) for i in ids])
        unlabeled[split] = [f"{folder}/{f}" for f in dropped]
    return MultiLabelSource(classes=classes, splits=splits, root=str(root), image_size=image_size,
                            skip_bad=bool(skip_bad), unlabeled=unlabeled)


# --------------------------------------------------------------------------------------------------- mosaics

@dataclass
class Mosaics:
    """images uint8 (M, g*H, g*W, Ch); targets bool (M, C); tiles int64 (M, g*g): source index per tile, row-major,
    -1 for a blank tile."""

    images: np.ndarray
    targets: np.ndarray
    tiles: np.ndarray


def make_mosaics(images: np.ndarray, labels: np.ndarray, num_classes: int, *, num_images: int,
                 generator: torch.Generator, class_probs: Sequence[float] | None = None, blank_prob: float = 0.5,
                 grid: int = 2) -> Mosaics:
    """Multi-label images from a single-label image array (N, H, W, Ch): a grid x grid mosaic whose labels are the
    set of classes its tiles show.

    Each tile is blank (zeros) with probability `blank_prob`, else a uniform image of a class drawn from
    `class_probs` (default uniform). A mosaic drawn all blank gets one tile, at a uniform position, redrawn from
    `class_probs`, so every mosaic has at least one label. Deterministic in `generator`.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64) if class_probs is None \
        else torch.as_tensor(class_probs, dtype=torch.float64)
    available = np.bincount(labels, minlength=num_classes)
    missing = np.flatnonzero((probs.numpy() > 0) & (available == 0))
    if len(missing):
        raise ConfigError(f"make_mosaics: class {int(missing[0])} has tile probability > 0 but no image")
    if not 0 <= blank_prob < 1:
        raise ConfigError(f"make_mosaics: blank_prob must lie in [0, 1), got {blank_prob!r}")
    k = grid * grid
    outcome = torch.cat([torch.tensor([blank_prob], dtype=torch.float64), (1 - blank_prob) * probs / probs.sum()])
    tile_class = torch.multinomial(outcome, num_images * k, replacement=True, generator=generator).view(-1, k) - 1
    all_blank = torch.nonzero((tile_class < 0).all(dim=1)).flatten()
    if len(all_blank):
        position = torch.randint(k, (len(all_blank),), generator=generator)
        tile_class[all_blank, position] = torch.multinomial(probs, len(all_blank), replacement=True,
                                                            generator=generator)

    # a uniform image of each tile's class: class-sorted index list + offset + floor(u * n_c)
    order = torch.from_numpy(np.argsort(labels, kind="stable"))
    counts = torch.from_numpy(available)
    offsets = torch.cumsum(counts, 0) - counts
    cls = tile_class.clamp_min(0)
    u = torch.rand(tile_class.shape, generator=generator, dtype=torch.float64)
    within = torch.minimum((u * counts[cls]).long(), (counts[cls] - 1).clamp_min(0))
    tiles = torch.where(tile_class >= 0, order[offsets[cls] + within], -1).numpy()

    pixels = images[np.maximum(tiles, 0)] * (tiles >= 0)[..., None, None, None].astype(images.dtype)
    m, _, h, w, ch = pixels.shape
    mosaic = pixels.reshape(m, grid, grid, h, w, ch).transpose(0, 1, 3, 2, 4, 5).reshape(m, grid * h, grid * w, ch)
    targets = np.zeros((num_images, num_classes + 1), dtype=bool)
    targets[np.arange(num_images)[:, None], tile_class.numpy() + 1] = True
    return Mosaics(images=np.ascontiguousarray(mosaic), targets=targets[:, 1:], tiles=tiles)


def exp_profile(num_classes: int, imbalance: float) -> np.ndarray:
    """p_c proportional to imbalance^(-c / (C - 1)): class 0 is `imbalance` times as likely as class C - 1."""
    ranks = np.arange(num_classes) / max(num_classes - 1, 1)
    weights = float(imbalance) ** -ranks
    return weights / weights.sum()


def _stream(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * _SEED_STRIDE + _MOSAIC_STREAMS.index(name))


@SOURCES.register("mosaic_digits", tasks=MULTILABEL)
def mosaic_digits(*, num_train: PosInt = 2000, num_val: PosInt = 500, num_test: PosInt = 1000,
                  imbalance: ImbalanceFactor = 500.0, blank_prob: OpenUnitFloat = 0.5,
                  seed: Int = 0) -> MultiLabelSource:
    """Multi-label mosaics of the UCI digits (`ltpipe.data.sources.digits`): a 2x2 grid of 8x8 digits is one 16x16
    single-channel image labelled with the set of digits it shows (`make_mosaics`).

    The 1,797 digits are split 60/20/20 (seeded) into the tiles of train / val / test, so no digit image appears in
    two splits. Train tiles draw digit c with p_c proportional to imbalance^(-c/9): class frequencies are long-tailed
    by construction (use with profile none), and the frequent digits co-occur with the rare ones, as "person" does in
    VOC. Val and test tiles draw digits uniformly, so every class has positives to rank for its AP.
    """
    source = digits()
    pool = source.splits["train"]
    num_classes = len(source.classes)
    perm = torch.randperm(len(pool), generator=_stream(seed, "pools")).numpy()
    bounds = np.cumsum(np.round(np.asarray(_POOL_FRACTIONS) * len(pool)).astype(np.int64))[:-1]
    splits: Dict[str, SourceSplit] = {}
    for split, tiles_of_split, size in zip(("train", "val", "test"), np.split(perm, bounds),
                                           (num_train, num_val, num_test)):
        probs = exp_profile(num_classes, imbalance) if split == "train" else None
        made = make_mosaics(pool.images[tiles_of_split], pool.labels[tiles_of_split], num_classes, num_images=size,
                            generator=_stream(seed, split), class_probs=probs, blank_prob=blank_prob)
        splits[split] = SourceSplit(made.targets, [f"mosaic/{split}/{i:05d}" for i in range(size)], made.images)
    check_every_class_present(splits["train"].labels, source.classes,
                              f"mosaic_digits train split ({num_train} mosaics, imbalance {imbalance})")
    return MultiLabelSource(classes=source.classes, splits=splits)
