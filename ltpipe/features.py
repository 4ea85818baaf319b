"""Features of the frozen stage-1 backbone, extracted once (eval mode) for every stage-2 method: of the unaugmented
images of every split, and (`stage2.train_views` V > 0) of V views of the train images augmented as in stage 1."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ltpipe.data.augment import build_augment
from ltpipe.data.loader import BatchLoader
from ltpipe.data.prepared import load_prepared
from ltpipe.errors import ConfigError
from ltpipe.io import write_npy
from ltpipe.models import load_classifier
from ltpipe.runtime import Runtime
from ltpipe.schema import as_params

SPLITS = ("train", "val", "test")
VIEWS_FILE = "train_views_features.npy"
# Fixed rather than a param: features must not depend on how they were batched.
BATCH_SIZE = 512


@torch.inference_mode()
def backbone_features(backbone: torch.nn.Module, loader: BatchLoader, n: int, desc: str,
                      runtime: Runtime | None = None, seed: int = 0) -> np.ndarray:
    """(n, D) float32 features of the loader's images in index order, under the runtime's autocast; `seed` draws a
    training loader's augmentation."""
    runtime = runtime or Runtime(device=loader.device)
    backbone.eval()
    batches = loader.batches(torch.arange(n), seed=seed)
    with runtime.autocast():
        feats = [backbone(x).float() for x, _ in tqdm(batches, desc=desc, total=-(-n // loader.batch_size),
                                                      leave=False)]
    return torch.cat(feats).cpu().numpy()


def extract_features(params, model_dir, prepared_dir, out_dir) -> None:
    """{train,val,test}_features.npy (float32, (N, D)) into `out_dir`, and with stage2.train_views V > 0
    train_views_features.npy ((V, N, D): view v augmented under seed (run seed, v)), on `params.runtime`'s device."""
    params = as_params(params)
    runtime = Runtime.from_params(params.runtime)
    model = load_classifier(model_dir).to(runtime.device)
    prepared = load_prepared(prepared_dir)
    loader_kw = dict(batch_size=BATCH_SIZE, mean=prepared.info["mean"], std=prepared.info["std"],
                     image_size=prepared.info.get("image_size"), device=runtime.device)
    for split in SPLITS:
        data = prepared.split(split)
        feats = backbone_features(model.backbone, BatchLoader(data, train=False, **loader_kw), len(data),
                                  f"features {split}", runtime)
        write_npy(Path(out_dir) / f"{split}_features.npy", feats.astype(np.float32))
    views = params.stage2.train_views
    if views:
        train = prepared.split("train")
        loader = BatchLoader(train, train=True, augment=build_augment(params.train.augment), **loader_kw)
        feats = np.stack([backbone_features(model.backbone, loader, len(train), f"features train view {v + 1}/{views}",
                                            runtime, seed=view_seed(params.seed, v)) for v in range(views)])
        write_npy(Path(out_dir) / VIEWS_FILE, feats.astype(np.float32))


def view_seed(run_seed: int, view: int) -> int:
    """One augmentation seed per (run seed, view): the views are fixed by the run seed, as stage 1 is."""
    return (int(run_seed) + 1) * 2 ** 32 + view


def load_features(features_dir, split: str, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.from_numpy(np.load(Path(features_dir) / f"{split}_features.npy")).to(device)


def load_train_views(features_dir, views: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """The (V, N, D) augmented train features that extract_features wrote for stage2.train_views V (None for 0)."""
    if not views:
        return None
    path = Path(features_dir) / VIEWS_FILE
    if not path.is_file():
        raise ConfigError(f"stage2.train_views: {views}: {path} does not exist; extract_features writes it when "
                          f"stage2.train_views > 0 (run `dvc repro`, which reruns extract_features)")
    feats = torch.from_numpy(np.load(path))
    if feats.dim() != 3 or feats.shape[0] != views:
        raise ConfigError(f"stage2.train_views: {views}: {path} holds {tuple(feats.shape)}, not {views} views; "
                          f"rerun extract_features")
    return feats.to(device)
