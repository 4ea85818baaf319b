"""CIFAR-10-LT (IF=100) with ResNet-32 through the real pipeline: `dvc exp run` in a temporary copy of this repository
with the README's recipe, then every stage-2 method on the cached stage 1, then `ltpipe report`.

Run from the repository root:
    python benchmarks/cifar10_lt.py [--epochs 200] [--methods none crt tau_norm lws ncm bbn weight_balancing mislas]
The full recipe (200 epochs) needs a GPU; with fewer epochs the milestones are scaled (0.8 T, 0.9 T) and the numbers
are not comparable with published ones.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared/data/cifar10-jpg.tar.gz"


def recipe(root: Path, epochs: int) -> list[str]:
    """The README's CIFAR-10-LT IF100 recipe as `-S` overrides (milestones at 80% and 90% of the epochs)."""
    milestones = f"[{int(epochs * 0.8)},{int(epochs * 0.9)}]"
    sets = {
        "dataset.name": "imagefolder", "dataset.imagefolder.root": str(root), "imbalance.profile": "exp",
        "imbalance.factor": 100, "split.val_from": "test", "split.val_per_class": 20, "model.backbone": "resnet32",
        "train.epochs": epochs, "train.batch_size": 128, "train.lr": 0.1, "train.momentum": 0.9,
        "train.weight_decay": 0.0002, "train.warmup_epochs": min(5, epochs - 1), "train.schedule": "multistep",
        "train.milestones": milestones, "train.gamma": 0.01, "train.augment.crop_padding": 4,
        "train.augment.flip": "true", "train.channels_last": "true", "stage2.crt.epochs": 30,
    }
    return [arg for k, v in sets.items() for arg in ("-S", f"{k}={v}")]


def sh(cmd: list[str], cwd: Path) -> str:
    env = dict(os.environ, PYTHONPATH=str(cwd), DVC_NO_ANALYTICS="1")
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--methods", nargs="+",
                        default=["none", "crt", "tau_norm", "lws", "ncm", "bbn", "weight_balancing", "mislas"])
    args = parser.parse_args()
    if not args.archive.is_file():
        sys.exit(f"{args.archive} not found (the shared CIFAR-10 JPEG archive)")
    print(f"command: {' '.join([Path(sys.executable).name] + sys.argv)}")
    print(f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}")
    print(f"machine: {platform.platform()} | {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="ltpipe-c10lt-") as tmp:
        work = Path(tmp)
        subprocess.run(["tar", "xzf", str(args.archive), "-C", str(work)], check=True)
        repo = work / "repo"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        sh(["git", "-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "--allow-empty", "-m", "bench"], repo)
        start = time.perf_counter()
        sh(["dvc", "exp", "run", "-n", "ce-" + args.methods[0], *recipe(work / "cifar10-jpg", args.epochs),
            "-S", f"stage2.method={args.methods[0]}"], repo)
        print(f"prepare + stage 1 ({args.epochs} epochs) + stage 2 + evaluate: {time.perf_counter() - start:.0f} s")
        for method in args.methods[1:]:
            start = time.perf_counter()
            sh(["dvc", "exp", "run", "-n", f"ce-{method}", "-S", f"stage2.method={method}"], repo)
            print(f"stage 2 {method} + evaluate: {time.perf_counter() - start:.0f} s")
        print(sh([sys.executable, "-m", "ltpipe.cli", "report"], repo))


if __name__ == "__main__":
    main()
