"""CUDA paths (skipped without a GPU): stage 1 in every precision, features, stage 2, evaluate and predict on the
device, the device-resident loader, and CPU-vs-GPU agreement of the frozen features."""
import copy
import json

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def cuda_params(precision="auto", **train):
    params = copy.deepcopy(PARAMS)
    params["train"].update(dict(epochs=4, warmup_epochs=1), **train)
    params["runtime"].update(device="cuda", precision=precision)
    return params


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from ltpipe.data.prepare import prepare

    out = tmp_path_factory.mktemp("cuda") / "prepared"
    prepare(cuda_params(), out)
    return out


def test_loader_keeps_in_memory_images_on_the_device(prepared):
    from ltpipe.data.augment import Augment
    from ltpipe.data.loader import BatchLoader
    from ltpipe.data.prepared import load_prepared

    data = load_prepared(prepared)
    kw = dict(batch_size=32, mean=data.info["mean"], std=data.info["std"], train=True,
              augment=Augment(crop_padding=2, flip=True))
    gpu = BatchLoader(data.split("train"), device="cuda", **kw)
    cpu = BatchLoader(data.split("train"), **kw)
    assert gpu.images.is_cuda
    order = torch.randperm(len(data.split("train")), generator=torch.Generator().manual_seed(0))
    for (xg, yg), (xc, yc) in zip(gpu.batches(order, seed=3), cpu.batches(order, seed=3)):
        assert xg.is_cuda and yg.is_cuda
        assert torch.allclose(xg.cpu(), xc) and torch.equal(yg.cpu(), yc), "same augmentation on every device"


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_whole_pipeline_on_cuda(prepared, tmp_path, precision):
    from ltpipe.evaluate import evaluate
    from ltpipe.features import extract_features
    from ltpipe.predict import load_predictor
    from ltpipe.stage2 import retrain_classifier
    from ltpipe.train.stage1 import train_backbone

    params = cuda_params(precision)
    train_backbone(params, prepared, tmp_path / "artifacts/stage1", tmp_path / "live", tmp_path / "resume")
    live = json.loads((tmp_path / "live/metrics.json").read_text())
    assert np.isfinite(live["train"]["loss"]) and live["val"]["acc"] > 0.3
    extract_features(params, tmp_path / "artifacts/stage1", prepared, tmp_path / "artifacts/features")
    retrain_classifier(params, prepared, tmp_path / "artifacts/stage1", tmp_path / "artifacts/features",
                       tmp_path / "artifacts/stage2")
    evaluate(params, prepared, tmp_path / "artifacts/stage2", tmp_path / "metrics")
    assert json.loads((tmp_path / "metrics/metrics.json").read_text())["accuracy"] > 0.3
    (tmp_path / "data").mkdir()
    (tmp_path / "data/prepared").symlink_to(prepared)
    predictor = load_predictor(tmp_path, device="cuda")
    assert predictor.device.type == "cuda"
    from ltpipe.data.prepared import load_prepared

    test = load_prepared(prepared).split("test")
    probs = predictor.probabilities(test)
    logits = np.load(tmp_path / "artifacts/stage2/logits_test.npy")
    assert (probs.argmax(1).numpy() == logits.argmax(1)).mean() > 0.99


def test_features_agree_between_cpu_and_cuda(prepared, tmp_path):
    from ltpipe.features import extract_features
    from ltpipe.train.stage1 import train_backbone

    params = cuda_params("fp32", epochs=2)
    train_backbone(params, prepared, tmp_path / "stage1", tmp_path / "live", tmp_path / "resume")
    extract_features(params, tmp_path / "stage1", prepared, tmp_path / "gpu")
    cpu = copy.deepcopy(params)
    cpu["runtime"]["device"] = "cpu"
    extract_features(cpu, tmp_path / "stage1", prepared, tmp_path / "cpu")
    a, b = (np.load(tmp_path / d / "test_features.npy") for d in ("gpu", "cpu"))
    assert np.allclose(a, b, rtol=1e-3, atol=1e-3)
