import json

import pytest
import timm
import torch
import torchvision

from ltpipe.errors import ConfigError
from ltpipe.io import save_tensors
from ltpipe.models import Classifier, save_classifier
from ltpipe.models.pretrained import load_pretrained


def timm_weights(num_classes, seed=1, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", pretrained=False, num_classes=num_classes, **kwargs).state_dict()


def target(num_classes=10, in_chans=3, backbone="test_resnet"):
    torch.manual_seed(0)
    return Classifier(backbone, num_classes=num_classes, in_chans=in_chans)


def load(path, model, **kwargs):
    return load_pretrained(path, model.backbone, model.head, **kwargs)


def assert_loaded_exactly(model, weights, report, classifier="fc"):
    expected = [f"backbone.{k}" for k in model.backbone.state_dict()] + ["head.weight", "head.bias"]
    assert report.loaded == expected and report.dropped == {} and report.missing == []
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert torch.equal(model.head.weight, weights[f"{classifier}.weight"])
    assert torch.equal(model.head.bias, weights[f"{classifier}.bias"])


def test_safetensors_of_a_timm_model_loads_every_tensor(tmp_path):
    weights = timm_weights(10)
    save_tensors(tmp_path / "w.safetensors", weights)
    model = target()
    report = load(tmp_path / "w.safetensors", model)
    assert_loaded_exactly(model, weights, report)
    assert json.loads(json.dumps(report.to_dict()))["missing"] == []
    assert "loaded" in report.summary()


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd, "optimizer": {}},
    lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}},  # DataParallel / DDP
    lambda sd: {f"_orig_mod.module.{k}": v for k, v in sd.items()},  # torch.compile around DDP
    lambda sd: {f"model.{k}": v for k, v in sd.items()},  # e.g. a Lightning module's attribute
], ids=["plain", "state_dict", "model", "module", "compiled", "model_prefix"])
def test_torch_checkpoints_and_wrappers(tmp_path, wrap):
    weights = timm_weights(10)
    torch.save(wrap(weights), tmp_path / "w.pth")
    model = target()
    assert_loaded_exactly(model, weights, load(tmp_path / "w.pth", model))


def test_ema_weights_are_preferred(tmp_path):
    weights, ema = timm_weights(10, seed=1), timm_weights(10, seed=2)
    torch.save({"model": weights, "model_ema": ema}, tmp_path / "w.pth")
    model = target()
    assert_loaded_exactly(model, ema, load(tmp_path / "w.pth", model))
    assert_loaded_exactly(model, weights, load(tmp_path / "w.pth", model, use_ema=False))


def test_classifier_of_another_size_is_dropped_and_reported(tmp_path):
    weights = timm_weights(1000)
    save_tensors(tmp_path / "imagenet.safetensors", weights)
    model = target(num_classes=10)
    head_before = model.head.weight.clone()
    report = load(tmp_path / "imagenet.safetensors", model)
    assert report.dropped == {"fc.weight": f"shape mismatch: file (1000, {model.backbone.num_features}), model "
                                           f"(10, {model.backbone.num_features})",
                              "fc.bias": "shape mismatch: file (1000,), model (10,)"}
    assert report.missing == ["head.weight", "head.bias"]
    assert torch.equal(model.head.weight, head_before)
    assert all(torch.equal(v, weights[k]) for k, v in model.backbone.state_dict().items())


@pytest.mark.parametrize("num_classes", [1000, 10])
def test_torchvision_resnet18_into_timm_resnet18(tmp_path, num_classes):
    torch.manual_seed(3)
    weights = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(weights, tmp_path / "resnet18.pth")
    model = target(num_classes=num_classes, backbone="resnet18")
    report = load(tmp_path / "resnet18.pth", model)
    assert all(torch.equal(v, weights[k]) for k, v in model.backbone.state_dict().items())
    if num_classes == 1000:
        assert_loaded_exactly(model, weights, report)
    else:
        assert set(report.dropped) == {"fc.weight", "fc.bias"} and report.missing == ["head.weight", "head.bias"]


def test_another_ltpipe_run(tmp_path):
    torch.manual_seed(4)
    source = Classifier("resnet8", num_classes=5, in_chans=1, head="cosine").eval()
    save_classifier(tmp_path / "stage1", source)
    model = target(num_classes=5, in_chans=1, backbone="resnet8")
    model.head.normalize_weight = True
    report = load(tmp_path / "stage1", model)
    assert report.dropped == {} and report.missing == ["head.bias"]  # the source's cosine head has no bias
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(model.backbone.eval()(x), source.backbone(x))
    assert torch.equal(model.head.weight, source.head.weight)
    other = load(tmp_path / "stage1", target(num_classes=7, in_chans=1, backbone="resnet8"))
    assert set(other.dropped) == {"head.weight"} and other.missing == ["head.weight", "head.bias"]


def test_rgb_stem_adapted_to_grey_input(tmp_path):
    weights = timm_weights(10)
    save_tensors(tmp_path / "rgb.safetensors", weights)
    model = target(in_chans=1)
    report = load(tmp_path / "rgb.safetensors", model)
    assert report.dropped == {} and report.missing == []
    assert torch.allclose(model.backbone.conv1[0].weight, weights["conv1.0.weight"].sum(1, keepdim=True))


def test_vit_position_embedding_resized_by_timm_filter(tmp_path):
    torch.manual_seed(5)
    source = timm.create_model("test_vit", pretrained=False, num_classes=1000)  # 160 px: 10 x 10 patches
    save_tensors(tmp_path / "vit.safetensors", source.state_dict())
    backbone = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32)
    report = load_pretrained(tmp_path / "vit.safetensors", backbone)
    assert report.missing == [] and set(report.dropped) == {"head.weight", "head.bias"}
    assert backbone.pos_embed.shape == (1, 5, 64)
    assert torch.equal(backbone.pos_embed[:, 0], source.pos_embed[:, 0])  # the class token's embedding is kept
    assert torch.equal(backbone.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)


def test_another_architecture_fails_naming_file_and_keys(tmp_path):
    save_classifier(tmp_path / "stage1", Classifier("resnet8", num_classes=5, in_chans=3))
    model = target()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"stage1.*do not fit.*file keys e\.g\. .*blocks.*model keys e\.g\. "
                                          r"backbone\.conv1"):
        load(tmp_path / "stage1", model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing half-loaded


@pytest.mark.parametrize("name, content, message", [
    ("missing.pth", None, "not found"),
    ("empty_dir", "dir", "not found: .*empty_dir/model.safetensors"),
    ("garbage.pth", b"not a checkpoint", "cannot read pretrained weights .*garbage.pth"),
    ("garbage.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{broken", "cannot read .*garbage.safetensors"),
    ("no_tensors.pth", {"epoch": 3}, "no_tensors.pth hold no tensors"),
    ("pickled_module.pth", torch.nn.Linear(2, 2), "cannot read .*pickled_module.pth"),  # weights_only refuses code
])
def test_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(ConfigError, match=message):
        load(path, target())
