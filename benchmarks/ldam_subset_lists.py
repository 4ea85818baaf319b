"""Manifest lists of the CIFAR-10-LT subset the authors' codes train on, for running an ltpipe recipe on their images.

LDAM-DRW's imbalance_cifar.py (reused by the TDE, MiSLAS and BBN codes) keeps, per class, the first n_c images of a
shuffle drawn with np.random.seed(0); ltpipe draws its own subset per run seed (ltpipe/data/imbalance.py). Same class
counts, other images. To tell whether a difference between ltpipe and a reference code comes from which images the
subset holds, train ltpipe on theirs: this writes `train_lt.txt` (that subset, the rule of
benchmarks/reference_control.py `long_tailed`) and `test.txt` (every test image, in the order the imagefolder source
lists them, so the val split carved from it is the same as with imagefolder), "<path relative to root> <label>" per
line, for the `manifest` source:

    python benchmarks/ldam_subset_lists.py --root /path/cifar10-jpg --out /path/lists
    python benchmarks/cifar10_lt.py --recipe tde ... -- -S dataset.name=manifest \\
        -S dataset.manifest.root=<workdir>/cifar10-jpg -S dataset.manifest.train_list=/path/lists/train_lt.txt \\
        -S dataset.manifest.test_list=/path/lists/test.txt -S imbalance.profile=none
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ltpipe.io import write_text
from reference_control import list_split, long_tailed


def write_list(path: Path, paths: list[str], labels: np.ndarray) -> None:
    write_text(path, "".join(f"{p} {int(y)}\n" for p, y in zip(paths, labels)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, required=True, help="cifar10-jpg (train/ and test/ class folders)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    paths, labels = list_split(args.root, "train")
    keep, kept_labels, counts = long_tailed(np.arange(len(paths)), labels)
    write_list(args.out / "train_lt.txt", [paths[i] for i in keep], kept_labels)
    write_list(args.out / "test.txt", *list_split(args.root, "test"))
    print(f"train_lt.txt: {len(keep)} images, counts {counts}; test.txt written to {args.out}")


if __name__ == "__main__":
    main()
