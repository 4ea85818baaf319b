"""The `prepare` stage: load a data set, make it long-tailed, carve val/test, and write manifests, pixel caches and
class counts. Everything is validated before anything is written; the output folder appears whole or not at all.

How the train / val / test splits are made depends on the task (`ltpipe.tasks`): one splitter per task name in
SPLITTERS. Reading the images, the checks and the writing are shared."""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pandas as pd
import torch

from ltpipe.data.decode import bad_files_message, decode_files
from ltpipe.data.imbalance import class_order, class_ranks, per_class_counts, stream_generator
from ltpipe.data.sources import SOURCES, Source, SourceSplit
from ltpipe.errors import ConfigError
from ltpipe.io import write_csv, write_json, write_npy
from ltpipe.multilabel.imbalance import long_tailed_subset
from ltpipe.registry import Registry
from ltpipe.schema import as_params
from ltpipe.tasks import Task, get_task, require_every_class

# task name -> f(source, cfg, task) -> (splits {"train", "val", "test"}, the "imbalance" record of info.json)
SPLITTERS = Registry("train/val/test splitter")

# Streamed images are normalised with ImageNet's statistics (computing exact ones would mean a second full pass).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STREAM_IMAGE_SIZE = 224


@dataclass
class PrepareConfig:
    """What `prepare` reads of the params (task, seed, dataset, imbalance, split), already validated by the schema."""

    seed: int
    name: str
    kwargs: Dict[str, Any]
    in_memory_max_size: int
    profile: str
    factor: float
    n_max: int | None
    class_order: str
    val_from: str
    val_per_class: int
    test_per_class: int
    task: str = "multiclass"
    pareto: Dict[str, Any] = dataclasses.field(default_factory=dict)
    val_fraction: float = 0.1
    test_fraction: float = 0.2

    @classmethod
    def from_params(cls, params) -> "PrepareConfig":
        imbalance, split = params.imbalance, params.split
        return cls(seed=params.seed, name=params.dataset.name, kwargs=params.dataset_kwargs(),
                   in_memory_max_size=params.dataset.in_memory_max_size, profile=imbalance.profile,
                   factor=imbalance.factor, n_max=imbalance.n_max, class_order=imbalance.class_order,
                   val_from=split.val_from, val_per_class=split.val_per_class, test_per_class=split.test_per_class,
                   task=params.task, pareto=dict(imbalance.pareto), val_fraction=split.val_fraction,
                   test_fraction=split.test_fraction)


def _read_files(source: Source, cfg: PrepareConfig, task: Task) -> tuple[Source, List[str], int, bool]:
    """Decode every file of every split once; drop (skip_bad) or reject unreadable ones."""
    names = list(source.splits)
    paths = [p for n in names for p in source.splits[n].paths]
    ids = [i for n in names for i in source.splits[n].ids]
    decoded = decode_files(paths, max_size=cfg.in_memory_max_size, image_size=source.image_size)
    if decoded.bad and not source.skip_bad:
        raise ConfigError(f"{bad_files_message(paths, decoded.bad)}; fix or remove them, or set "
                          f"dataset.{cfg.name}.skip_bad: true to skip them")
    skipped = sorted(ids[i] for i in decoded.bad)
    splits, start, row = {}, 0, 0
    for n in names:
        size = len(source.splits[n])
        local = decoded.keep[(decoded.keep >= start) & (decoded.keep < start + size)] - start
        part = source.splits[n].subset(local)
        if decoded.images is not None:
            part.images, part.paths = decoded.images[row:row + len(local)], None
        splits[n], start, row = part, start + size, row + len(local)
    where = f"{cfg.name} train split after skipping unreadable files"
    require_every_class(task.counts(task.check(splits["train"].labels, len(source.classes), where),
                                    len(source.classes)), source.classes, where)
    return dataclasses.replace(source, splits=splits), skipped, decoded.channels, decoded.images is not None


def _carve(data: SourceSplit, per_class: int, num_classes: int, generator, classes: List[str], what: str, hint: str):
    """(first `per_class` of each class's seeded permutation, the rest)."""
    counts = np.bincount(data.labels, minlength=num_classes)
    short = np.flatnonzero(counts < per_class + 1)
    if len(short):
        c = short[0]
        raise ConfigError(f"class {classes[c]!r} has {counts[c]} images, too few to carve {what}={per_class} and keep "
                          f"at least one; {hint}")
    ranks = class_ranks(data.labels, num_classes, generator)
    return data.subset(np.flatnonzero(ranks < per_class)), data.subset(np.flatnonzero(ranks >= per_class))


@SPLITTERS.register("multiclass")
def multiclass_splits(source: Source, cfg: PrepareConfig, task: Task) -> Tuple[Dict[str, SourceSplit], Dict[str, Any]]:
    """`make_splits`, with its imbalance record: the profile, n_max, the head / tail ratio and the class order."""
    splits, counts, order = make_splits(source, cfg)
    return splits, {"profile": cfg.profile, "factor": cfg.factor, "n_max": max(counts),
                    "ratio": max(counts) / min(counts), "class_order": [source.classes[c] for c in order]}


Carve = Callable[[SourceSplit, str], Tuple[SourceSplit, SourceSplit]]


def _pool_val_test(source: Source, cfg: PrepareConfig, carve: Carve) -> Tuple[SourceSplit, SourceSplit | None,
                                                                              SourceSplit]:
    """(train pool, val, test): test is the source's own or `carve(pool, "test")`; val the source's own (val_from
    source), `carve(test, "val")` (val_from test) or None (val_from train: the splitter takes it from the pool)."""
    pool = source.splits["train"]
    test = source.splits.get("test")
    if test is None:
        test, pool = carve(pool, "test")
    val = None
    if cfg.val_from == "source":
        if "val" not in source.splits:
            raise ConfigError(f"data set {cfg.name!r} has no val split of its own, so split.val_from: source is "
                              f"impossible; valid choices here: train, test")
        val = source.splits["val"]
    elif cfg.val_from == "test":
        val, test = carve(test, "val")
    return pool, val, test


def make_splits(source: Source, cfg: PrepareConfig) -> tuple[Dict[str, SourceSplit], List[int], List[int]]:
    """train (long-tailed), val and test splits, the per-class train counts and the rank -> class order."""
    classes, num_classes = source.classes, len(source.classes)
    carving = {"test": (cfg.test_per_class, "split.test_per_class", "lower split.test_per_class"),
               "val": (cfg.val_per_class, "split.val_per_class",
                       "lower split.val_per_class or set split.val_from: train")}

    def carve(data: SourceSplit, stream: str) -> Tuple[SourceSplit, SourceSplit]:
        per_class, what, hint = carving[stream]
        return _carve(data, per_class, num_classes, stream_generator(cfg.seed, stream), classes, what, hint)

    pool, val, test = _pool_val_test(source, cfg, carve)
    pool_counts = np.bincount(pool.labels, minlength=num_classes)
    reserve = cfg.val_per_class if cfg.val_from == "train" else 0
    hint = ("; lower split.val_per_class or imbalance.n_max, or set split.val_from: test" if reserve
            else "; lower imbalance.n_max")
    short = np.flatnonzero(pool_counts < reserve + 1)
    if len(short):
        c = short[0]
        raise ConfigError(f"class {classes[c]!r} has {pool_counts[c]} train images, too few for "
                          f"split.val_per_class={reserve} plus one training image{hint}")
    order = class_order(num_classes, cfg.class_order, cfg.seed)
    counts = per_class_counts(list(pool_counts - reserve), classes, profile=cfg.profile, factor=cfg.factor,
                              n_max=cfg.n_max, order=order, hint=hint)
    # Train takes the first n_c of each class's permutation, val the last val_per_class: val never depends on the
    # imbalance factor, so runs at different factors are compared on the same validation images.
    ranks = class_ranks(pool.labels, num_classes, stream_generator(cfg.seed, "train"))
    train = pool.subset(np.flatnonzero(ranks < np.asarray(counts)[pool.labels]))
    if reserve:
        val = pool.subset(np.flatnonzero(ranks >= (pool_counts - reserve)[pool.labels]))
    return {"train": train, "val": val, "test": test}, counts, order


def _carve_fraction(data: SourceSplit, fraction: float, seed: int, stream: str, what: str
                    ) -> Tuple[SourceSplit, SourceSplit]:
    """(a seeded `fraction` of the images, at least one, the rest, at least one), each in image order."""
    n = len(data)
    k = min(max(int(round(fraction * n)), 1), n - 1)
    if n < 2:
        raise ConfigError(f"{what}={fraction} needs at least 2 images to carve from, got {n}")
    chosen = torch.randperm(n, generator=stream_generator(seed, stream))[:k].sort().values.numpy()
    rest = np.setdiff1d(np.arange(n), chosen)
    return data.subset(chosen), data.subset(rest)


@SPLITTERS.register("multilabel")
def multilabel_splits(source: Source, cfg: PrepareConfig, task: Task) -> Tuple[Dict[str, SourceSplit], Dict[str, Any]]:
    """Multi-label splits: test and val are the source's own when it has them (`split.val_from: source`), else a
    seeded `split.test_fraction` / `split.val_fraction` of the images carved from the train pool (val_from train) or
    from the test split (val_from test); the long-tailed builder (`imbalance.profile` pareto: the DB paper's
    procedure, or none) then runs on what is left of the train pool. Val and test may lack a class (its AP is
    undefined and left out of the means); train must hold every class."""
    classes = source.classes
    fractions = {"test": cfg.test_fraction, "val": cfg.val_fraction}

    def carve(data: SourceSplit, stream: str) -> Tuple[SourceSplit, SourceSplit]:
        return _carve_fraction(data, fractions[stream], cfg.seed, stream, f"split.{stream}_fraction")

    pool, val, test = _pool_val_test(source, cfg, carve)
    if val is None:
        val, pool = carve(pool, "val")
    for name, split in (("train", pool), ("val", val), ("test", test)):
        task.check(split.labels, len(classes), f"{cfg.name} {name} split")
    n_max = cfg.n_max if cfg.n_max is not None else int(task.counts(pool.labels, len(classes)).max())
    subset = long_tailed_subset(pool.labels, classes, profile=cfg.profile, n_max=n_max, seed=cfg.seed,
                                **cfg.pareto)
    counts = subset.counts
    info: Dict[str, Any] = {"profile": cfg.profile, "n_max": int(counts.max()),
                            "ratio": float(counts.max() / counts.min()),
                            "visit_order": [classes[c] for c in subset.order]}
    if cfg.profile == "pareto":
        info.update(cfg.pareto, targets=dict(zip(classes, subset.targets.tolist())))
    unlabeled = getattr(source, "unlabeled", {})
    if unlabeled:
        info["unlabeled"] = {name: len(ids) for name, ids in unlabeled.items()}
    return {"train": pool.subset(subset.indices), "val": val, "test": test}, info


def pixel_stats(images: np.ndarray) -> tuple[List[float], List[float]]:
    """Exact per-channel mean and (population) std in [0, 1], from 256-bin histograms (no float copy of the data)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(images.shape[-1]):
        hist = np.bincount(images[..., c].ravel(), minlength=256).astype(np.float64)
        m = float(hist @ values / hist.sum())
        mean.append(m)
        std.append(float(np.sqrt(hist @ (values - m) ** 2 / hist.sum())))
    return mean, std


def _write(out: Path, source: Source, splits: Dict[str, SourceSplit], task: Task, info: Dict[str, Any]) -> None:
    classes = source.classes
    # Images per class, an image with k labels counting in each of its k classes.
    counts = task.counts(splits["train"].labels, len(classes)).tolist()
    write_json(out / "classes.json", classes)
    write_json(out / "class_counts.json", dict(zip(classes, counts)))
    write_csv(out / "class_counts.csv", pd.DataFrame({"class": classes, "count": counts}))
    write_json(out / "info.json", info)
    for name, data in splits.items():
        write_csv(out / f"{name}.csv", pd.DataFrame({"id": data.ids, task.label_column: task.encode(data.labels,
                                                                                                   classes)}))
        if data.images is not None:
            write_npy(out / f"{name}_images.npy", data.images)


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old)  # POSIX rename over an empty directory
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def prepare(params, out_dir) -> None:
    """Write classes.json, class_counts.{json,csv}, info.json, {train,val,test}.csv (`id,label`, or `id,labels` with
    the class names joined by "|" for the multilabel task) and, for small images, {train,val,test}_images.npy (uint8
    N,H,W,Ch) into `out_dir`, replacing it whole. `params`: Params or a mapping."""
    cfg = PrepareConfig.from_params(as_params(params))
    task = get_task(cfg.task)
    make = SPLITTERS.get(task.name)
    source = SOURCES.build(cfg.name, **cfg.kwargs)
    splits, imbalance = make(source, cfg, task)  # fails fast, before any pixel is read
    skipped: List[str] = []
    if not source.from_files:
        channels, in_memory = source.splits["train"].images.shape[-1], True
    elif source.skip_bad:
        # Unreadable files leave the pool before subsampling, so the long-tailed counts stay exact.
        source, skipped, channels, in_memory = _read_files(source, cfg, task)
        splits, imbalance = make(source, cfg, task)
    else:
        # Only the images that are used need reading; any unreadable one aborts.
        chosen, _, channels, in_memory = _read_files(dataclasses.replace(source, splits=splits), cfg, task)
        splits = chosen.splits
    train = splits["train"]
    if in_memory:
        mean, std = pixel_stats(train.images)
    else:
        mean, std = (list(IMAGENET_MEAN), list(IMAGENET_STD)) if channels == 3 else ([0.449], [0.226])
    info = {
        "task": task.name,
        "dataset": cfg.name,
        "num_classes": len(source.classes),
        "channels": int(channels),
        "in_memory": bool(in_memory),
        "image_size": None if in_memory else (source.image_size or STREAM_IMAGE_SIZE),
        "image_shape": list(train.images.shape[1:3]) if in_memory else None,
        "root": source.root,
        "splits": {name: len(data) for name, data in splits.items()},
        "mean": mean,
        "std": std,
        "imbalance": imbalance,
        "val_from": cfg.val_from,
        "skipped": skipped,
    }
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        _write(tmp, source, splits, task, info)
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
