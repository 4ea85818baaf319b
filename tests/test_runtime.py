"""The runtime section: device resolution and its errors, precision, and low-precision training on the CPU."""
import copy

import pytest
import torch
import yaml

from conftest import ROOT
from ltpipe.errors import ConfigError
from ltpipe.runtime import GlobalBatchNorm, Runtime, resolve_device, resolve_precision
from ltpipe.schema import validate_params

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def runtime_params(**runtime):
    params = copy.deepcopy(PARAMS)
    params["runtime"].update(runtime)
    return params


@pytest.mark.parametrize("device, message", [
    ("gpu", "runtime.device: 'gpu': not a device; valid choices: auto, cpu, cuda, cuda:N or mps"),
    ("cuda:x", "runtime.device: 'cuda:x': not a device"),
    ("cuda:7", "runtime.device: 'cuda:7': not available on this machine; available devices: cpu"),
])
def test_bad_or_missing_devices_fail_in_validation(device, message):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(ConfigError) as info:
        validate_params(runtime_params(device=device))
    assert str(info.value).startswith(message)


@pytest.mark.parametrize("key, value, message", [
    ("precision", "fp8", "runtime.precision: 'fp8': not a valid choice; valid choices: auto, fp32, bf16, fp16"),
    ("nproc_per_node", 0, "runtime.nproc_per_node: 0: must be >= 1"),
    ("compile", "no", "runtime.compile: 'no': must be true or false"),
    ("sync_bn", 1, "runtime.sync_bn: 1: must be true or false"),
])
def test_bad_runtime_values(key, value, message):
    with pytest.raises(ConfigError, match=message):
        validate_params(runtime_params(**{key: value}))


def test_global_batch_must_split_over_processes():
    params = runtime_params(nproc_per_node=4)
    params["train"]["batch_size"] = 2
    with pytest.raises(ConfigError, match=r"train.batch_size: 2: must be >= runtime.nproc_per_node \(4\)"):
        validate_params(params)


def test_auto_device_and_precision():
    expected = "cuda:0" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert str(resolve_device("auto")) == expected
    assert resolve_precision("auto", torch.device("cpu")) == "fp32", "bf16 autocast is slower on a CPU without AMX"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with pytest.raises(ConfigError, match="device 'tpu': not a device"):
        resolve_device("tpu")


def test_shards_of_a_global_batch_partition_it():
    batch = torch.arange(100, 133)
    shares = [Runtime(device=torch.device("cpu"), rank=r, world_size=3).shard(batch) for r in range(3)]
    assert torch.equal(torch.cat(shares), batch) and {len(s) for s in shares} == {11}
    uneven = [Runtime(device=torch.device("cpu"), rank=r, world_size=2).shard(batch[:5]) for r in range(2)]
    assert [s.tolist() for s in uneven] == [[100, 101, 102], [103, 104]]


def test_global_batchnorm_in_one_process_is_batchnorm(monkeypatch):
    """With one rank the all-reduce is the identity: the layer must then equal nn.BatchNorm2d exactly (train and
    eval, running statistics included)."""
    import torch.distributed.nn.functional as dist_fn

    monkeypatch.setattr(dist_fn, "all_reduce", lambda t: t)
    torch.manual_seed(0)
    reference = torch.nn.BatchNorm2d(3)
    reference.weight.data.uniform_(0.5, 1.5)
    ours = copy.deepcopy(reference)
    ours.__class__ = GlobalBatchNorm
    x = torch.randn(6, 3, 4, 4, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    for _ in range(3):
        assert torch.allclose(ours(x2), reference(x), atol=1e-5)
    ours(x2).square().sum().backward()
    reference(x).square().sum().backward()
    assert torch.allclose(x2.grad, x.grad, atol=1e-4)
    assert torch.allclose(ours.running_var, reference.running_var, atol=1e-6)
    assert torch.allclose(ours.running_mean, reference.running_mean, atol=1e-6)
    ours.eval(), reference.eval()
    assert torch.allclose(ours(x2), reference(x), atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_training_on_cpu_learns_digits(precision, tmp_path):
    from ltpipe.data.prepare import prepare
    from ltpipe.train.stage1 import train_backbone
    from ltpipe.models import load_classifier
    from ltpipe.data.prepared import load_prepared

    params = runtime_params(device="cpu", precision=precision)
    params["train"].update(epochs=6, warmup_epochs=1)
    prepare(params, tmp_path / "prepared")
    train_backbone(params, tmp_path / "prepared", tmp_path / "stage1", tmp_path / "live", tmp_path / "resume")
    live = yaml.safe_load((tmp_path / "live/metrics.json").read_text())
    assert torch.isfinite(torch.tensor(live["train"]["loss"]))
    model = load_classifier(tmp_path / "stage1")
    prepared = load_prepared(tmp_path / "prepared")
    from ltpipe.data.loader import BatchLoader

    test = prepared.split("test")
    loader = BatchLoader(test, batch_size=512, mean=prepared.info["mean"], std=prepared.info["std"], train=False)
    with torch.no_grad():
        pred = torch.cat([model(x).argmax(1) for x, _ in loader.batches(torch.arange(len(test)), seed=0)])
    accuracy = (pred == test.labels).float().mean().item()
    assert accuracy > 0.5, f"{precision}: {accuracy:.3f} (chance is 0.1)"
