"""The `prepare` stage: load a data set, make it long-tailed, carve val/test, and write manifests, pixel caches and
class counts. Everything is validated before anything is written; the output folder appears whole or not at all."""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pandas as pd

from ltpipe.data.decode import bad_files_message, decode_files
from ltpipe.data.imbalance import class_order, class_ranks, per_class_counts, stream_generator
from ltpipe.data.sources import SOURCES, Source, SourceSplit, check_labels
from ltpipe.errors import ConfigError
from ltpipe.io import write_csv, write_json, write_npy
from ltpipe.schema import as_params

# Streamed images are normalised with ImageNet's statistics (computing exact ones would mean a second full pass).
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
STREAM_IMAGE_SIZE = 224


@dataclass
class PrepareConfig:
    """What `prepare` reads of the params (seed, dataset, imbalance, split), already validated by the schema."""

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

    @classmethod
    def from_params(cls, params) -> "PrepareConfig":
        imbalance, split = params.imbalance, params.split
        return cls(seed=params.seed, name=params.dataset.name, kwargs=params.dataset_kwargs(),
                   in_memory_max_size=params.dataset.in_memory_max_size, profile=imbalance.profile,
                   factor=imbalance.factor, n_max=imbalance.n_max, class_order=imbalance.class_order,
                   val_from=split.val_from, val_per_class=split.val_per_class, test_per_class=split.test_per_class)


def _read_files(source: Source, cfg: PrepareConfig) -> tuple[Source, List[str], int, bool]:
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
    check_labels(splits["train"].labels, source.classes, f"{cfg.name} train split after skipping unreadable files")
    out = Source(source.classes, splits, source.root, source.image_size, source.skip_bad)
    return out, skipped, decoded.channels, decoded.images is not None


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


def make_splits(source: Source, cfg: PrepareConfig) -> tuple[Dict[str, SourceSplit], List[int], List[int]]:
    """train (long-tailed), val and test splits, the per-class train counts and the rank -> class order."""
    classes, num_classes = source.classes, len(source.classes)
    pool = source.splits["train"]
    test = source.splits.get("test")
    if test is None:
        test, pool = _carve(pool, cfg.test_per_class, num_classes, stream_generator(cfg.seed, "test"), classes,
                            "split.test_per_class", "lower split.test_per_class")
    if cfg.val_from == "source":
        if "val" not in source.splits:
            raise ConfigError(f"data set {cfg.name!r} has no val split of its own, so split.val_from: source is "
                              f"impossible; valid choices here: train, test")
        val = source.splits["val"]
    elif cfg.val_from == "test":
        val, test = _carve(test, cfg.val_per_class, num_classes, stream_generator(cfg.seed, "val"), classes,
                           "split.val_per_class", "lower split.val_per_class or set split.val_from: train")
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


def _write(out: Path, source: Source, splits: Dict[str, SourceSplit], counts: List[int],
           info: Dict[str, Any]) -> None:
    classes = source.classes
    write_json(out / "classes.json", classes)
    write_json(out / "class_counts.json", dict(zip(classes, counts)))
    write_csv(out / "class_counts.csv", pd.DataFrame({"class": classes, "count": counts}))
    write_json(out / "info.json", info)
    for name, data in splits.items():
        write_csv(out / f"{name}.csv", pd.DataFrame({"id": data.ids, "label": data.labels}))
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
    """Write classes.json, class_counts.{json,csv}, info.json, {train,val,test}.csv and, for small images,
    {train,val,test}_images.npy (uint8 N,H,W,Ch) into `out_dir`, replacing it whole. `params`: Params or a mapping."""
    cfg = PrepareConfig.from_params(as_params(params))
    source = SOURCES.build(cfg.name, **cfg.kwargs)
    splits, counts, order = make_splits(source, cfg)  # fails fast, before any pixel is read
    skipped: List[str] = []
    if not source.from_files:
        channels, in_memory = source.splits["train"].images.shape[-1], True
    elif source.skip_bad:
        # Unreadable files leave the pool before subsampling, so the long-tailed counts stay exact.
        source, skipped, channels, in_memory = _read_files(source, cfg)
        splits, counts, order = make_splits(source, cfg)
    else:
        # Only the images that are used need reading; any unreadable one aborts.
        chosen = Source(source.classes, splits, source.root, source.image_size, source.skip_bad)
        chosen, _, channels, in_memory = _read_files(chosen, cfg)
        splits = chosen.splits
    train = splits["train"]
    if in_memory:
        mean, std = pixel_stats(train.images)
    else:
        mean, std = (list(IMAGENET_MEAN), list(IMAGENET_STD)) if channels == 3 else ([0.449], [0.226])
    info = {
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
        "imbalance": {"profile": cfg.profile, "factor": cfg.factor, "n_max": max(counts),
                      "ratio": max(counts) / min(counts), "class_order": [source.classes[c] for c in order]},
        "val_from": cfg.val_from,
        "skipped": skipped,
    }
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp.", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        _write(tmp, source, splits, counts, info)
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
