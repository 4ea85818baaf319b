"""Stage 1 without DVC: determinism, resume after an interruption, and bad input failing before training."""
import copy
import csv
import inspect
import json
import math

import pytest
import torch

import yaml

from ltpipe.data.prepare import prepare
from ltpipe.errors import ConfigError
from ltpipe.io import load_tensors
from ltpipe.runtime import Runtime
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
    for tsv in ("train/loss.tsv", "val/acc.tsv", "val/balanced_acc.tsv"):
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


def _weights_per_epoch(monkeypatch):
    """{epoch: the model weights its checkpoint holds}, recorded as stage 1 saves them."""
    saved, real = {}, stage1.save_checkpoint

    def spy(path, state):
        saved[state["epoch"]] = {k: v.clone() for k, v in state["model"].items()}
        real(path, state)

    monkeypatch.setattr(stage1, "save_checkpoint", spy)
    return saved


def _scripted_val_acc(monkeypatch, values):
    """val/balanced_acc, which best_val selects by, of the successive epochs (of one run and of its resumption) is
    `values`, in order."""
    values = iter(values)
    monkeypatch.setattr(stage1, "VALIDATION_METRICS",
                        dict(stage1.VALIDATION_METRICS, balanced_acc=lambda scores, targets: next(values)))


def _assert_same_weights(out, weights):
    written = load_tensors(out / "model.safetensors")
    assert written.keys() == weights.keys()
    for name, value in written.items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("select, expected", [("best_val", 2), ("last", 3)])
def test_select_writes_the_chosen_epochs_weights(params, prepared, tmp_path, monkeypatch, select, expected):
    chosen = copy.deepcopy(params)
    chosen["train"]["select"] = select
    saved = _weights_per_epoch(monkeypatch)
    _scripted_val_acc(monkeypatch, [0.3, 0.9, 0.9])  # epoch 3 ties epoch 2: the earlier one is kept
    out, live, _ = train(chosen, prepared, tmp_path, select)
    assert not torch.equal(saved[2]["head.weight"], saved[3]["head.weight"])
    _assert_same_weights(out, saved[expected])
    assert json.loads((live / "metrics.json").read_text())["selected_epoch"] == expected


def test_best_val_survives_an_interruption(params, prepared, tmp_path, monkeypatch):
    chosen = copy.deepcopy(params)
    chosen["train"]["select"] = "best_val"
    saved = _weights_per_epoch(monkeypatch)
    _scripted_val_acc(monkeypatch, [0.3, 0.9, 0.5])
    real_epoch = stage1._train_one_epoch
    monkeypatch.setattr(stage1, "_train_one_epoch", _raise_at(real_epoch, 2))
    with pytest.raises(KeyboardInterrupt):
        train(chosen, prepared, tmp_path, "best")
    best_weights = saved[2]
    monkeypatch.setattr(stage1, "_train_one_epoch", real_epoch)
    out, _, _ = train(chosen, prepared, tmp_path, "best")  # trains epoch 3 only, which validates worse
    assert 3 in saved
    _assert_same_weights(out, best_weights)


def test_best_val_picks_the_best_logged_balanced_validation_accuracy(params, prepared, tmp_path, monkeypatch):
    chosen = copy.deepcopy(params)
    # A constant, too high lr makes validation accuracy go up and down (here: best at epoch 4 of 5).
    chosen["train"].update(select="best_val", epochs=5, lr=3.0, schedule="constant")
    saved = _weights_per_epoch(monkeypatch)
    out, live, _ = train(chosen, prepared, tmp_path, "real")
    with (live / "plots/metrics/val/balanced_acc.tsv").open() as f:
        acc = [float(row["balanced_acc"]) for row in csv.DictReader(f, delimiter="\t")]
    best = 1 + max(range(len(acc)), key=lambda i: (acc[i], -i))
    assert json.loads((live / "metrics.json").read_text())["selected_epoch"] == best
    _assert_same_weights(out, saved[best])


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


class _Built(Exception):
    pass


@pytest.mark.parametrize("loss", ["ldam", "cb_focal", "ce"])
def test_stage1_builds_the_classifier_the_loss_needs(params, prepared, tmp_path, monkeypatch, loss):
    def capture(model, *rest):
        raise _Built(model)

    monkeypatch.setattr(stage1, "_train_one_epoch", capture)
    chosen = copy.deepcopy(params)
    chosen["loss"] = loss
    if loss == "ldam":
        chosen["model"]["head"] = "cosine"  # the loss requires it: validation says so otherwise
    with pytest.raises(_Built) as built:
        train(chosen, prepared, tmp_path, loss)
    head = built.value.args[0].head
    num_classes = head.weight.shape[0]
    if loss == "ldam":  # LDAM's NormedLinear: cosine logits, no bias
        assert head.normalize_input and head.normalize_weight and head.bias is None
    elif loss == "cb_focal":  # the class-balanced sigmoid loss starts every class at the prior 1/C
        torch.testing.assert_close(head.bias.detach(), torch.full((num_classes,), -math.log(num_classes - 1)))
    else:
        assert not head.normalize_input and not head.normalize_weight and head.bias is not None


def test_stage1_hands_the_mixed_batch_to_the_loss(params, prepared, monkeypatch):
    seen = []

    class Spy(torch.nn.Module):
        needs_features = False

        def set_epoch(self, epoch, total):
            pass

        def forward(self, logits, y_a, features, y_b, lam):
            seen.append((y_a, y_b, lam))
            return logits.sum() * 0

    from ltpipe.data.loader import BatchLoader
    from ltpipe.data.prepared import load_prepared
    from ltpipe.mixing import build_mixer
    from ltpipe.models import Classifier
    from ltpipe.samplers import build_sampler

    split = load_prepared(prepared).split("train")
    info = load_prepared(prepared).info
    loader = BatchLoader(split, batch_size=128, train=True, mean=info["mean"], std=info["std"],
                         image_size=info.get("image_size"))
    counts = load_prepared(prepared).class_counts
    model = Classifier("resnet8", len(counts), int(info["channels"]))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    runtime = Runtime(device=torch.device("cpu"))
    stage1._train_one_epoch(model, loader, build_sampler("instance", split.labels, len(counts)),
                            build_mixer("remix", counts), Spy(), optimizer, scheduler, runtime.grad_scaler(), runtime,
                            0, 1, 0, load_prepared(prepared).task)
    assert seen and all(lam.shape == y_a.shape == y_b.shape for y_a, y_b, lam in seen)
    assert any(not torch.equal(y_a, y_b) for y_a, y_b, _ in seen)
