import copy

import pytest
import timm
import torch

from ltpipe.errors import ConfigError
from ltpipe.models import build_backbone
from ltpipe.models.freeze import backbone_num_stages, freeze_stages, num_stages, stage_groups


def cifar():
    return build_backbone("resnet8", in_chans=3)


def timm_cnn():
    return timm.create_model("test_resnet", pretrained=False, num_classes=0)


def timm_vit():
    return timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32)


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("make, k", [(cifar, 1), (cifar, 0), (timm_cnn, 2), (timm_vit, 1)])
def test_frozen_tensors_bit_identical_after_training_steps(make, k):
    torch.manual_seed(0)
    model = make()
    frozen_names = set(freeze_stages(model, k))
    frozen_tensors = set().union(*stage_groups(model)[: k + 1])  # parameters and BatchNorm statistics
    assert frozen_names == {n for n, _ in model.named_parameters() if n in frozen_tensors} and frozen_names
    before = _snapshot(model)
    # Every parameter is in the optimizer, with momentum and weight decay: frozen ones must still not move.
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    for step in range(3):
        model.train()  # what every training epoch does; it must not unfreeze BatchNorm statistics
        loss = model(torch.randn(4, 3, 32, 32)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    for name, value in before.items():
        if name in frozen_tensors:
            assert torch.equal(after[name], value), name
        elif value.is_floating_point():
            assert not torch.equal(after[name], value), name
    for name, p in model.named_parameters():
        assert p.requires_grad == (name not in frozen_names)


def test_stem_only_and_batchnorm_modes():
    model = cifar()
    frozen = freeze_stages(model, 0)
    assert frozen == ["conv1.weight", "bn1.weight", "bn1.bias"]
    model.train()
    assert not model.bn1.training and model.blocks[0].bn1.training
    copied = copy.deepcopy(model).train()
    assert not copied.bn1.training and copied.blocks[0].bn1.training


def test_freezing_keeps_state_dict_keys_and_outputs():
    torch.manual_seed(0)
    model = timm_cnn().eval()
    x = torch.randn(2, 3, 32, 32)
    expected, keys = model(x), list(model.state_dict())
    freeze_stages(model, 4)
    assert torch.equal(model(x), expected)
    assert list(model.state_dict()) == keys  # num_batches_tracked kept: loads strictly into an unfrozen model
    timm_cnn().load_state_dict(model.state_dict())


def test_train_everything_is_a_no_op():
    model = cifar()
    assert freeze_stages(model, -1) == []
    assert all(p.requires_grad for p in model.parameters())


def test_stage_structure():
    cifar_groups = stage_groups(build_backbone("resnet20", in_chans=3))
    assert len(cifar_groups) == 4
    assert {n.split(".")[1] for n in cifar_groups[2]} == {"3", "4", "5"}  # resnet20: 3 blocks per stage
    assert num_stages(timm_cnn()) == 4
    assert num_stages(timm_vit()) == len(timm_vit().blocks)
    convnext = timm.create_model("test_convnext", pretrained=False, num_classes=0)
    assert num_stages(convnext) == 4
    assert "head.norm.weight" not in freeze_stages(convnext, 4)  # the final norm belongs to no stage


def test_num_stages_by_name():
    assert backbone_num_stages("resnet32") == 3
    assert backbone_num_stages("resnet18") == 4


def test_cifar_resnet_parameter_names_unchanged():
    keys = list(build_backbone("resnet8", in_chans=3).state_dict())
    assert keys[:7] == ["conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var",
                        "bn1.num_batches_tracked", "blocks.0.conv1.weight"]
    assert keys[-1] == "blocks.2.bn2.num_batches_tracked"


@pytest.mark.parametrize("k", [-2, 4, 1.0, -1.0, True])
def test_out_of_range_names_valid_range(k):
    with pytest.raises(ConfigError, match=r"\[-1, 3\]"):
        freeze_stages(cifar(), k)
