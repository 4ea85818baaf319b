"""The CIFAR ResNets of He et al. (CVPR 2016, section 4.2) as used by LDAM-DRW and its successors.

Depth 6n+2: a 3x3 stem with 16 channels, three stages of n basic blocks (16, 32, 64 channels, strides 1, 2, 2) and
global average pooling; option-A (parameter-free, zero-padded) shortcuts, so resnet32 has 0.46M parameters.

`branches` > 1 is BBN's ResNet-32 (Zhou et al., CVPR 2020, Megvii-Nanjing/BBN `BBN_ResNet_Cifar`), which the causal-
TDE code (KaihuaTang/Long-Tailed-Recognition.pytorch, models/ResNet32Feature.py) trains for its CIFAR numbers: the last
block of stage 3 is replaced by `branches` parallel blocks on the same input, concatenated (64 x branches features).
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.pad = stride, planes - in_planes

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1 and self.pad == 0:
            return x
        # Option A: subsample and zero-pad the channels (no parameters), as in the paper's CIFAR experiments.
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Feature extractor: images (N, C, H, W) -> pooled features (N, 64 x branches)."""

    def __init__(self, depth: int, in_chans: int = 3, branches: int = 1):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        if branches < 1 or (branches > 1 and n < 2):
            raise ValueError(f"branches must be >= 1 (> 1 needs depth >= 14), got {branches} for depth {depth}")
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        # With one branch the last block stays in `blocks`, so resnetN's parameter names (and old checkpoints) are kept.
        self.branches = None
        if branches > 1:
            blocks.pop()
            self.branches = nn.ModuleList(BasicBlock(in_planes, in_planes, 1) for _ in range(branches))
        self.blocks = nn.Sequential(*blocks)
        self.blocks_per_stage = n
        self.num_features = in_planes * branches
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    @staticmethod
    @torch.no_grad()
    def init_classifier_(weight: torch.Tensor) -> None:
        """The reference network (kaidic/LDAM-DRW `_weights_init`) Kaiming-normal inits its nn.Linear classifier as
        well as its convolutions: std sqrt(2 / fan_in), about 2.5x nn.Linear's default; the bias keeps nn.Linear's."""
        nn.init.kaiming_normal_(weight)

    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """timm's stage interface (see `timm.models.group_parameters`): the stem, then one group per stage (coarse)
        or per block. The blocks stay one flat Sequential so that parameter names, and old checkpoints, are kept."""
        stem = r"^conv1|^bn1"
        if not coarse:
            return dict(stem=stem, blocks=[(r"^blocks\.(\d+)", None), (r"^branches\.", (len(self.blocks),))])
        n = self.blocks_per_stage
        stages = [(rf"^blocks\.(?:{'|'.join(str(i) for i in range(s * n, (s + 1) * n))})\.", (s,)) for s in range(3)]
        return dict(stem=stem, blocks=stages + [(r"^branches\.", (2,))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        if self.branches is not None:
            x = torch.cat([branch(x) for branch in self.branches], dim=1)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)
