"""Re-encode the shared CIFAR-10 JPEG archive at a lower JPEG quality, to measure what compression costs a recipe.

The shared copy is JPEG at quality 75 and no lossless CIFAR-10 exists here, so the effect of its compression on
the published numbers cannot be measured directly. What can be measured is the slope: train the same recipe on a copy
compressed further (train and test alike, as the shared copy is) and compare with the run on the shared copy:

    python benchmarks/jpeg_requality.py --quality 50 --out /work/runs/q50/cifar10-jpg-q50.tar.gz
    python benchmarks/cifar10_lt.py --recipe cifar_lt_ce --methods none tau_norm --seeds 0 \\
        --archive /work/runs/q50/cifar10-jpg-q50.tar.gz --workdir /work/runs/q50

Same folder layout and file names as the input (cifar10-jpg/{train,test}/<class>/NNNN.jpg), PIL's encoder with 4:2:0
chroma subsampling (PIL's default below quality 95). Prints the mean PSNR between the input and the re-encoded
images, so the added loss is stated in numbers (infinite where every image comes back pixel for pixel: `--quality 75`
on the shared copy, which is PIL's quality 75).
"""
from __future__ import annotations

import argparse
import io
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from cifar10_lt import ARCHIVE
from ltpipe.io import atomic_path


def reencode(data: bytes, quality: int) -> tuple[bytes, float]:
    """JPEG bytes re-encoded at `quality`, and the PSNR (dB) of the result against the decoded input."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    before = np.asarray(image, dtype=np.float64)
    after = np.asarray(Image.open(io.BytesIO(out.getvalue())).convert("RGB"), dtype=np.float64)
    mse = float(np.mean((before - after) ** 2))
    return out.getvalue(), float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--quality", type=int, required=True, help="JPEG quality of the copy, 1-95")
    parser.add_argument("--out", type=Path, required=True, help="the .tar.gz to write")
    args = parser.parse_args()
    if not 1 <= args.quality <= 95:
        parser.error(f"--quality must be in 1..95 (PIL's useful range), got {args.quality}")
    if not args.archive.is_file():
        parser.error(f"{args.archive} not found (the shared CIFAR-10 JPEG archive)")
    psnr: dict[str, list[float]] = {}  # by split folder
    with atomic_path(args.out) as tmp, tarfile.open(args.archive, "r:gz") as src, tarfile.open(tmp, "w:gz") as dst:
        for member in src:
            if member.isfile() and member.name.endswith(".jpg"):
                data, db = reencode(src.extractfile(member).read(), args.quality)
                psnr.setdefault(Path(member.name).parts[1], []).append(db)
                info = tarfile.TarInfo(member.name)
                info.size, info.mtime, info.mode = len(data), member.mtime, member.mode
                dst.addfile(info, io.BytesIO(data))
            else:
                dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    for split, values in psnr.items():
        print(f"{split}: {len(values)} images re-encoded at quality {args.quality}, "
              f"PSNR against the input {np.mean(values):.2f} dB (median {np.median(values):.2f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
