"""Control for the CIFAR-10-LT stage 1: the authors' training on the same data, outside ltpipe.

Is a gap between our CE (or LDAM-DRW) stage 1 and the published 70.4 (77.0) in ltpipe's code or in the data? This
script trains the reference ResNet-32 of kaidic/LDAM-DRW (imported, unmodified, from a checkout given by --ref-repo)
the way its `cifar_train.py --loss_type CE --train_rule None` (or `--loss_type LDAM --train_rule DRW`) does: the same
LT subset rule (np.random.seed(0), per class a shuffled index list, the first n_i images), PIL RandomCrop(32,
padding=4) + flip + its normalisation, SGD 0.1 / momentum 0.9 / wd 2e-4 on every parameter, batch 128, the per-epoch
lr rule (linear warm-up over 5 epochs, x0.01 after 80% and x0.0001 after 90% of the epochs: 160 / 180 of 200),
evaluated on the whole test set after every epoch (with --eval-every K, after every K-th epoch before the first decay
and every epoch from it, where the last and the best epochs lie: the same training without most test passes). LDAM
uses the reference's NormedLinear head and LDAMLoss (max margin 0.5, s 30); DRW switches to class-balanced weights
(beta 0.9999) after 80% of the epochs (epoch 160 of 200). Only the data source (the image folders of the shared JPEG
copy instead of the pickled originals) and the device (CPU) differ. Prints the last and the best test top-1 (the
reference prints the best, "Best Prec@1").

    git clone https://github.com/kaidic/LDAM-DRW /path/LDAM-DRW
    python benchmarks/reference_control.py --ref-repo /path/LDAM-DRW --root /path/cifar10-jpg --epochs 40
    python benchmarks/reference_control.py --ref-repo /path/LDAM-DRW --root /path/cifar10-jpg --loss ldam \
        --train-rule drw --out ldam_drw.json

Resumable: a checkpoint is written after every epoch next to --out and picked up when the same command (same
--epochs, --seed, --loss and --train-rule) runs again. Only the file writing comes from ltpipe (atomic writes,
checkpoints).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as transforms
from PIL import Image

from ltpipe.io import write_json
from ltpipe.train.checkpoint import fingerprint, load_checkpoint, save_checkpoint

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def list_split(root: Path, split: str) -> tuple[list[str], np.ndarray]:
    """(image paths relative to root, labels), class by class in CLASSES order, files sorted: the order of the
    reference loaders and of ltpipe's imagefolder source."""
    paths, labels = [], []
    for label, name in enumerate(CLASSES):
        files = sorted(p.name for p in (root / split / name).glob("*.jpg"))
        paths += [f"{split}/{name}/{f}" for f in files]
        labels += [label] * len(files)
    if not paths:
        sys.exit(f"no images under {root / split}/<class>/*.jpg")
    return paths, np.array(labels)


def load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    paths, labels = list_split(root, split)
    return np.stack([np.asarray(Image.open(root / p).convert("RGB")) for p in paths]), labels


def long_tailed(images: np.ndarray, labels: np.ndarray, imb_factor: float = 0.01, seed: int = 0):
    """The subset of imbalance_cifar.py (IMBALANCECIFAR10.get_img_num_per_cls + gen_imbalanced_data)."""
    np.random.seed(seed)
    n_max = len(images) / len(CLASSES)
    counts = [int(n_max * imb_factor ** (i / (len(CLASSES) - 1.0))) for i in range(len(CLASSES))]
    keep = []
    for label, count in zip(np.unique(labels), counts):
        index = np.where(labels == label)[0]
        np.random.shuffle(index)
        keep.append(index[:count])
    keep = np.concatenate(keep)
    return images[keep], labels[keep], counts


def load_module(path: Path):
    """A reference repository's file as a module (named after its folder and file, so two files called the same from
    different repositories stay apart)."""
    spec = importlib.util.spec_from_file_location(f"reference_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def best(history: list) -> float | None:
    """The best test accuracy of a history in which None marks an epoch that was not tested (None if none was)."""
    return max((x for x in history if x is not None), default=None)


def percent(accuracy: float | None) -> str:
    return "-" if accuracy is None else f"{100 * accuracy:.2f}"


def fast(x: torch.Tensor) -> torch.Tensor:
    # channels-last is what oneDNN's CPU convolutions run fastest on; the arithmetic is the same
    return x.contiguous(memory_format=torch.channels_last)


class ArrayDataset(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def reference_data(root: Path):
    """((LT train images, labels, class counts, train transform), (test images, labels, test transform)) as the
    CIFAR-LT codes of LDAM-DRW and MiSLAS build them: pad-4 crop + flip, their fixed CIFAR normalisation."""
    normalize = transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), normalize])
    test_tf = transforms.Compose([transforms.ToTensor(), normalize])
    return (*long_tailed(*load_split(root, "train")), train_tf), (*load_split(root, "test"), test_tf)


def reference_loaders(root: Path, *, batch_size: int, test_batch_size: int, workers: int):
    """(shuffled train loader, test loader, class counts, test labels) over `reference_data`."""
    (images, labels, counts, train_tf), (test_images, test_labels, test_tf) = reference_data(root)
    train = torch.utils.data.DataLoader(ArrayDataset(images, labels, train_tf), batch_size=batch_size, shuffle=True,
                                        num_workers=workers)
    test = torch.utils.data.DataLoader(ArrayDataset(test_images, test_labels, test_tf), batch_size=test_batch_size,
                                       num_workers=workers)
    return train, test, counts, test_labels


def git_commit(folder: Path) -> str:
    """The short commit of a reference checkout ("unknown" for a folder outside git)."""
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True,
                          text=True).stdout.strip() or "unknown"


def reference_lr(epoch: int, epochs: int, base: float = 0.1,
                 decays: tuple[float, float] = (0.01, 0.0001)) -> float:
    """cifar_train.py adjust_learning_rate with 160/180 as 80%/90% of `epochs` (epoch is 0-based there too): linear
    warm-up over 5 epochs, then base, base * decays[0] after 80%, base * decays[1] after 90%."""
    e = epoch + 1
    if e <= 5:
        return base * e / 5
    if e > int(0.9 * epochs):
        return base * decays[1]
    if e > int(0.8 * epochs):
        return base * decays[0]
    return base


def drw_weights(epoch: int, epochs: int, counts: list[int]) -> torch.Tensor | None:
    """cifar_train.py's DRW rule (betas [0, 0.9999] switched at epoch 160 of 200, here 80% of `epochs`): from then on
    w_j = (1 - beta) / (1 - beta^n_j), normalised to sum to the number of classes; before it, no weights."""
    if epoch < int(0.8 * epochs):
        return None
    beta = 0.9999
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return torch.tensor(weights / weights.sum() * len(counts), dtype=torch.float32)


def criterion_for(loss: str, counts: list[int], weight: torch.Tensor | None):
    if loss == "ce":
        return torch.nn.CrossEntropyLoss(weight=weight)
    import losses  # the reference's LDAMLoss
    return losses.LDAMLoss(cls_num_list=counts, max_m=0.5, s=30, weight=weight)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref-repo", type=Path, required=True, help="a checkout of kaidic/LDAM-DRW")
    parser.add_argument("--root", type=Path, required=True, help="the unpacked cifar10-jpg folder")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loss", choices=["ce", "ldam"], default="ce")
    parser.add_argument("--train-rule", choices=["none", "drw"], default="none")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--eval-every", type=int, default=1,
                        help="test every K-th epoch before the first lr decay (80%% of the epochs), then every epoch")
    parser.add_argument("--out", type=Path, default=Path("reference_control.json"))
    args = parser.parse_args()
    if not (args.ref_repo / "models" / "resnet_cifar.py").is_file():
        sys.exit(f"{args.ref_repo} is not a kaidic/LDAM-DRW checkout (no models/resnet_cifar.py)")
    if args.eval_every < 1:
        sys.exit(f"--eval-every must be >= 1, got {args.eval_every}")
    if args.epochs < 10:
        sys.exit(f"--epochs must be >= 10 (5 warm-up epochs, then the two decays), got {args.epochs}")
    sys.path.insert(0, str(args.ref_repo))
    import models  # the reference's package: resnet32(num_classes, use_norm)
    # The reference's LDAMLoss builds its tensors as torch.cuda.FloatTensor; on a CPU the CPU type stands in.
    if not torch.cuda.is_available():
        torch.cuda.FloatTensor = torch.FloatTensor

    ref_commit = git_commit(args.ref_repo)
    torch.manual_seed(args.seed)
    train, test, counts, test_labels = reference_loaders(args.root, batch_size=128, test_batch_size=100,
                                                         workers=args.workers)
    model = models.resnet32(num_classes=len(CLASSES), use_norm=args.loss == "ldam")
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9, weight_decay=2e-4)

    run = dict(epochs=args.epochs, seed=args.seed)
    if (args.loss, args.train_rule) != ("ce", "none"):
        # CE runs keep the fingerprint of the checkpoints written before --loss / --train-rule existed
        run.update(loss=args.loss, train_rule=args.train_rule)
    checkpoint, run_id = args.out.with_suffix(".ckpt"), fingerprint(run, [])
    state = dict(epoch=0, history=[], wall_s=0.0)
    saved = load_checkpoint(checkpoint, run_id)
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        torch.set_rng_state(saved["rng"])
        state = saved["state"]
        print(f"resuming after epoch {state['epoch']}/{args.epochs}", flush=True)
    print(f"class counts {counts} ({sum(counts)} images); test {len(test_labels)}", flush=True)
    for epoch in range(state["epoch"], args.epochs):
        start = time.perf_counter()
        lr = reference_lr(epoch, args.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        weight = drw_weights(epoch, args.epochs, counts) if args.train_rule == "drw" else None
        criterion = criterion_for(args.loss, counts, weight)
        model.train()
        for x, y in train:
            loss = criterion(model(fast(x)), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        accuracy = None  # not tested after this epoch
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 > int(0.8 * args.epochs):
            model.eval()
            with torch.no_grad():
                predicted = torch.cat([model(fast(x)).argmax(1) for x, _ in test]).numpy()
            accuracy = float((predicted == test_labels).mean())
            state["per_class_last"] = [float((predicted[test_labels == c] == c).mean()) for c in range(len(CLASSES))]
        state["history"].append(accuracy)
        state["epoch"], state["wall_s"] = epoch + 1, state["wall_s"] + time.perf_counter() - start
        save_checkpoint(checkpoint, dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                                         rng=torch.get_rng_state(), state=state, fingerprint=run_id))
        print(f"epoch {epoch + 1}/{args.epochs} lr {lr:.5f} loss {loss.item():.3f} test {percent(accuracy)} "
              f"best {percent(best(state['history']))} ({state['wall_s']:.0f} s)", flush=True)
    top = best(state["history"])
    result = dict(command=" ".join([Path(sys.executable).name] + sys.argv), reference_commit=ref_commit,
                  date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  machine=f"{platform.platform()} | {os.cpu_count()} CPUs", torch=torch.__version__,
                  epochs=args.epochs, seed=args.seed, loss=args.loss, train_rule=args.train_rule,
                  eval_every=args.eval_every, last=state["history"][-1], best=top,
                  best_epoch=state["history"].index(top) + 1,
                  per_class_last=state["per_class_last"], wall_s=round(state["wall_s"]), history=state["history"])
    write_json(args.out, result)
    print(json.dumps({k: v for k, v in result.items() if k != "history"}), flush=True)


if __name__ == "__main__":
    main()
