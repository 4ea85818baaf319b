"""Features of the frozen stage-1 backbone, extracted once (eval mode, no augmentation) for every stage-2 method."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ltpipe.data.loader import BatchLoader
from ltpipe.data.prepared import load_prepared
from ltpipe.io import write_npy
from ltpipe.models import load_classifier

SPLITS = ("train", "val", "test")
# Fixed rather than a param: features must not depend on how they were batched.
BATCH_SIZE = 256


@torch.no_grad()
def backbone_features(backbone: torch.nn.Module, loader: BatchLoader, n: int, desc: str) -> np.ndarray:
    backbone.eval()
    batches = loader.batches(torch.arange(n), seed=0)
    return torch.cat([backbone(x) for x, _ in tqdm(batches, desc=desc, total=-(-n // BATCH_SIZE), leave=False)]).numpy()


def extract_features(model_dir, prepared_dir, out_dir) -> None:
    model = load_classifier(model_dir)
    prepared = load_prepared(prepared_dir)
    for split in SPLITS:
        data = prepared.split(split)
        loader = BatchLoader(data, batch_size=BATCH_SIZE, train=False, mean=prepared.info["mean"],
                             std=prepared.info["std"], image_size=prepared.info.get("image_size"))
        feats = backbone_features(model.backbone, loader, len(data.labels), f"features {split}")
        write_npy(Path(out_dir) / f"{split}_features.npy", feats.astype(np.float32))


def load_features(features_dir, split: str) -> torch.Tensor:
    return torch.from_numpy(np.load(Path(features_dir) / f"{split}_features.npy"))
