"""Learning-rate schedules as per-step factors (linear warm-up, then cosine, multistep or constant)."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ltpipe.errors import ConfigError
from ltpipe.registry import Registry

SCHEDULES = Registry("lr schedule", fixed=("progress", "epoch", "milestones", "gamma"))
ScheduleName = SCHEDULES.name_type()


@SCHEDULES.register("cosine")
def cosine(progress: float, epoch: int, milestones: Sequence[int], gamma: float) -> float:
    """Loshchilov & Hutter, "SGDR" (ICLR 2017): 0.5 * (1 + cos(pi * progress)) after warm-up."""
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@SCHEDULES.register("multistep")
def multistep(progress: float, epoch: int, milestones: Sequence[int], gamma: float) -> float:
    """The LDAM-DRW CIFAR recipe: lr * gamma^(number of milestones reached by the epoch)."""
    return gamma ** sum(epoch >= m for m in milestones)


@SCHEDULES.register("constant")
def constant(progress: float, epoch: int, milestones: Sequence[int], gamma: float) -> float:
    return 1.0


def check_schedule(*, epochs: int, warmup_epochs: int, schedule: str, milestones: Sequence[int] = (),
                   gamma: float = 0.1) -> None:
    SCHEDULES.get(schedule)
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    if not 0 <= warmup_epochs < epochs:
        raise ConfigError(f"warmup_epochs must be in [0, epochs={epochs}), got {warmup_epochs}")
    if schedule == "multistep" and (gamma <= 0 or any(not 0 < m for m in milestones)):
        raise ConfigError(f"multistep needs gamma > 0 and positive milestones, got gamma={gamma}, milestones={milestones}")


def lr_lambda(*, steps_per_epoch: int, epochs: int, warmup_epochs: int, schedule: str,
              milestones: Sequence[int] = (), gamma: float = 0.1) -> Callable[[int], float]:
    """Factor of the base lr at optimiser step `step` (0-based): linear warm-up per step, then the schedule."""
    check_schedule(epochs=epochs, warmup_epochs=warmup_epochs, schedule=schedule, milestones=milestones, gamma=gamma)
    decay = SCHEDULES.get(schedule)
    warmup_steps = warmup_epochs * steps_per_epoch
    decay_steps = (epochs - warmup_epochs) * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return decay((step - warmup_steps) / decay_steps, step // steps_per_epoch, milestones, gamma)

    return factor


def build_sgd(params, *, lr: float, momentum: float, weight_decay: float, nesterov: bool = False,
              steps_per_epoch: int, epochs: int, warmup_epochs: int, schedule: str, milestones: Sequence[int] = (),
              gamma: float = 0.1):
    """SGD with momentum and a per-step LambdaLR; validates the numbers before anything trains."""
    if lr <= 0 or weight_decay < 0 or not 0 <= momentum < 1:
        raise ConfigError(f"need lr > 0, weight_decay >= 0, 0 <= momentum < 1; got lr={lr}, "
                          f"weight_decay={weight_decay}, momentum={momentum}")
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                                nesterov=nesterov and momentum > 0)
    return optimizer, build_scheduler(optimizer, steps_per_epoch=steps_per_epoch, epochs=epochs,
                                      warmup_epochs=warmup_epochs, schedule=schedule, milestones=milestones,
                                      gamma=gamma)


def build_scheduler(optimizer: torch.optim.Optimizer, *, steps_per_epoch: int, epochs: int, warmup_epochs: int,
                    schedule: str, milestones: Sequence[int] = (), gamma: float = 0.1):
    """A per-step LambdaLR: every param group's own initial lr (e.g. after layer decay) times `lr_lambda`."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(steps_per_epoch=steps_per_epoch, epochs=epochs, warmup_epochs=warmup_epochs,
                             schedule=schedule, milestones=milestones, gamma=gamma))
