"""Classify image files with a trained pipeline (stage-1 backbone + stage-2 head), each image preprocessed exactly as
the evaluate stage sees a test image: the data layer decodes it (`decode_files`) and normalises it (`BatchLoader`,
train=False)."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ltpipe.models.heads import load_head
from ltpipe.data.decode import decode_files
from ltpipe.data.loader import BatchLoader
from ltpipe.data.prepared import Prepared, PreparedSplit, load_prepared
from ltpipe.checks import check_int
from ltpipe.errors import ConfigError
from ltpipe.models import load_classifier
from ltpipe.runtime import resolve_device

STAGE1_DIR = "artifacts/stage1"
HEAD_PATH = "artifacts/stage2/head.safetensors"
PREPARED_DIR = "data/prepared"
BATCH_SIZE = 64


@dataclass
class Prediction:
    path: str
    top: List[Tuple[str, float]]  # (class name, probability), most probable first


class Predictor:
    """Backbone + head + the prepared data set's classes and preprocessing (channels, size, mean/std)."""

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module, prepared: Prepared,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.backbone, self.head, self.prepared = backbone.eval().to(self.device), head.eval().to(self.device), prepared
        self.info = prepared.info
        self.channels = int(self.info["channels"])

    def load_images(self, paths: Sequence[str]) -> Tuple[PreparedSplit, List[int], Dict[str, str]]:
        """(split of the readable images, their indices into `paths`, {path: why it is unusable})."""
        if self.info["in_memory"]:
            return self._decoded(paths)
        # Streamed data sets are decoded by the loader itself; here each file is only verified (max_size=0).
        checked = decode_files(list(paths), max_size=0)
        keep = [int(i) for i in checked.keep]
        errors = {paths[i]: reason for i, reason in checked.bad.items()}
        split = PreparedSplit(torch.zeros(len(keep), dtype=torch.long), [paths[i] for i in keep], None,
                              [str(Path(paths[i]).resolve()) for i in keep])
        return split, keep, errors

    def _decoded(self, paths: Sequence[str]) -> Tuple[PreparedSplit, List[int], Dict[str, str]]:
        height, width = self.info["image_shape"]
        pixels, keep, errors = [], [], {}
        for i, path in enumerate(paths):
            # One file per call: decode_files insists that a batch of images shares one size.
            decoded = decode_files([path], max_size=sys.maxsize, image_size=height if height == width else None)
            if decoded.bad:
                errors[path] = decoded.bad[0]
                continue
            image = decoded.images[0]
            if image.shape[:2] != (height, width):
                errors[path] = (f"image is {image.shape[1]}x{image.shape[0]} but the model takes {width}x{height} "
                                f"(non-square sizes are not resized)")
                continue
            pixels.append(self._with_channels(image))
            keep.append(i)
        images = torch.from_numpy(np.stack(pixels)) if pixels else torch.zeros(0, height, width, self.channels,
                                                                                  dtype=torch.uint8)
        split = PreparedSplit(torch.zeros(len(keep), dtype=torch.long), [paths[i] for i in keep], images, None)
        return split, keep, errors

    def _with_channels(self, image: np.ndarray) -> np.ndarray:
        """(H, W, c) uint8 -> (H, W, self.channels): grey repeated to RGB as prepare does for mixed data sets,
        colour to PIL's "L" for a grey-scale model (as the streaming loader converts)."""
        if image.shape[-1] == self.channels:
            return image
        if self.channels == 3:
            return np.repeat(image, 3, axis=-1)
        from PIL import Image

        return np.asarray(Image.fromarray(image).convert("L"))[..., None]

    @torch.inference_mode()
    def probabilities(self, split: PreparedSplit) -> torch.Tensor:
        """The class probabilities of every image of `split`, (N, C), on the CPU: the softmax of the logits for one
        label per image, each class's sigmoid for multi-label data (the task of data/prepared)."""
        loader = BatchLoader(split, batch_size=BATCH_SIZE, mean=self.info["mean"], std=self.info["std"], train=False,
                             image_size=self.info.get("image_size"), device=self.device)
        num_classes = len(self.prepared.classes)
        logits = [self.head(self.backbone(x)).cpu() for x, _ in loader.batches(torch.arange(len(split)), seed=0)]
        logits = torch.cat(logits) if logits else torch.zeros(0, num_classes)
        if logits.shape[1] != num_classes:
            # A head from another data set (a stale artifacts/ folder) would print wrong names.
            raise ConfigError(f"the model has {logits.shape[1]} outputs but data/prepared has {num_classes} classes; "
                              f"run `dvc repro` so they match")
        return self.prepared.task.probabilities(logits.double())

    def predict(self, paths: Sequence[str], top_k: int = 5) -> Tuple[List[Prediction], Dict[str, str]]:
        """Top-k classes of every readable image, in input order, and {path: error} for the others.
        `top_k` larger than the number of classes lists every class; ties go to the lower class index."""
        check_int("top_k", top_k, 1)
        split, keep, errors = self.load_images(list(paths))
        probs = self.probabilities(split)
        order = torch.sort(probs, dim=1, descending=True, stable=True).indices[:, :top_k]
        classes = self.prepared.classes
        predictions = [Prediction(paths[i], [(classes[c], float(probs[row, c])) for c in order[row].tolist()])
                       for row, i in enumerate(keep)]
        return predictions, errors


def load_predictor(model_dir=".", device: str = "auto") -> Predictor:
    """The pipeline's outputs under `model_dir` (a repo after `dvc repro`): artifacts/stage1, the stage-2 head and
    data/prepared, on `device` (auto | cpu | cuda | cuda:N | mps; one that is not there is a ConfigError)."""
    device = resolve_device(device)
    root = Path(model_dir)
    missing = [p for p in (STAGE1_DIR + "/model.json", HEAD_PATH, PREPARED_DIR + "/info.json")
               if not (root / p).is_file()]
    if missing:
        raise ConfigError(f"{str(root)!r} lacks {', '.join(missing)}: --model-dir must be a pipeline folder after "
                          f"`dvc repro` (or `dvc exp apply <experiment>`)")
    return Predictor(load_classifier(root / STAGE1_DIR).backbone, load_head(root / HEAD_PATH),
                     load_prepared(root / PREPARED_DIR), device)


def format_prediction(prediction: Prediction) -> str:
    width = max(len(name) for name, _ in prediction.top)
    lines = [prediction.path] + [f"  {name.ljust(width)}  {prob:.4f}" for name, prob in prediction.top]
    return "\n".join(lines)
