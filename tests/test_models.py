import pytest
import torch

from ltpipe.errors import ConfigError
from ltpipe.models import Classifier, build_backbone, load_classifier, save_classifier


def test_resnet32_matches_the_ldam_paper_size():
    model = build_backbone("resnet32", in_chans=3)
    # 0.46M parameters: 3 stages x 5 blocks, 16/32/64 channels, option-A shortcuts.
    assert sum(p.numel() for p in model.parameters()) == 463_504
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 64)


def test_timm_backbone_without_download():
    model = build_backbone("resnet18", in_chans=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, model.num_features)


def test_unknown_backbone_lists_choices():
    with pytest.raises(ConfigError, match="resnet32.*timm"):
        build_backbone("resnet31", in_chans=3)


def test_save_load_roundtrip(tmp_path):
    torch.manual_seed(0)
    model = Classifier("resnet8", num_classes=5, in_chans=1, normalize_weight=True).eval()
    save_classifier(tmp_path, model)
    again = load_classifier(tmp_path)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model(x), again(x))
    assert (tmp_path / "model.safetensors").read_bytes() == _saved_bytes(model, tmp_path / "again")


def _saved_bytes(model, path):
    save_classifier(path, model)
    return (path / "model.safetensors").read_bytes()
