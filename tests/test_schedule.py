import math

import pytest
import torch

from ltpipe.errors import ConfigError
from ltpipe.train.schedule import build_sgd, lr_lambda


def test_warmup_is_linear_then_cosine_reaches_zero():
    f = lr_lambda(steps_per_epoch=10, epochs=5, warmup_epochs=1, schedule="cosine")
    assert [f(s) for s in range(10)] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f(10) == pytest.approx(1.0)
    assert f(10 + 20) == pytest.approx(0.5 * (1 + math.cos(math.pi * 20 / 40)))
    assert f(49) > 0 and f(50) == pytest.approx(0.0, abs=1e-12)


def test_multistep_ldam_recipe():
    # lr x0.01 at epoch 160 and x0.0001 at 180, 5 warm-up epochs (LDAM-DRW's CIFAR schedule).
    f = lr_lambda(steps_per_epoch=2, epochs=200, warmup_epochs=5, schedule="multistep", milestones=[160, 180],
                  gamma=0.01)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(2 * 159 + 1) == 1.0
    assert f(2 * 160) == pytest.approx(0.01)
    assert f(2 * 180) == pytest.approx(1e-4)


def test_sgd_steps_follow_the_schedule():
    w = torch.nn.Parameter(torch.zeros(1))
    opt, sched = build_sgd([w], lr=0.2, momentum=0.9, weight_decay=0.0, steps_per_epoch=4, epochs=3,
                           warmup_epochs=1, schedule="constant")
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.05, 0.1, 0.15, 0.2] + [0.2] * 8)


@pytest.mark.parametrize("kw, match", [
    (dict(schedule="linear"), "valid choices: constant, cosine, multistep"),
    (dict(warmup_epochs=5), "warmup_epochs"),
    (dict(epochs=0), "epochs"),
])
def test_bad_schedule(kw, match):
    args = dict(steps_per_epoch=1, epochs=5, warmup_epochs=1, schedule="cosine") | kw
    with pytest.raises(ConfigError, match=match):
        lr_lambda(**args)


def test_bad_optimiser_values():
    with pytest.raises(ConfigError, match="lr > 0"):
        build_sgd([torch.nn.Parameter(torch.zeros(1))], lr=0.0, momentum=0.9, weight_decay=0.0, steps_per_epoch=1,
                  epochs=1, warmup_epochs=0, schedule="cosine")
