import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ltpipe.errors import ConfigError
from ltpipe.models import Classifier, build_backbone, load_classifier, save_classifier
from ltpipe.models.heads import LinearHead, load_head, save_head


def test_resnet32_matches_the_ldam_paper_size():
    model = build_backbone("resnet32", in_chans=3)
    # 0.46M parameters: 3 stages x 5 blocks, 16/32/64 channels, option-A shortcuts.
    assert sum(p.numel() for p in model.parameters()) == 463_504
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64)


def test_bbn_resnet32_is_bbns_two_branch_resnet32():
    """BBN_ResNet_Cifar(BasicBlock, [5, 5, 5]) of the TDE code (models/ResNet32Feature.py): 537,488 parameters (counted
    on the reference module); the trunk's output feeds both last blocks, whose outputs are concatenated."""
    from ltpipe.models.freeze import stage_groups

    model = build_backbone("bbn_resnet32", in_chans=3).eval()
    assert sum(p.numel() for p in model.parameters()) == 537_488
    assert len(model.blocks) == 14 and len(model.branches) == 2 and model.num_features == 128
    x = torch.randn(2, 3, 32, 32)
    trunk = model.blocks(F.relu(model.bn1(model.conv1(x))))
    expected = torch.cat([F.adaptive_avg_pool2d(b(trunk), 1).flatten(1) for b in model.branches], dim=1)
    torch.testing.assert_close(model(x), expected)
    assert not torch.allclose(expected[:, :64], expected[:, 64:])  # two blocks with their own weights
    groups = stage_groups(model)  # the branches belong to stage 3 (freeze_stages 3 freezes them) and are one fine group
    assert len(groups) == 4 and {"branches.0.conv1.weight", "branches.1.bn2.running_mean"} <= set(groups[3])
    assert set(stage_groups(model, coarse=False)[-1]) == {n for n in groups[3] if n.startswith("branches.")}
    # one branch is plain resnet32, parameter names included (old checkpoints load)
    assert set(build_backbone("resnet32", in_chans=3).state_dict()) == set(
        type(model)(32).state_dict())


def test_timm_backbone_without_download():
    model = build_backbone("resnet18", in_chans=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, model.num_features)


def test_unknown_backbone_lists_choices():
    with pytest.raises(ConfigError, match="resnet32.*timm"):
        build_backbone("resnet31", in_chans=3)


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = Classifier("resnet8", num_classes=5, in_chans=1, head="cosine").eval()
    save_classifier(tmp_path, model)
    again = load_classifier(tmp_path)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model(x), again(x))
    assert (tmp_path / "model.safetensors").read_bytes() == _saved_bytes(model, tmp_path / "again")


def test_a_saved_head_has_the_same_bytes_every_time(tmp_path):
    # A head's file carries its registry name and kwargs as metadata; safetensors writes a metadata map in hash order,
    # so without care the same head gave one of two byte strings (and DVC saw a changed stage-2 output).
    head = LinearHead(8, 3, bias=True, normalize_weight=True, scale=2.0)
    saved = set()
    for i in range(20):
        save_head(tmp_path / f"head{i}.safetensors", head)
        saved.add((tmp_path / f"head{i}.safetensors").read_bytes())
    assert len(saved) == 1
    again = load_head(tmp_path / "head0.safetensors")
    assert again.kwargs == head.kwargs


def _saved_bytes(model, path):
    save_classifier(path, model)
    return (path / "model.safetensors").read_bytes()


def normed_linear(x, weight_in_out):
    """LDAM-DRW models/resnet_cifar.py NormedLinear.forward (its weight is (in_features, out_features))."""
    return F.normalize(x, dim=1).mm(F.normalize(weight_in_out, dim=0))


def test_cosine_classifier_is_ldams_normed_linear_times_the_losss_scale(tmp_path):
    torch.manual_seed(0)
    model = Classifier("resnet8", num_classes=5, in_chans=1, head="cosine", cosine_scale=30.0).eval()
    assert model.head.bias is None
    features = model.backbone(torch.randn(4, 1, 8, 8)).detach()
    logits = model.head(features)
    torch.testing.assert_close(logits, 30.0 * normed_linear(features, model.head.weight.detach().T))
    assert logits.abs().max() <= 30 * (1 + 1e-6)
    torch.testing.assert_close(model.head(7.5 * features), logits)  # cosines: the feature norm does not matter
    save_classifier(tmp_path, model)  # the scale is part of the saved model: predict and evaluate see s * cos
    torch.testing.assert_close(load_classifier(tmp_path).head(features), logits)
    # NormedLinear's init: uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5), i.e. unit-norm class vectors
    torch.testing.assert_close(model.head.weight.detach().norm(dim=1), torch.ones(5))


def test_initial_bias_sets_every_class_bias():
    model = Classifier("resnet8", num_classes=10, in_chans=1, initial_bias=-math.log(9))
    torch.testing.assert_close(model.head.bias.detach(), torch.full((10,), -float(np.log(9))))
    assert "initial_bias" not in model.config, "init only: not needed to rebuild the model"


def _head_weights(backbone, seeds=range(20)):
    weights = []
    for seed in seeds:
        torch.manual_seed(seed)
        weights.append(Classifier(backbone, num_classes=50, in_chans=1).head.weight.detach().flatten())
    return torch.cat(weights)


def test_cifar_resnet_head_has_the_reference_kaiming_normal_init():
    # kaidic/LDAM-DRW resnet_cifar.py `_weights_init`: init.kaiming_normal_ on nn.Linear as well as nn.Conv2d, i.e.
    # N(0, 2 / fan_in) with fan_in 64; nn.Linear's own default would be U(-1/8, 1/8) (std 0.072, never above 0.125).
    w = _head_weights("resnet8")
    assert abs(w.mean()) < 0.01
    assert abs(w.std() - math.sqrt(2 / 64)) < 0.005
    assert w.abs().max() > 0.5
    torch.manual_seed(0)
    bias = Classifier("resnet8", num_classes=50, in_chans=1).head.bias.detach()
    assert bias.abs().max() <= 1 / 8 and bias.std() > 0.03  # the bias keeps nn.Linear's U(-1/sqrt(64), 1/sqrt(64))


def test_other_backbones_and_heads_keep_their_own_head_init():
    w = _head_weights("resnet18", seeds=range(2))  # timm: nn.Linear's default, U(-1/sqrt(512), 1/sqrt(512))
    assert w.abs().max() <= 1 / math.sqrt(512)
    for seed in range(3):
        torch.manual_seed(seed)
        cosine = Classifier("resnet8", num_classes=50, in_chans=1, head="cosine").head.weight.detach()
        torch.testing.assert_close(cosine.norm(dim=1), torch.ones(50))  # NormedLinear: unit-norm class vectors
