"""Where and how a stage computes: device, precision, compilation, determinism and the process group.

Decided once per stage (`Runtime.from_params`) and passed down; no other module looks at devices or ranks itself.
Processes are started by torchrun (`launch_distributed`); rank r of world size W takes its contiguous share of every
*global* batch (`Runtime.shard`) and computes the loss of the whole global batch (`Runtime.global_batch`), so the
global batch, the loss, and with SyncBatchNorm the result, do not depend on W.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Sequence

import torch
from pydantic import ValidationError

from ltpipe.errors import ConfigError
from ltpipe.schema import DEVICE_HELP, RuntimeParams

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def available_devices() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """auto = CUDA, then MPS, then CPU; a device that is not there is a ConfigError listing those that are."""
    try:
        RuntimeParams(device=name)
    except ValidationError:
        raise ConfigError(f"device {name!r}: not a device; valid choices: {DEVICE_HELP}") from None
    available = available_devices()
    if name == "auto":
        name = "cuda" if "cuda" in available else "mps" if "mps" in available else "cpu"
    if name not in available:
        raise ConfigError(f"device {name!r}: not available on this machine; available devices: "
                          f"{', '.join(available)} (or auto)")
    if name == "cuda":
        name = f"cuda:{local_rank}"
        if name not in available:
            raise ConfigError(f"runtime.nproc_per_node: process {local_rank} needs {name}, but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto = bf16 on CUDA that supports it, fp16 on older CUDA, fp32 elsewhere (measured: bf16 is slower on a CPU
    without AMX). fp16 needs CUDA: its GradScaler has no CPU kernels worth using."""
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "fp32"
    if precision == "fp16" and device.type not in ("cuda", "cpu"):
        raise ConfigError(f"runtime.precision: 'fp16' is not supported on {device.type}; valid choices here: fp32, bf16")
    return precision


@dataclass(frozen=True)
class Runtime:
    """The resolved runtime of one process."""

    device: torch.device
    precision: str = "fp32"  # fp32 | bf16 | fp16
    compile: bool = False
    rank: int = 0
    world_size: int = 1
    sync_bn: bool = False

    @classmethod
    def from_params(cls, runtime: RuntimeParams, *, distributed: bool = False) -> "Runtime":
        """Resolve the section; with `distributed`, join the torchrun process group (nccl on CUDA, gloo on CPU)."""
        rank, world, local = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
        if not distributed:
            rank, world, local = 0, 1, 0
        device = resolve_device(runtime.device, local)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if runtime.deterministic and device.type == "cuda":
            # cuBLAS needs this workspace setting for reproducible matmuls (documented cost: a few % of speed).
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        if world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(device=device, precision=resolve_precision(runtime.precision, device), compile=runtime.compile,
                   rank=rank, world_size=world, sync_bn=runtime.sync_bn)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is active only for fp16 (bf16 has fp32's exponent range)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def shard(self, global_batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of one global batch (shares differ by at most one sample)."""
        if self.world_size == 1:
            return global_batch
        return torch.tensor_split(global_batch, self.world_size)[self.rank]

    def wrap_for_training(self, model: torch.nn.Module) -> torch.nn.Module:
        """SyncBatchNorm (if asked), DistributedDataParallel across ranks, torch.compile (if asked)."""
        if self.distributed:
            if self.sync_bn and self.device.type == "cpu":
                convert_to_global_batchnorm(model)
            elif self.sync_bn:
                model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        return torch.compile(model) if self.compile else model

    def global_batch(self, *shares: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The whole global batch of each of this rank's `shares` (ranks' shares concatenated in rank order, as
        `shard` split them). Only this rank's rows stay in the autograd graph; the others are copies.

        A loss computed on it is the single-process loss, whatever the world size, also for losses that are not a
        mean over samples (class-weight normalisation, LADE's and GML's per-class batch terms). Rank r's backward
        gives dL/dz_r; DDP averages the ranks' gradients, so the loss to backpropagate is W * L.
        """
        if self.world_size == 1:
            return shares
        sizes = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world_size)]
        torch.distributed.all_gather(sizes, torch.tensor([len(shares[0])], device=self.device))
        sizes = [int(n) for n in sizes]
        out = []
        for share in shares:
            # all_gather needs equal shapes: shares differ by up to one row, so pad to the largest and cut back.
            padded = share.detach().new_zeros((max(sizes),) + share.shape[1:])
            padded[:len(share)] = share.detach()
            parts = [torch.empty_like(padded) for _ in sizes]
            torch.distributed.all_gather(parts, padded)
            parts = [part[:n] for part, n in zip(parts, sizes)]
            parts[self.rank] = share
            out.append(torch.cat(parts))
        return tuple(out)

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.distributed:
            value = value.clone()
            torch.distributed.all_reduce(value)
        return value

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global batch of all ranks, for CPU process groups: torch's SyncBatchNorm runs on GPUs only.

    Per channel, the ranks' sums of x and x^2 and their counts are all-reduced (with autograd, so gradients flow to
    every rank's inputs); training statistics, running-statistics updates and eval are those of nn.BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        local = torch.stack([x.sum(dims), x.square().sum(dims)])
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype)
        total, count = all_reduce(local), all_reduce(count)
        mean = total[0] / count
        var = total[1] / count - mean.square()
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * count / (count - 1), momentum)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out


def convert_to_global_batchnorm(module: torch.nn.Module) -> None:
    """Turn every BatchNorm layer of `module` into a GlobalBatchNorm in place, sharing parameters and buffers."""
    for child in module.modules():
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and type(child) is not GlobalBatchNorm:
            child.__class__ = GlobalBatchNorm


def under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_distributed(nproc_per_node: int, module: str, argv: Sequence[str]) -> int:
    """Re-run `python -m module argv` under torchrun on this node (the standalone rendezvous), return its status."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}",
           "-m", module, *argv]
    return subprocess.call(cmd)
