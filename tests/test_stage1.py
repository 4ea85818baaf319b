"""Stage 1 without DVC: determinism, resume after an interruption, and bad input failing before training."""
import copy
import inspect

import pytest
import torch

import yaml

from ltpipe.data.prepare import prepare
from ltpipe.errors import ConfigError
from ltpipe.schema import validate_params
from ltpipe.train import stage1
from conftest import ROOT

EPOCH = list(inspect.signature(stage1._train_one_epoch).parameters).index("epoch")


@pytest.fixture(scope="module")
def params():
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["train"].update(epochs=3, warmup_epochs=1, batch_size=128)
    return p


@pytest.fixture(scope="module")
def prepared(params, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare(params, out)
    return out


def train(params, prepared, tmp_path, name):
    """Stage 1 into tmp_path/name; the resume folder is tmp_path/resume (a checkpoint only while a run is unfinished)."""
    out, live, resume = tmp_path / name, tmp_path / f"{name}_live", tmp_path / "resume"
    stage1.train_backbone(params, prepared, out, live, resume)
    return out, live, resume


def test_same_seed_same_bytes_and_seed_matters(params, prepared, tmp_path):
    a, live_a, resume = train(params, prepared, tmp_path, "a")
    b, live_b, _ = train(params, prepared, tmp_path, "b")
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (live_a / "metrics.json").read_bytes() == (live_b / "metrics.json").read_bytes()
    assert list(resume.iterdir()) == [], "a finished run deletes its checkpoint"
    other = copy.deepcopy(params)
    other["seed"] = 1
    c, _, _ = train(other, prepared, tmp_path, "c")
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()


def test_resume_after_interruption_gives_the_uninterrupted_result(params, prepared, tmp_path, monkeypatch):
    full, full_live, _ = train(params, prepared, tmp_path, "full")
    real_epoch = stage1._train_one_epoch

    def dies_in_epoch_2(*args):
        if args[EPOCH] == 2:
            raise KeyboardInterrupt
        return real_epoch(*args)

    monkeypatch.setattr(stage1, "_train_one_epoch", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(params, prepared, tmp_path, "resumed")
    ckpt, = (tmp_path / "resume").iterdir()
    assert torch.load(ckpt, weights_only=False)["epoch"] == 2
    assert not (tmp_path / "resumed" / "model.safetensors").exists()

    monkeypatch.setattr(stage1, "_train_one_epoch", real_epoch)
    calls = []
    monkeypatch.setattr(stage1, "_train_one_epoch", lambda *a: calls.append(a[EPOCH]) or real_epoch(*a))
    out, live, _ = train(params, prepared, tmp_path, "resumed")
    assert calls == [2], "only the missing epoch is trained"
    assert (out / "model.safetensors").read_bytes() == (full / "model.safetensors").read_bytes()
    for tsv in ("train/loss.tsv", "val/acc.tsv"):
        assert (live / "plots/metrics" / tsv).read_text() == (full_live / "plots/metrics" / tsv).read_text()


def test_checkpoint_of_other_params_is_ignored(params, prepared, tmp_path, monkeypatch):
    train(params, prepared, tmp_path, "x")  # leaves no checkpoint; make one of a different run
    other = copy.deepcopy(params)
    other["train"]["lr"] = 0.01
    monkeypatch.setattr(stage1, "_train_one_epoch", _raise_at(stage1._train_one_epoch, 1))
    with pytest.raises(KeyboardInterrupt):
        train(other, prepared, tmp_path, "y")
    monkeypatch.undo()
    calls = []
    real_epoch = stage1._train_one_epoch
    monkeypatch.setattr(stage1, "_train_one_epoch", lambda *a: calls.append(a[EPOCH]) or real_epoch(*a))
    train(params, prepared, tmp_path, "y")
    assert calls == [0, 1, 2]


def _raise_at(real, at):
    def fn(*a):
        if a[EPOCH] == at:
            raise KeyboardInterrupt
        return real(*a)
    return fn


def test_bad_loss_value_fails_before_any_output(params, prepared, tmp_path):
    bad = copy.deepcopy(params)
    bad["loss"] = "focal"
    bad["losses"]["focal"]["gamma"] = -1.0
    with pytest.raises(ConfigError, match="losses.focal.gamma: -1.0: must be >= 0"):
        train(bad, prepared, tmp_path, "bad")
    assert not any(tmp_path.iterdir()), "nothing written"
