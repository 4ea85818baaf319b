"""Images per second of the stage-1 ingredients on CIFAR-10-LT (IF 100), to see which one limits training:

(a) the data path alone (BatchLoader over the in-memory cache, train augmentation and eval),
(b) the model alone (forward + backward + SGD step on random tensors),
(c) one real stage-1 epoch (ltpipe.train.stage1.train_backbone, 1 epoch, validation included).

The real CIFAR-10 JPEG archive is unpacked and prepared in a temporary folder that is removed afterwards.
Run from the repository root:  python benchmarks/throughput.py [--skip-epoch] [--backbone resnet32]
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ltpipe.data.loader import BatchLoader  # noqa: E402
from ltpipe.data.prepare import prepare  # noqa: E402
from ltpipe.data.prepared import load_prepared  # noqa: E402
from ltpipe.io import load_params  # noqa: E402

ARCHIVE = ROOT.parent / "shared/data/cifar10-jpg.tar.gz"


def unpack(archive: Path, into: Path) -> Path:
    if shutil.which("tar"):
        subprocess.run(["tar", "xzf", str(archive), "-C", str(into)], check=True)
    else:
        with tarfile.open(archive) as tar:
            tar.extractall(into, filter="data")
    return into / "cifar10-jpg"


def cifar10_lt_params(root: Path, backbone: str, batch_size: int) -> dict:
    """params.yaml with CIFAR-10-LT IF100 (LDAM's subset: val carved from test) and the standard stage-1 recipe."""
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["dataset"].update(name="imagefolder", imagefolder={"root": str(root), "image_size": None,
                                                              "skip_bad": False})
    params["imbalance"].update(profile="exp", factor=100, n_max=None, class_order="index")
    params["split"].update(val_from="test", val_per_class=20)
    params["model"]["backbone"] = backbone
    params["train"].update(epochs=1, warmup_epochs=0, batch_size=batch_size, sampler="instance",
                           mixer="none", augment={"crop_padding": 4, "flip": True, "policy": "none"})
    params["loss"] = "ce"
    return params


def timed(fn, repeats: int = 1) -> float:
    """Fastest of `repeats` runs: on a shared machine the minimum is the least disturbed measurement."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def data_rate(prepared, train: bool, batch_size: int, channels_last: bool, repeats: int = 3) -> float:
    split = prepared.split("train")
    loader = BatchLoader(split, batch_size=batch_size, mean=prepared.info["mean"], std=prepared.info["std"],
                         train=train, augment={"crop_padding": 4, "flip": True}, channels_last=channels_last)
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(0))

    def run():
        for _ in loader.batches(order, seed=0):
            pass

    return len(split) / timed(run, repeats)


def model_rate(backbone: str, batch_size: int, steps: int, channels_last: bool, repeats: int = 3) -> float:
    from ltpipe.models import Classifier

    g = torch.Generator().manual_seed(0)
    model = Classifier(backbone, 10, 3).train()
    x = torch.randn(batch_size, 3, 32, 32, generator=g)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch_size,), generator=g)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up: allocator and kernel selection
        step()
    return steps * batch_size / timed(lambda: [step() for _ in range(steps)], repeats)


def epoch_rate(params: dict, prepared_dir: Path, work: Path, n_train: int) -> float:
    from ltpipe.train.stage1 import train_backbone

    seconds = timed(lambda: train_backbone(params, prepared_dir, work / "stage1", work / "live", work / "ckpt.pt"))
    return n_train / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--backbone", default="resnet32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model-steps", type=int, default=10)
    parser.add_argument("--skip-epoch", action="store_true", help="skip (c), the real stage-1 epoch")
    args = parser.parse_args()
    if not args.archive.is_file():
        sys.exit(f"{args.archive} not found (the shared CIFAR-10 JPEG archive)")

    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    print(f"machine: {platform.node()} | {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"{os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ltpipe-throughput-") as tmp:
        work = Path(tmp)
        root = unpack(args.archive, work)
        params = cifar10_lt_params(root, args.backbone, args.batch_size)
        seconds = timed(lambda: prepare(params, work / "prepared"))
        prepared = load_prepared(work / "prepared")
        n_train = len(prepared.split("train"))
        n_total = sum(prepared.info["splits"].values())
        rows.append(("prepare (decode + write, all splits)", n_total / seconds))
        for train in (True, False):
            for cl in (False, True):
                what = f"(a) data path, {'train: crop+flip' if train else 'eval'}{', channels_last' if cl else ''}"
                rows.append((what, data_rate(prepared, train, args.batch_size, cl)))
        for cl in (False, True):
            rows.append((f"(b) {args.backbone} fwd+bwd+SGD{', channels_last' if cl else ''}",
                         model_rate(args.backbone, args.batch_size, args.model_steps, cl)))
        if not args.skip_epoch:
            for cl in (False, True):
                params["train"]["channels_last"] = cl
                rows.append((f"(c) stage-1 epoch, {args.backbone}, {n_train} images{', channels_last' if cl else ''}",
                             epoch_rate(params, work / "prepared", work, n_train)))
    # Other processes on the machine skew every rate; the load average says how busy it was.
    print(f"load average (1/5/15 min) at the end: {' / '.join(f'{v:.2f}' for v in os.getloadavg())}")
    width = max(len(r[0]) for r in rows)
    print(f"\nCIFAR-10-LT IF100, batch size {args.batch_size}\n")
    print(f"| {'what'.ljust(width)} | images/s |\n|{'-' * (width + 2)}|---------:|")
    for what, rate in rows:
        print(f"| {what.ljust(width)} | {rate:8.0f} |")
    rates = dict(rows)
    for suffix in ("", ", channels_last"):
        epoch = rates.get(f"(c) stage-1 epoch, {args.backbone}, {n_train} images{suffix}")
        if epoch:
            model = rates[f"(b) {args.backbone} fwd+bwd+SGD{suffix}"]
            print(f"stage-1 epoch / model alone{suffix or ' (default memory format)'}: {epoch / model:.0%}")


if __name__ == "__main__":
    main()
