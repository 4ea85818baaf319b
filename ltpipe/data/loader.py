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


Shard = Callable[[torch.Tensor], torch.Tensor]


class BatchLoader:
    """Yields (float (B, Ch, H, W) normalised images, int64 (B,) labels) on `device`, in the order of the indices.

    In-memory images move to the device once; indexing, pad-crop, flip and normalisation then run there per batch,
    with no DataLoader and no host round trip. Streamed images come through DataLoader workers (pinned memory and
    non-blocking copies on CUDA). With `shard` (a rank's share of a global batch's positions, see
    `ltpipe.runtime.Runtime.shard`) each global batch yields only this process's rows, augmented exactly as the
    single-process run augments them.
    """

    def __init__(self, split: PreparedSplit, *, batch_size: int, mean: Sequence[float], std: Sequence[float],
                 train: bool, augment: Augment | None = None, image_size: int | None = None, num_workers: int = 0,
                 channels_last: bool = False, device: torch.device | str = "cpu"):
        check_int("batch_size", batch_size, 1)
        check_int("num_workers", num_workers, 0)
        self.split, self.batch_size, self.train = split, batch_size, train
        self.num_workers, self.channels_last, self.device = num_workers, channels_last, torch.device(device)
        self.normalize = Normalize(mean, std, self.device)
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
        self.images = split.images.to(self.device) if split.images is not None else None
        self.labels = split.labels.to(self.device)

    def __len__(self) -> int:
        return len(self.split)

    def batches(self, indices: torch.Tensor, seed: int, shard: Shard | None = None
                ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        indices = torch.as_tensor(indices, dtype=torch.long).cpu()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= len(self.split)):
            raise ConfigError(f"indices must lie in [0, {len(self.split) - 1}], got [{int(indices.min())}, "
                              f"{int(indices.max())}]")
        generator = torch.Generator().manual_seed(int(seed))
        positions = [torch.arange(start, min(start + self.batch_size, len(indices)))
                     for start in range(0, len(indices), self.batch_size)]
        if shard is not None:
            positions = [shard(p) for p in positions]
        if self.images is not None:
            return self._in_memory(indices, positions, generator)
        return self._streamed(indices, positions, generator)

    def _in_memory(self, indices: torch.Tensor, positions: List[torch.Tensor], generator: torch.Generator):
        aug, n, device = self.augment, len(indices), self.device
        # Every draw is made for the whole epoch on the CPU generator: the same seed gives the same augmentation
        # on every device and for any number of processes; one copy per epoch brings it to the device.
        if self.train:
            oy, ox, flips = (t.to(device) for t in draw_crop_flip(n, aug.crop_padding, aug.flip, generator))
            seeds = torch.randint(_SEED_BOUND, (n,), generator=generator) if aug.policy is not None else None
        indices = indices.to(device)
        for pos in positions:
            pos_dev = pos.to(device)
            idx = indices[pos_dev]
            x = self.images[idx]
            if self.train:
                x = crop_flip(x, oy[pos_dev], ox[pos_dev], flips[pos_dev], aug.crop_padding)
            x = x.permute(0, 3, 1, 2)  # a view: (B, Ch, H, W) in channels-last memory
            if self.train and aug.policy is not None:
                x = apply_policy(x.contiguous(), aug.policy, seeds[pos])
            yield self.normalize(x, self.channels_last), self.labels[idx]

    def _streamed(self, indices: torch.Tensor, positions: List[torch.Tensor], generator: torch.Generator):
        seeds = torch.randint(_SEED_BOUND, (len(indices),), generator=generator) if self.train else None
        dataset = _FileDataset(self.split.paths, self.split.labels, indices, seeds,
                               stream_transform(self.train, self.image_size, self.augment),
                               "L" if self.normalize.channels == 1 else "RGB")
        cuda = self.device.type == "cuda"
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=[p.tolist() for p in positions],
                                             num_workers=self.num_workers, pin_memory=cuda)
        for x, y in loader:
            x, y = x.to(self.device, non_blocking=cuda), y.to(self.device, non_blocking=cuda)
            yield self.normalize(x, self.channels_last), y
