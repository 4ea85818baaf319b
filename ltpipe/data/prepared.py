"""Read what `prepare` wrote: class names and counts, info, and per split labels plus pixels or file paths.

The labels are in the format of the task `prepare` recorded in info.json (`ltpipe.tasks`): int64 class indices (N,)
or an (N, C) bool multi-hot matrix."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pandas as pd
import torch

from ltpipe.errors import ConfigError
from ltpipe.io import read_json
from ltpipe.tasks import Task, get_task

SPLITS = ("train", "val", "test")


@dataclass
class PreparedSplit:
    labels: torch.Tensor  # int64 (N,), or bool (N, C) multi-hot for the multilabel task
    ids: List[str]
    images: torch.Tensor | None  # uint8 (N, H, W, Ch) when the data set is cached in memory
    paths: List[str] | None  # absolute file paths when images are streamed

    def __len__(self) -> int:
        return len(self.labels)


class Prepared:
    """A prepared data set folder; splits are read on first use and cached."""

    def __init__(self, directory, classes: List[str], class_counts: List[int], info: Dict[str, Any]):
        self.dir, self.classes, self.class_counts, self.info = Path(directory), classes, class_counts, info
        # Folders prepared before tasks existed hold one label per image.
        self.task: Task = get_task(info.get("task", "multiclass"))
        self._splits: Dict[str, PreparedSplit] = {}

    def split(self, name: str) -> PreparedSplit:
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; valid choices: {', '.join(SPLITS)}")
        if name not in self._splits:
            self._splits[name] = self._load(name)
        return self._splits[name]

    def _load(self, name: str) -> PreparedSplit:
        path = self.dir / f"{name}.csv"
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        column = self.task.label_column
        if list(table.columns) != ["id", column]:
            raise ConfigError(f"{path}: columns {list(table.columns)}, expected ['id', {column!r}] for the "
                              f"{self.task.name} task; run the prepare stage again")
        labels = self.task.decode(table[column].tolist(), self.classes, str(path))
        ids = table["id"].tolist()
        if self.info["in_memory"]:
            images = torch.from_numpy(np.load(self.dir / f"{name}_images.npy"))
            if len(images) != len(labels):
                raise ConfigError(f"{self.dir}: {name}_images.npy has {len(images)} images but {name}.csv has "
                                  f"{len(labels)} rows; run the prepare stage again")
            return PreparedSplit(labels, ids, images, None)
        root = Path(self.info["root"]).resolve()
        return PreparedSplit(labels, ids, None, [str(root / i) for i in ids])


def load_prepared(directory) -> Prepared:
    directory = Path(directory)
    needed = ["classes.json", "class_counts.json", "info.json"] + [f"{s}.csv" for s in SPLITS]
    missing = [n for n in needed if not (directory / n).is_file()]
    if missing:
        raise ConfigError(f"{str(directory)!r} is not a prepared data set (missing {', '.join(missing)}); "
                          f"run the prepare stage (dvc repro prepare) first")
    classes = read_json(directory / "classes.json")
    counts = read_json(directory / "class_counts.json")
    return Prepared(directory, classes, [int(counts[c]) for c in classes], read_json(directory / "info.json"))
