"""Read image files once, in a thread pool (PIL releases the GIL while decoding): every file is fully decoded, so a
truncated or corrupt image fails in `prepare`, not hours into training."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ltpipe.errors import ConfigError

GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
# Files per pool task: amortises the executor's per-task cost over many tiny images.
_CHUNK = 256


@dataclass
class Decoded:
    """Outcome of reading a list of files; `keep` indexes the readable ones, in order."""

    keep: np.ndarray
    bad: Dict[int, str]  # file index -> reason
    channels: int  # 1 when every readable image is grayscale, else 3
    images: np.ndarray | None  # uint8 (len(keep), H, W, channels) when every image is small, else None


def _decode(path: str, max_size: int, image_size: int | None):
    """(pixels or None when larger than max_size, is_gray, native (w, h))."""
    from PIL import Image

    with Image.open(path) as im:
        size, gray = im.size, im.mode in GRAY_MODES
        mode = "L" if gray else "RGB"
        if max(size) > max_size:
            # Large images are only verified: a JPEG decoded at reduced scale still reads its whole stream.
            im.draft(mode, (max(max_size, 1),) * 2)
            im.load()
            return None, gray, size
        im.load()
        im = im.convert(mode)
        if image_size is not None and im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.BILINEAR)
        return np.asarray(im), gray, size


def _decode_chunk(paths: Sequence[str], max_size: int, image_size: int | None) -> List[Tuple]:
    out = []
    for path in paths:
        try:
            out.append(_decode(path, max_size, image_size) + (None,))
        except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
            out.append((None, False, None, f"{type(exc).__name__}: {exc}"))
    return out


def default_workers() -> int:
    return min(32, (os.cpu_count() or 1) + 4)


def decode_files(paths: Sequence[str], *, max_size: int, image_size: int | None = None,
                 workers: int | None = None) -> Decoded:
    """Decode every file; keep pixels only when every readable image has both sides <= max_size.

    Kept images are converted to one layout: resized to image_size x image_size when given (else all must share
    one native size), and grayscale ones repeated to 3 channels when the set mixes grayscale and colour.
    """
    chunks = [paths[i:i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        done = pool.map(lambda c: _decode_chunk(c, max_size, image_size), chunks)
        results = [r for chunk in tqdm(done, total=len(chunks), desc=f"decoding {len(paths)} images", unit="chunk",
                                       leave=False, disable=len(chunks) < 4) for r in chunk]
    bad = {i: r[3] for i, r in enumerate(results) if r[3] is not None}
    keep = np.asarray([i for i in range(len(results)) if i not in bad], dtype=np.int64)
    good = [results[i] for i in keep]
    channels = 1 if all(g[1] for g in good) else 3
    if not good or any(g[0] is None for g in good):
        return Decoded(keep, bad, channels, None)
    shapes = {}
    for i, g in zip(keep, good):
        shapes.setdefault(g[0].shape[:2], paths[i])
    if len(shapes) > 1:
        (s1, p1), (s2, p2) = list(shapes.items())[:2]
        raise ConfigError(f"images differ in size ({p1}: {s1[1]}x{s1[0]}, {p2}: {s2[1]}x{s2[0]}); set the data "
                          f"set's image_size to resize them to one square size")
    return Decoded(keep, bad, channels, np.stack([_with_channels(g[0], channels) for g in good]))


def _with_channels(pixels: np.ndarray, channels: int) -> np.ndarray:
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    return np.repeat(pixels, channels, axis=-1) if pixels.shape[-1] != channels else pixels


def bad_files_message(paths: Sequence[str], bad: Dict[int, str], limit: int = 5) -> str:
    shown = "; ".join(f"{paths[i]} ({reason})" for i, reason in list(bad.items())[:limit])
    more = f"; and {len(bad) - limit} more" if len(bad) > limit else ""
    return f"{len(bad)} unreadable image file(s): {shown}{more}"
