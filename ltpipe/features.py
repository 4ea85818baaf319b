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
from ltpipe.runtime import Runtime
from ltpipe.schema import as_params

SPLITS = ("train", "val", "test")
# Fixed rather than a param: features must not depend on how they were batched.
BATCH_SIZE = 512


@torch.inference_mode()
def backbone_features(backbone: torch.nn.Module, loader: BatchLoader, n: int, desc: str,
                      runtime: Runtime | None = None) -> np.ndarray:
    """(n, D) float32 features of the loader's images in index order, under the runtime's autocast."""
    runtime = runtime or Runtime(device=loader.device)
    backbone.eval()
    batches = loader.batches(torch.arange(n), seed=0)
    with runtime.autocast():
        feats = [backbone(x).float() for x, _ in tqdm(batches, desc=desc, total=-(-n // loader.batch_size),
                                                      leave=False)]
    return torch.cat(feats).cpu().numpy()


def extract_features(params, model_dir, prepared_dir, out_dir) -> None:
    """{train,val,test}_features.npy (float32) into `out_dir`, computed on `params.runtime`'s device."""
    runtime = Runtime.from_params(as_params(params).runtime)
    model = load_classifier(model_dir).to(runtime.device)
    prepared = load_prepared(prepared_dir)
    for split in SPLITS:
        data = prepared.split(split)
        loader = BatchLoader(data, batch_size=BATCH_SIZE, train=False, mean=prepared.info["mean"],
                             std=prepared.info["std"], image_size=prepared.info.get("image_size"), device=runtime.device)
        feats = backbone_features(model.backbone, loader, len(data.labels), f"features {split}", runtime)
        write_npy(Path(out_dir) / f"{split}_features.npy", feats.astype(np.float32))


def load_features(features_dir, split: str, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.from_numpy(np.load(Path(features_dir) / f"{split}_features.npy")).to(device)
