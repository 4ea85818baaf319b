"""The real pipeline, end to end, in a temporary copy: git init, dvc init, dvc repro, dvc exp run -S ..."""
import json

import numpy as np
import pytest
import torch
import yaml

from conftest import checkout_baseline, plots_json, run, stages_ran
from ltpipe.classifier import STAGE2
from ltpipe.errors import ConfigError
from ltpipe.models.heads import load_head
from ltpipe.evaluate import evaluate
from ltpipe.report import experiments_table
from ltpipe.stage2 import retrain_classifier

pytestmark = pytest.mark.slow


def test_repro_writes_metrics_and_plots(project, resume_dir):
    tmp, log = project
    assert stages_ran(log) == {"prepare", "train_backbone", "extract_features", "retrain_classifier", "evaluate"}
    metrics = json.loads((tmp / "metrics/metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0
    for group in ("many_shot", "medium_shot", "few_shot"):
        assert group in metrics
    counts = json.loads((tmp / "data/prepared/class_counts.json").read_text())
    assert len(counts) == 10 and list(counts.values()) == sorted(counts.values(), reverse=True)
    assert (tmp / "metrics/per_class.csv").exists() and (tmp / "metrics/confusion.csv").exists()
    assert not any(resume_dir.iterdir()), "checkpoint is removed after a finished run"
    shown = plots_json(tmp)
    assert shown["confusion"] and shown["class_counts"] and shown["per_class_ap_vs_train_count"]
    assert shown["validation_map"]


def test_repro_again_is_a_no_op(project):
    tmp, _ = project
    assert stages_ran(run("dvc repro", tmp).stdout) == set()


def test_exp_run_loss_changes_metrics_and_stage2_change_keeps_stage1(project):
    tmp, _ = project
    # cb_focal: the paper's sigmoid focal loss, with its prior bias init, through the whole pipeline.
    focal = run("dvc exp run -S loss=cb_focal", tmp)
    assert "train_backbone" in stages_ran(focal.stdout)
    diff = json.loads(run("dvc metrics diff --json", tmp).stdout)
    changed = diff["metrics/metrics.json"]
    assert any(v.get("diff") not in (None, 0) for v in changed.values()), changed
    params_diff = json.loads(run("dvc params diff --json", tmp).stdout)
    assert params_diff["params.yaml"]["loss"] == {"old": "ce", "new": "cb_focal"}

    tau = run("dvc exp run -S stage2.method=tau_norm", tmp)
    assert stages_ran(tau.stdout) == {"retrain_classifier", "evaluate"}, tau.stdout
    info = json.loads((tmp / "artifacts/stage2/info.json").read_text())
    assert info["method"] == "tau_norm" and "tau" in info

    table = experiments_table(json.loads(run("dvc exp show --json", tmp).stdout))
    done = table[table["state"] == "done"]
    assert {"cb_focal"} <= set(done["loss"]) and "tau_norm" in set(done["stage2.method"]), table
    assert done["accuracy"].notna().all(), table


def test_augmented_train_views_rerun_extraction_but_not_stage1(project):
    """stage2.train_views V: extract_features adds V views of the train images augmented as in stage 1, which
    stage 2 trains on, one per epoch; stage 1 stays cached."""
    tmp, _ = project
    try:
        out = run("dvc exp run -S stage2.train_views=2 -S stage2.method=crt", tmp)
        assert stages_ran(out.stdout) == {"extract_features", "retrain_classifier", "evaluate"}, out.stdout
        plain = np.load(tmp / "artifacts/features/train_features.npy")
        views = np.load(tmp / "artifacts/features/train_views_features.npy")
        assert views.shape == (2, *plain.shape)
        assert not np.allclose(views[0], views[1]) and not np.allclose(views[0], plain)
        assert 0.0 <= json.loads((tmp / "metrics/metrics.json").read_text())["accuracy"] <= 1.0
        params = yaml.safe_load((tmp / "params.yaml").read_text())
        params["stage2"]["train_views"] = 3
        with pytest.raises(ConfigError, match="holds \\(2, .* not 3 views; rerun extract_features"):
            retrain_classifier(params, tmp / "data/prepared", tmp / "artifacts/stage1", tmp / "artifacts/features",
                               tmp / "unused")
    finally:
        checkout_baseline(tmp)


# tde needs a causal stage-1 head: tests/test_finetune_e2e.py runs it on one.
@pytest.mark.parametrize("method", [m for m in STAGE2.names("multiclass") if m != "tde"])
def test_every_stage2_method_through_the_driver(project, method, tmp_path):
    tmp, _ = project
    params = yaml.safe_load((tmp / "params.yaml").read_text())
    params["stage2"]["method"] = method
    stage1_bytes = (tmp / "artifacts/stage1/model.safetensors").read_bytes()
    retrain_classifier(params, tmp / "data/prepared", tmp / "artifacts/stage1", tmp / "artifacts/features", tmp_path)
    assert (tmp / "artifacts/stage1/model.safetensors").read_bytes() == stage1_bytes, "backbone must stay frozen"
    evaluate(params, tmp / "data/prepared", tmp_path, tmp_path / "metrics")
    head = load_head(tmp_path / "head.safetensors")
    with torch.no_grad():
        logits = head(torch.from_numpy(np.load(tmp / "artifacts/features/test_features.npy")))
    assert np.array_equal(logits.numpy(), np.load(tmp_path / "logits_test.npy"))
    assert json.loads((tmp_path / "info.json").read_text())["method"] == method
    metrics = json.loads((tmp_path / "metrics/metrics.json").read_text())
    assert 0.0 <= metrics["accuracy"] <= 1.0


def test_tsne_plot_is_coloured_by_class(project):
    tmp, _ = project
    try:
        out = run("dvc exp run -S evaluate.tsne=true", tmp)
        assert stages_ran(out.stdout) == {"evaluate"}
        tsne = json.loads(run("dvc plots show --json --split", tmp).stdout)["data"]["tsne"][0]
        assert tsne["content"]["encoding"]["color"]["field"] == "class"
        points = tsne["anchor_definitions"]["<DVC_METRIC_DATA>"]
        assert len(points) == json.loads((tmp / "metrics/metrics.json").read_text())["num_test"]
        assert {p["class"] for p in points} == set(json.loads((tmp / "data/prepared/classes.json").read_text()))
    finally:
        checkout_baseline(tmp)


def test_bad_values_fail_in_the_first_stage_one_line_each(project):
    """Values only a late stage reads (stage 2's) fail in the first stage that runs, before any training: every
    problem one line, no traceback."""
    tmp, _ = project
    sets = ("-S stage2.method=tau_normm -S stage2.crt.lr=-1 -S stage2.crt.epochs=0 -S +train.epoch=5 "
            "-S train.epochs=3.7")
    try:
        bad = run(f"dvc exp run -S train.lr=0.02 {sets}", tmp, check=False)
    finally:
        checkout_baseline(tmp)
    log = bad.stdout + bad.stderr
    assert bad.returncode != 0
    for message in ("error: stage2.method: 'tau_normm': unknown stage-2 method 'tau_normm'; valid choices: bbn, crt",
                    "error: stage2.crt.lr: -1: must be > 0", "error: stage2.crt.epochs: 0: must be >= 1",
                    "error: train.epoch: unknown key; did you mean train.epochs?",
                    "error: train.epochs: 3.7: must be an integer"):
        assert message in log, log
    assert "Traceback" not in log, "a params error is one line, not a traceback"
    assert "stage 1 epoch" not in log, "the first stage that runs must fail before any training"


def test_leftovers_of_killed_stages_are_removed_by_their_next_run(project):
    """`kill -9` in prepare or evaluate leaves a `.prepared.tmp.*` folder or a `.metrics.json.*.tmp` file behind."""
    tmp, _ = project
    junk = [tmp / "data/.prepared.tmp.k9", tmp / "data/.prepared.old.k9", tmp / "metrics/.metrics.json.k9.tmp",
            tmp / "artifacts/stage2/.head.safetensors.k9.tmp"]
    junk[0].mkdir()
    (junk[0] / "train.csv").write_text("id,label\n")
    junk[1].mkdir()
    for path in junk[2:]:
        path.write_bytes(b"")
    keep = tmp / "data/notes.tmp.txt"
    keep.write_text("not ours")
    try:
        for stage in ("prepare", "retrain_classifier", "evaluate"):
            run(f"dvc repro -f -s {stage}", tmp)
        assert not [p for p in junk if p.exists()]
        assert keep.exists(), "only the stages' own temporary names are removed"
    finally:
        keep.unlink()


def test_exp_run_selects_a_recipe_by_name(project):
    """DVC's Hydra composition: `-S recipe=<name>` merges conf/recipe/<name>.yaml into params.yaml, and further
    -S overrides apply on top of it."""
    tmp, _ = project
    recipe = tmp / "conf/recipe/tiny_ldam.yaml"  # LDAM-DRW's shape: its loss, its cosine head, a DRW switch
    recipe.write_text("# @package _global_\nrecipe: tiny_ldam\nloss: ldam\nmodel:\n  head: cosine\nlosses:\n"
                      "  ldam:\n    max_m: 0.5\n    reweight: cb\n    drw_epoch: 1\n")
    try:
        out = run("dvc exp run -S recipe=tiny_ldam -S losses.ldam.s=20", tmp)
        assert "train_backbone" in stages_ran(out.stdout)
        params = yaml.safe_load((tmp / "params.yaml").read_text())
        assert (params["recipe"], params["loss"], params["model"]["head"], params["losses"]["ldam"]["s"]) == \
            ("tiny_ldam", "ldam", "cosine", 20)
        assert 0.0 <= json.loads((tmp / "metrics/metrics.json").read_text())["accuracy"] <= 1.0
        assert json.loads((tmp / "artifacts/stage1/model.json").read_text())["cosine_scale"] == 20, \
            "the cosine head outputs s * cos with the loss's s"
        assert params["train"]["epochs"] == 2, "keys the recipe does not set keep conf/config.yaml's values"
        bad = run("dvc exp run -S recipe=nope", tmp, check=False)
        assert bad.returncode != 0 and "nope" in bad.stdout + bad.stderr
    finally:
        recipe.unlink()
        checkout_baseline(tmp)
