"""Control for cRT: ltpipe's cRT (a classifier trained on features extracted once, backbone in eval mode) against cRT
as the authors' code runs it, on the same stage-1 model.

facebookresearch/classifier-balancing (run_networks.py) freezes the backbone's parameters for cRT but puts every
network in train() mode each epoch, so BatchNorm normalises with the statistics of each class-balanced, augmented
batch and its running statistics drift to those of class-balanced data, which the test then uses. This script
trains three classifiers on one stage 1 (an ltpipe `artifacts/stage1` of a run whose `data/prepared` holds small
images), each with the cRT recipe of `conf/recipe/cifar_lt_ce.yaml` (30 epochs, SGD lr 0.1 momentum 0.9, wd 5e-4, lr
x0.1 after a third and two thirds of the epochs, batch 128, class-balanced sampling):
1. ltpipe's cRT on eval-mode features (what `stage2.method: crt` does);
2. the same after the BatchNorm running statistics are re-estimated on one class-balanced epoch of augmented images
   (is the BatchNorm shift alone the difference?);
3. the authors' way: each step a class-balanced batch of augmented images (pad-4 crop + flip) through the backbone in
   train mode without gradients, a fresh nn.Linear trained on it; evaluation in eval mode with the drifted statistics.
Prints mean per-class accuracy (%) on the val and test splits for each.

    python benchmarks/crt_control.py --run /path/to/pipeline/checkout [--epochs 30] [--seed 0]
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from ltpipe.classifier.base import Stage2Data
from ltpipe.classifier.crt import crt
from ltpipe.data.augment import Augment
from ltpipe.data.loader import BatchLoader
from ltpipe.data.prepared import load_prepared
from ltpipe.features import backbone_features
from ltpipe.metrics import compute_metrics
from ltpipe.models import load_classifier
from ltpipe.samplers import build_sampler
from ltpipe.train.schedule import build_sgd

SPLITS = ("train", "val", "test")


class Run:
    """The prepared splits and the stage-1 model of one pipeline checkout."""

    def __init__(self, root: Path, seed: int):
        self.prepared = load_prepared(root / "data/prepared")
        if self.prepared.split("train").images is None:
            raise SystemExit("this control needs small images decoded by prepare (dataset.in_memory_max_size)")
        self.model_dir, self.seed = root / "artifacts/stage1", seed
        self.splits = {s: self.prepared.split(s) for s in SPLITS}
        self.num_classes = len(self.prepared.classes)
        self.counts = [int(c) for c in torch.bincount(self.splits["train"].labels, minlength=self.num_classes)]

    def loader(self, split: str, train: bool) -> BatchLoader:
        return BatchLoader(self.splits[split], batch_size=128 if train else 512, train=train,
                           mean=self.prepared.info["mean"], std=self.prepared.info["std"],
                           augment=Augment(crop_padding=4, flip=True) if train else None)

    def features(self, model, split: str) -> torch.Tensor:
        n = len(self.splits[split].labels)
        return torch.from_numpy(backbone_features(model.backbone, self.loader(split, False), n, split))

    def balanced_accuracy(self, logits: torch.Tensor, split: str) -> float:
        labels = self.splits[split].labels.numpy()
        return 100 * compute_metrics(logits.numpy(), labels, self.counts)["balanced_accuracy"]

    def class_balanced_epoch(self, epoch: int, epochs: int) -> torch.Tensor:
        sampler = build_sampler("class_balanced", self.splits["train"].labels, self.num_classes)
        return sampler.epoch_indices(epoch, epochs, self.seed)


def ltpipe_crt(run: Run, model, epochs: int) -> dict:
    feats = {s: run.features(model, s) for s in SPLITS}
    data = Stage2Data(feats["train"], run.splits["train"].labels, feats["val"], run.splits["val"].labels, run.counts,
                      model.head, seed=run.seed)
    head, _ = crt(data, epochs=epochs, lr=0.1, schedule="multistep", milestones=(epochs // 3, 2 * epochs // 3),
                  sampler="class_balanced", progress=False)
    with torch.no_grad():
        return {s: run.balanced_accuracy(head(feats[s]), s) for s in ("val", "test")}


@torch.no_grad()
def recalibrate_batchnorm(run: Run, model) -> None:
    """Running statistics re-estimated as the plain average over one class-balanced epoch of augmented batches."""
    for m in model.backbone.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.backbone.train()
    for x, _ in run.loader("train", True).batches(run.class_balanced_epoch(0, 1), seed=run.seed):
        model.backbone(x)
    model.eval()


def authors_crt(run: Run, model, epochs: int) -> dict:
    """run_networks.py's cRT loop: backbone parameters frozen, model.train() every epoch, augmented batches."""
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    torch.manual_seed(run.seed)
    head = nn.Linear(model.backbone.num_features, run.num_classes)
    loader = run.loader("train", True)
    steps = -(-len(run.splits["train"].labels) // loader.batch_size)
    optimizer, scheduler = build_sgd(head.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                                     steps_per_epoch=steps, epochs=epochs, warmup_epochs=0, schedule="multistep",
                                     milestones=[epochs // 3, 2 * epochs // 3], gamma=0.1)
    for epoch in range(epochs):
        model.backbone.train()
        for x, y in loader.batches(run.class_balanced_epoch(epoch, epochs), seed=run.seed * 1000 + epoch):
            with torch.no_grad():
                feats = model.backbone(x)
            loss = nn.functional.cross_entropy(head(feats), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    model.eval()
    with torch.no_grad():
        return {s: run.balanced_accuracy(head(run.features(model, s)), s) for s in ("val", "test")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a pipeline checkout after `dvc repro`")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.epochs < 3:
        parser.error(f"--epochs {args.epochs}: needs >= 3 (the lr steps after a third and two thirds of the epochs)")
    run = Run(args.run, args.seed)
    print(f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; machine: "
          f"{platform.platform()}; torch {torch.__version__}; run: {args.run}; epochs {args.epochs}; seed {args.seed}")
    start = time.perf_counter()
    results = {"ltpipe cRT (eval-mode features)": ltpipe_crt(run, load_classifier(run.model_dir), args.epochs)}
    model = load_classifier(run.model_dir)
    recalibrate_batchnorm(run, model)
    results["ltpipe cRT after class-balanced BatchNorm re-estimation"] = ltpipe_crt(run, model, args.epochs)
    results["authors' cRT loop (train-mode BatchNorm, augmentation)"] = authors_crt(
        run, load_classifier(run.model_dir), args.epochs)
    for name, accuracy in results.items():
        print(f"{name}: val {accuracy['val']:.2f}, test {accuracy['test']:.2f}")
    print(json.dumps(results))
    print(f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
