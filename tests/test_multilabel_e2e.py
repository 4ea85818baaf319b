"""The multilabel task end to end in a temporary copy: params composed from the multilabel_digits recipe, dvc repro,
then dvc exp run -S recipe=multilabel_digits -S loss=db (stage 1 reruns, prepare does not) and a stage-2 change
(stage 1 does not rerun); both tasks' plots load."""
import json

import pytest

from conftest import TINY, make_project, plots_json, run, stages_ran

pytestmark = pytest.mark.slow

# Small mosaics (imbalance 20 keeps the rarest digit in a few of 400) on top of the tiny training of the other e2e tests.
SMALL = {**TINY, "dataset.mosaic_digits.num_train": 400, "dataset.mosaic_digits.num_val": 120,
         "dataset.mosaic_digits.num_test": 120, "dataset.mosaic_digits.imbalance": 20.0, "stage2.lws.epochs": 2}
RECIPE = "-S recipe=multilabel_digits"


@pytest.fixture(scope="module")
def multilabel_project(tmp_path_factory):
    tmp = make_project(tmp_path_factory.mktemp("multilabel"), SMALL)
    run("python -m ltpipe.cli compose recipe=multilabel_digits", tmp)
    run("git add -A && git commit -qm 'multilabel params'", tmp)
    repro = run("dvc repro", tmp)
    run("git add -A && git commit -qm baseline", tmp)
    return tmp, repro.stdout + repro.stderr


def test_repro_prepares_trains_and_reports_map(multilabel_project):
    tmp, log = multilabel_project
    assert stages_ran(log) == {"prepare", "train_backbone", "extract_features", "retrain_classifier", "evaluate"}
    assert json.loads((tmp / "data/prepared/info.json").read_text())["task"] == "multilabel"
    metrics = json.loads((tmp / "metrics/metrics.json").read_text())
    assert 0 < metrics["mAP"] <= 1 and {"head_mAP", "medium_mAP", "tail_mAP", "micro_f1", "macro_f1"} <= set(metrics)
    assert metrics["num_head"] + metrics["num_medium"] + metrics["num_tail"] == 10
    shown = plots_json(tmp)
    assert shown["per_class_ap_vs_train_count"] and shown["validation_map"] and shown["training_accuracy"]
    assert shown["confusion"] == [], "no single-label confusion for multi-label data"
    assert stages_ran(run("dvc repro", tmp).stdout) == set()


def test_exp_run_db_loss_reruns_stage1_not_prepare_and_a_stage2_change_keeps_stage1(multilabel_project):
    tmp, _ = multilabel_project
    db = run(f"dvc exp run {RECIPE} -S loss=db", tmp)
    assert stages_ran(db.stdout) == {"train_backbone", "extract_features", "retrain_classifier", "evaluate"}
    assert json.loads(run("dvc params diff --json", tmp).stdout)["params.yaml"]["loss"] == {"old": "bce", "new": "db"}
    diff = json.loads(run("dvc metrics diff --json", tmp).stdout)["metrics/metrics.json"]
    assert diff["mAP"]["new"] != diff["mAP"]["old"]
    tau = run(f"dvc exp run {RECIPE} -S loss=db -S stage2.method=tau_norm", tmp)
    assert stages_ran(tau.stdout) == {"retrain_classifier", "evaluate"}, tau.stdout
    info = json.loads((tmp / "artifacts/stage2/info.json").read_text())
    assert info["method"] == "tau_norm" and "val_micro_f1" in info


def test_a_loss_of_the_other_task_fails_before_any_work(multilabel_project):
    tmp, _ = multilabel_project
    try:
        bad = run(f"dvc exp run {RECIPE} -S loss=focal -S train.lr=0.02", tmp, check=False)
    finally:
        run("git checkout -q -- . && dvc checkout -q --force", tmp)
    log = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "error: loss: 'focal': does not fit task 'multilabel'; valid choices for " \
                                    "multilabel: asl, bce, cb_bce, db, focal_bce" in log, log
    assert "stage 1 epoch" not in log and "Traceback" not in log
