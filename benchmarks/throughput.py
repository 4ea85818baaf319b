"""Stage-1 throughput on CIFAR-10-LT (IF 100), side by side on one device, to show what limits training:

(a) the model alone: forward + backward + SGD step on random tensors already on the device,
(b) ltpipe's real stage-1 epoch (`ltpipe.train.stage1.train_backbone`, one epoch, validation included),
(c) the reference data path of the published CIFAR-LT code (LDAM-DRW and its successors): a torchvision-style
    Dataset with per-sample PIL RandomCrop(32, padding=4) + RandomHorizontalFlip + ToTensor + Normalize, through a
    DataLoader with workers, feeding the same model step.

Each measurement runs in a fresh process, so its peak memory (RSS, and CUDA max allocated) is its own. The shared
CIFAR-10 JPEG archive is unpacked and prepared in a temporary folder that is removed afterwards.

Run from the repository root:
    python benchmarks/throughput.py [--device auto|cpu|cuda] [--precision auto|fp32|bf16|fp16] [--backbone resnet32]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from cifar10_lt import ARCHIVE, provenance

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cifar10_lt_params(root: Path, args) -> dict:
    """params.yaml with CIFAR-10-LT IF100 (LDAM's subset: val carved from test) and the standard stage-1 recipe."""
    params = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    params["dataset"].update(name="imagefolder")
    params["dataset"]["imagefolder"].update(root=str(root))
    params["imbalance"].update(profile="exp", factor=100)
    params["split"].update(val_from="test", val_per_class=20)
    params["model"]["backbone"] = args.backbone
    params["train"].update(epochs=1, warmup_epochs=0, batch_size=args.batch_size, channels_last=args.channels_last)
    params["train"]["augment"].update(crop_padding=4, flip=True)
    params["runtime"].update(device=args.device, precision=args.precision)
    return params


def model_step(runtime, model, optimizer, scaler, x, y):
    with runtime.autocast():
        loss = torch.nn.functional.cross_entropy(model(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def build(params):
    from ltpipe.models import Classifier
    from ltpipe.runtime import Runtime
    from ltpipe.schema import validate_params

    p = validate_params(params)
    runtime = Runtime.from_params(p.runtime)
    torch.manual_seed(0)
    model = Classifier(p.model.backbone, 10, 3).to(runtime.device).train()
    if p.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=2e-4)
    return p, runtime, model, optimizer, runtime.grad_scaler()


def sync(runtime) -> None:
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()


def measure_model(params, steps: int) -> float:
    p, runtime, model, optimizer, scaler = build(params)
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if p.train.channels_last else torch.contiguous_format
    x = torch.randn(p.train.batch_size, 3, 32, 32, generator=g).to(runtime.device, memory_format=fmt)
    y = torch.randint(0, 10, (p.train.batch_size,), generator=g).to(runtime.device)
    for _ in range(3):  # warm-up: allocator, kernel selection
        model_step(runtime, model, optimizer, scaler, x, y)
    sync(runtime)
    start = time.perf_counter()
    for _ in range(steps):
        model_step(runtime, model, optimizer, scaler, x, y)
    sync(runtime)
    return steps * p.train.batch_size / (time.perf_counter() - start)


def measure_epoch(params, prepared: Path, work: Path) -> float:
    from ltpipe.data.prepared import load_prepared
    from ltpipe.train.stage1 import train_backbone

    n = len(load_prepared(prepared).split("train"))
    start = time.perf_counter()
    train_backbone(params, prepared, work / "stage1", work / "live", work / "resume")
    return n / (time.perf_counter() - start)


class ReferenceCifar(torch.utils.data.Dataset):
    """The published CIFAR-LT code's data path: uint8 HWC arrays in memory, PIL and torchvision per sample."""

    def __init__(self, images, labels, mean, std):
        from torchvision import transforms

        self.images, self.labels = images, labels
        self.transform = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                             transforms.ToTensor(), transforms.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def measure_reference(params, prepared: Path, workers: int) -> float:
    from ltpipe.data.prepared import load_prepared

    p, runtime, model, optimizer, scaler = build(params)
    data = load_prepared(prepared)
    train = data.split("train")
    dataset = ReferenceCifar(train.images.numpy(), train.labels.numpy(), data.info["mean"], data.info["std"])
    cuda = runtime.device.type == "cuda"
    loader = torch.utils.data.DataLoader(dataset, batch_size=p.train.batch_size, shuffle=True, num_workers=workers,
                                         pin_memory=cuda, persistent_workers=False)
    fmt = torch.channels_last if p.train.channels_last else torch.contiguous_format
    start = time.perf_counter()
    for x, y in loader:
        x = x.to(runtime.device, non_blocking=cuda, memory_format=fmt)
        model_step(runtime, model, optimizer, scaler, x, y.to(runtime.device, non_blocking=cuda))
    sync(runtime)
    return len(dataset) / (time.perf_counter() - start)


def child(args) -> None:
    """One measurement; prints {"rate": images/s, "rss_mib": peak RSS, "cuda_mib": peak CUDA allocation}."""
    params = json.loads(Path(args.params_file).read_text())
    work = Path(args.work)
    if args.measure == "a":
        rate = measure_model(params, args.model_steps)
    elif args.measure == "b":
        rate = measure_epoch(params, work / "prepared", work / "epoch")
    else:
        rate = measure_reference(params, work / "prepared", args.workers)
    cuda = torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else None
    print(json.dumps({"rate": rate, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "cuda_mib": cuda}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--backbone", default="resnet32")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--model-steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="DataLoader workers of the reference path (c)")
    parser.add_argument("--measure", choices=["a", "b", "c"], help=argparse.SUPPRESS)
    parser.add_argument("--params-file", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        return child(args)
    if not args.archive.is_file():
        sys.exit(f"{args.archive} not found (the shared CIFAR-10 JPEG archive)")

    from ltpipe.data.prepare import prepare
    from ltpipe.runtime import Runtime
    from ltpipe.schema import validate_params

    print("\n".join(provenance(ROOT)))
    print(f"processor: {platform.processor() or platform.machine()} | "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (f" | {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    with tempfile.TemporaryDirectory(prefix="ltpipe-throughput-") as tmp:
        work = Path(tmp)
        subprocess.run(["tar", "xzf", str(args.archive), "-C", str(work)], check=True)
        params = cifar10_lt_params(work / "cifar10-jpg", args)
        runtime = Runtime.from_params(validate_params(params).runtime)
        print(f"device: {runtime.device}, precision: {runtime.precision}, channels_last: {args.channels_last}, "
              f"batch {args.batch_size}, reference path with {args.workers} DataLoader workers")
        start = time.perf_counter()
        prepare(params, work / "prepared")
        print(f"prepare (decode + write, all splits): {time.perf_counter() - start:.1f} s")
        shutil.rmtree(work / "cifar10-jpg")
        (work / "params.json").write_text(json.dumps(params))
        rows = {}
        names = {"a": f"(a) model alone: {args.backbone} fwd+bwd+SGD", "b": "(b) ltpipe stage-1 epoch",
                 "c": "(c) reference data path (PIL + DataLoader) + the same model step"}
        for key in ("a", "b", "c"):
            out = subprocess.run([sys.executable, __file__, "--measure", key, "--params-file",
                                  str(work / "params.json"), "--work", str(work), "--model-steps",
                                  str(args.model_steps), "--workers", str(args.workers)],
                                 capture_output=True, text=True, cwd=ROOT)
            if out.returncode:
                sys.exit(f"measurement {key} failed:\n{out.stderr[-3000:]}")
            rows[key] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"load average (1/5/15 min) at the end: {' / '.join(f'{v:.2f}' for v in os.getloadavg())}\n")
    print("| what | images/s | peak RSS (MiB) | peak CUDA alloc (MiB) |\n|---|---:|---:|---:|")
    for key, row in rows.items():
        cuda = f"{row['cuda_mib']:.0f}" if row["cuda_mib"] is not None else "-"
        print(f"| {names[key]} | {row['rate']:.0f} | {row['rss_mib']:.0f} | {cuda} |")
    a, b, c = (rows[k]["rate"] for k in "abc")
    print(f"\n(b) / (a) = {b / a:.0%} (target >= 90%); (b) / (c) = {b / c:.2f}x "
          f"(target >= 1 on a CPU, >= 3 on a GPU)")


if __name__ == "__main__":
    main()
