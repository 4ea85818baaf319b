"""One batch iterator for stage-1 training, evaluation and feature extraction.

Small images live in memory as one uint8 tensor and are augmented a whole batch at a time; large ones are streamed
from files by a torch DataLoader. Both draw their randomness from the `seed` of `batches()`, per position in the
epoch order, so a sample's augmentation depends on (seed, position) only, never on batch size or worker count.
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Sequence, Tuple

import torch

from ltpipe.data.augment import Augment, Normalize, apply_policy, crop_flip, draw_crop_flip, seeded, \
    stream_transform
from ltpipe.data.prepared import PreparedSplit
from ltpipe.checks import check_int
from ltpipe.errors import ConfigError

# Per-sample seeds for torchvision transforms are drawn below this bound (fits torch.manual_seed).
_SEED_BOUND = 2 ** 62


class _FileDataset(torch.utils.data.Dataset):
    """Position k of the epoch order -> (uint8 image tensor, label), transformed under its own seed."""

    def __init__(self, paths: List[str], labels: torch.Tensor, order: torch.Tensor, seeds: torch.Tensor | None,
                 transform: Callable, mode: str):
        self.paths, self.labels, self.order, self.seeds = paths, labels, order, seeds
        self.transform, self.mode = transform, mode

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        i = int(self.order[k])
        with Image.open(self.paths[i]) as im:
            im = im.convert(self.mode)
        x = self.transform(im) if self.seeds is None else seeded(self.transform, im, int(self.seeds[k]))
        return x, self.labels[i]


class BatchLoader:
    """Yields (float (B, Ch, H, W) normalised images, int64 (B,) labels) in the order of the given indices."""

    def __init__(self, split: PreparedSplit, *, batch_size: int, mean: Sequence[float], std: Sequence[float],
                 train: bool, augment: Augment | None = None, image_size: int | None = None, num_workers: int = 0,
                 channels_last: bool = False):
        check_int("batch_size", batch_size, 1)
        check_int("num_workers", num_workers, 0)
        self.split, self.batch_size, self.train = split, batch_size, train
        self.num_workers, self.channels_last = num_workers, channels_last
        self.normalize = Normalize(mean, std)
        self.augment = augment if augment is not None else Augment()
        if split.images is not None and split.images.shape[-1] != self.normalize.channels:
            raise ConfigError(f"mean/std have {self.normalize.channels} channel(s) but the images have "
                              f"{split.images.shape[-1]}")
        if split.images is None:
            if split.paths is None:
                raise ConfigError("the split has neither images nor paths")
            if image_size is None or image_size < 1:
                raise ConfigError(f"streamed images need image_size >= 1, got {image_size!r}")
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.split)

    def batches(self, indices: torch.Tensor, seed: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        indices = torch.as_tensor(indices, dtype=torch.long)
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(self.split)):
            raise ConfigError(f"indices must lie in [0, {len(self.split) - 1}], got [{int(indices.min())}, "
                              f"{int(indices.max())}]")
        generator = torch.Generator().manual_seed(int(seed))
        if self.split.images is not None:
            return self._in_memory(indices, generator)
        return self._streamed(indices, generator)

    def _in_memory(self, indices: torch.Tensor, generator: torch.Generator):
        images, labels, aug, n = self.split.images, self.split.labels, self.augment, len(indices)
        if self.train:
            oy, ox, flips = draw_crop_flip(n, aug.crop_padding, aug.flip, generator)
            seeds = torch.randint(_SEED_BOUND, (n,), generator=generator) if aug.policy is not None else None
        for start in range(0, n, self.batch_size):
            end = min(start + self.batch_size, n)
            idx = indices[start:end]
            x = images[idx]
            if self.train:
                x = crop_flip(x, oy[start:end], ox[start:end], flips[start:end], aug.crop_padding)
            x = x.permute(0, 3, 1, 2)  # a view: (B, Ch, H, W) in channels-last memory
            if self.train and aug.policy is not None:
                x = apply_policy(x.contiguous(), aug.policy, seeds[start:end])
            yield self.normalize(x, self.channels_last), labels[idx]

    def _streamed(self, indices: torch.Tensor, generator: torch.Generator):
        seeds = torch.randint(_SEED_BOUND, (len(indices),), generator=generator) if self.train else None
        dataset = _FileDataset(self.split.paths, self.split.labels, indices, seeds,
                               stream_transform(self.train, self.image_size, self.augment),
                               "L" if self.normalize.channels == 1 else "RGB")
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=False,
                                             num_workers=self.num_workers)
        for x, y in loader:
            yield self.normalize(x, self.channels_last), y
