"""Fine-tuning through the real pipeline: a local pretrained file with frozen stages, the causal head with TDE (alpha
is stage 2's: changing it never retrains stage 1), another optimizer, and the old/new ensemble."""
import json
import shutil

import pytest
import torch

from conftest import checkout_baseline, run, stages_ran
from ltpipe.io import load_tensors

pytestmark = pytest.mark.slow


def test_exp_run_fine_tunes_a_pretrained_file_with_frozen_stages_adamw_and_the_ensemble(project):
    tmp, _ = project
    weights = tmp / "data/pretrained/previous_run.safetensors"
    shutil.copy(tmp / "artifacts/stage1/model.safetensors", weights)  # another ltpipe run's stage 1
    try:
        tune = f"-S model.pretrained={weights.relative_to(tmp)} -S model.freeze_stages=1 -S train.optimizer=adamw " \
               "-S train.lr=0.003"
        out = run(f"dvc exp run {tune}", tmp)
        assert "train_backbone" in stages_ran(out.stdout) and "pretrained weights:" in out.stdout
        assert run("dvc plots diff --json HEAD", tmp).returncode == 0  # adamw's curves beside the baseline's SGD
        init = json.loads((tmp / "artifacts/stage1/init.json").read_text())
        source = load_tensors(weights)
        source_bytes = weights.read_bytes()
        assert init["pretrained"]["loaded"] and not init["pretrained"]["missing"]
        assert set(init["pretrained"]["loaded"]) >= {k for k in source if k.startswith("backbone.")}
        trained = load_tensors(tmp / "artifacts/stage1/model.safetensors")
        frozen = [f"backbone.{name}" for name in init["frozen"]]
        assert any(".blocks.0." in n for n in frozen) and not any(".blocks.2." in n for n in frozen), frozen
        for name in frozen:
            assert torch.equal(trained[name], source[name]), f"{name} changed although frozen"
        for name in [n for n in source if "bn1.running_mean" in n and n.startswith("backbone.bn1")]:
            assert torch.equal(trained[name], source[name]), "frozen BatchNorm statistics must not move"
        assert not torch.equal(trained["backbone.blocks.2.conv1.weight"], source["backbone.blocks.2.conv1.weight"])
        # Replacing the weights file (a dependency of stage 1) reruns stage 1.
        weights.write_bytes((tmp / "artifacts/stage1/model.safetensors").read_bytes())
        again = run("dvc status train_backbone", tmp)
        assert "data/pretrained" in again.stdout
        weights.write_bytes(source_bytes)
        # The old/new ensemble on this stage 1: a stage-2 change only.
        ens = run(f"dvc exp run {tune} -S stage2.ensemble.enabled=true -S stage2.ensemble.t_old=2.0", tmp)
        assert stages_ran(ens.stdout) == {"retrain_classifier", "evaluate"}
        info = json.loads((tmp / "artifacts/stage2/info.json").read_text())
        assert info["ensemble"] == {"t_old": 2.0, "t_new": 1.0}
        assert 0 <= json.loads((tmp / "metrics/metrics.json").read_text())["accuracy"] <= 1
    finally:
        weights.unlink()
        checkout_baseline(tmp)


def test_causal_head_with_tde_and_an_alpha_change_that_keeps_stage1(project):
    tmp, _ = project
    try:
        run("dvc exp run -S model.head=causal -S stage2.method=tde -S stage2.tde.alpha=1.0", tmp)
        tde = json.loads((tmp / "metrics/metrics.json").read_text())
        again = run("dvc exp run -S model.head=causal -S stage2.method=tde -S stage2.tde.alpha=0.0", tmp)
        assert stages_ran(again.stdout) == {"retrain_classifier", "evaluate"}, "alpha must not retrain stage 1"
        plain = json.loads((tmp / "metrics/metrics.json").read_text())
        none = run("dvc exp run -S model.head=causal -S stage2.method=none", tmp)
        assert stages_ran(none.stdout) <= {"retrain_classifier", "evaluate"}
        assert json.loads((tmp / "metrics/metrics.json").read_text())["accuracy"] == plain["accuracy"], \
            "TDE with alpha 0 is the plain causal head"
        assert json.loads((tmp / "artifacts/stage2/info.json").read_text())["method"] == "none"
        assert tde["accuracy"] != plain["accuracy"] or tde["nll"] != plain["nll"]
    finally:
        checkout_baseline(tmp)
