import warnings

import pytest
import torch

from ltpipe.errors import ConfigError
from ltpipe.models import Classifier
from ltpipe.models.freeze import freeze_stages
from ltpipe.train.optim import build_optimizer, optimizer_names, param_groups
from ltpipe.train.schedule import build_sgd, lr_lambda

SCHEDULE = dict(steps_per_epoch=2, epochs=3, warmup_epochs=1, schedule="cosine")


def tiny(seed=0):
    torch.manual_seed(seed)
    return Classifier("resnet8", num_classes=3, in_chans=1)


def batches(n):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)]


def train(model, optimizer, scheduler=None, steps=4):
    model.train()
    for x, y in batches(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


def test_the_usual_names_are_offered():
    usual = {"sgd", "momentum", "nesterov", "adam", "adamw", "nadam", "rmsprop", "lamb", "lars"}
    assert usual <= set(optimizer_names())
    assert "adahessian" not in optimizer_names()  # second order: needs backward(create_graph=True)


# Kron torch.compile()s its preconditioner update on the first step: about 100 s per variant on a 2-core CPU.
COMPILES_ON_FIRST_STEP = {"kron", "kronc", "kronw"}


@pytest.mark.parametrize("name", optimizer_names())
def test_every_offered_optimizer_builds_and_steps(name):
    model = tiny()
    before = [p.detach().clone() for p in model.parameters()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. Kron's advice to install opt_einsum
        optimizer = build_optimizer(model, name=name, lr=0.01, weight_decay=1e-4)
        if name in COMPILES_ON_FIRST_STEP:
            return
        train(model, optimizer, steps=2)
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_reproduces_build_sgd_bit_for_bit(nesterov):
    reference, model = tiny(), tiny()
    opt, sched = build_sgd(reference.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=nesterov,
                           **SCHEDULE)
    train(reference, opt, sched)
    optimizer = build_optimizer(model, name="sgd", lr=0.1, weight_decay=5e-4, momentum=0.9,
                                opt_kwargs={"nesterov": nesterov})
    train(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(**SCHEDULE)))
    for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name


def test_weight_decay_policy_per_optimizer():
    model = tiny()
    (sgd,) = build_optimizer(model, name="sgd", lr=0.1, weight_decay=5e-4).param_groups
    assert sgd["weight_decay"] == 5e-4 and len(sgd["params"]) == len(list(model.parameters()))
    adamw = build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.05).param_groups
    decayed = {id(p) for g in adamw if g["weight_decay"] for p in g["params"]}
    assert decayed == {id(p) for p in model.parameters() if p.ndim > 1}
    forced = build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.05,
                             opt_kwargs={"filter_bias_and_bn": False}).param_groups
    assert len(forced) == 1 and forced[0]["weight_decay"] == 0.05


def test_kwargs_block_reaches_the_optimizer():
    opt = build_optimizer(tiny(), name="adamw", lr=1e-3, weight_decay=0.05,
                          opt_kwargs={"betas": [0.8, 0.95], "eps": 1e-6})
    assert opt.param_groups[0]["betas"] == (0.8, 0.95) and opt.param_groups[0]["eps"] == 1e-6


def test_layer_decay_scales_each_group_and_survives_lambda_lr():
    model = tiny()
    opt = build_optimizer(model, name="adamw", lr=1.0, weight_decay=0.0, layer_decay=0.5)
    # resnet8: stem, blocks.0, blocks.1, blocks.2, then the head on top.
    expected = {"backbone.conv1": 1 / 16, "backbone.bn1": 1 / 16, "backbone.blocks.0": 1 / 8,
                "backbone.blocks.1": 1 / 4, "backbone.blocks.2": 1 / 2, "head": 1.0}
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        prefix = next(k for k in expected if name.startswith(k + "."))
        assert lr_of[id(p)] == expected[prefix], name
    initial = [g["lr"] for g in opt.param_groups]
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.1 * (step + 1))
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * lr for lr in initial])
    train(model, opt, scheduler, steps=2)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.3 * lr for lr in initial])


def test_frozen_parameters_are_left_out():
    model = tiny()
    frozen = set(freeze_stages(model.backbone, 1))
    groups = param_groups(model, lr=0.1, weight_decay=0.0)
    kept = {id(p) for g in groups for p in g["params"]}
    assert kept == {id(p) for n, p in model.named_parameters() if n.removeprefix("backbone.") not in frozen}


def test_unknown_name_and_parameter():
    with pytest.raises(ConfigError, match="unknown optimizer 'adamx'.*adamw.*sgd"):
        build_optimizer(tiny(), name="adamx", lr=0.1, weight_decay=0.0)
    with pytest.raises(ConfigError, match="'adamw' takes no parameter 'nesterov'.*betas"):
        build_optimizer(tiny(), name="adamw", lr=0.1, weight_decay=0.0, opt_kwargs={"nesterov": True})
    with pytest.raises(ConfigError, match="lr"):
        build_optimizer(tiny(), name="sgd", lr=0.0, weight_decay=0.0)
