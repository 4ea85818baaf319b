"""The real pipeline, end to end, in a temporary copy: git init, dvc init, dvc repro, dvc exp run -S ..."""
import json

import pytest

from conftest import run, stages_ran

pytestmark = pytest.mark.slow


def test_repro_writes_metrics_and_plots(project):
    tmp, log = project
    assert stages_ran(log) == {"prepare", "train_backbone", "extract_features", "retrain_classifier", "evaluate"}
    metrics = json.loads((tmp / "metrics/metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    for group in ("many_shot", "medium_shot", "few_shot"):
        assert group in metrics
    counts = json.loads((tmp / "data/prepared/class_counts.json").read_text())
    assert len(counts) == 10 and list(counts.values()) == sorted(counts.values(), reverse=True)
    assert (tmp / "metrics/per_class.csv").exists() and (tmp / "metrics/confusion.csv").exists()
    assert not (tmp / "data/resume/stage1.pt").exists(), "checkpoint is removed after a finished run"
    shown = run("dvc plots show --json", tmp).stdout
    assert "confusion" in shown and "class_counts" in shown


def test_repro_again_is_a_no_op(project):
    tmp, _ = project
    assert stages_ran(run("dvc repro", tmp).stdout) == set()


def test_exp_run_loss_changes_metrics_and_stage2_change_keeps_stage1(project):
    tmp, _ = project
    focal = run("dvc exp run -S loss=focal", tmp)
    assert "train_backbone" in stages_ran(focal.stdout)
    diff = json.loads(run("dvc metrics diff --json", tmp).stdout)
    changed = diff["metrics/metrics.json"]
    assert any(v.get("diff") not in (None, 0) for v in changed.values()), changed
    params_diff = json.loads(run("dvc params diff --json", tmp).stdout)
    assert params_diff["params.yaml"]["loss"] == {"old": "ce", "new": "focal"}

    tau = run("dvc exp run -S stage2.method=tau_norm", tmp)
    assert stages_ran(tau.stdout) == {"retrain_classifier", "evaluate"}, tau.stdout
    info = json.loads((tmp / "artifacts/stage2/info.json").read_text())
    assert info["method"] == "tau_norm" and "tau" in info

    shown = json.loads(run("dvc exp show --json", tmp).stdout)
    assert len(json.dumps(shown)) > 0 and "tau_norm" in json.dumps(shown)


def test_bad_name_fails_fast_without_outputs(project):
    tmp, _ = project
    run("git stash -q --include-untracked || true", tmp, check=False)
    bad = run("dvc exp run -S stage2.method=tau_normm", tmp, check=False)
    assert bad.returncode != 0
    assert "unknown stage-2 method 'tau_normm'" in bad.stdout + bad.stderr
    assert "crt" in bad.stdout + bad.stderr
