"""`ltpipe report`: parsing of `dvc exp show --json` and per-class comparison on small synthetic inputs, then the real
thing on two `dvc exp run`s of the tiny pipeline."""
import io
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, checkout_baseline, run
from ltpipe.cli import main
from ltpipe.errors import ConfigError
from ltpipe.report import compare_per_class, experiment_names, experiments_table, format_table, parse_per_class


def state(rev, name, params, metrics, error=None, experiments=None):
    """One entry shaped like dvc 3's ExpState.dumpd(): params/metrics are {file: {"data": ...} | {"error": ...}}."""
    data = {"rev": rev, "timestamp": None, "params": {"params.yaml": {"data": params}}, "metrics": metrics,
            "deps": {}, "outs": {}, "meta": {}}
    return {"rev": rev, "name": name, "data": data, "error": error, "experiments": experiments}


def metrics_file(values):
    return {"metrics/metrics.json": {"data": values}, "artifacts/stage1_live/metrics.json": {"data": {
        "train": {"loss": 0.5, "acc": 0.9}, "step": 1}}}


PARAMS = {"seed": 0, "loss": "ce", "stage2": {"method": "crt", "crt": {"epochs": 2}}, "model": {"backbone": "resnet8"},
          "dataset": {"name": "digits"}, "imbalance": {"factor": 10}}
EXP_SHOW = [
    state("workspace", None, PARAMS, metrics_file({"accuracy": 0.7, "many_shot": 0.9, "few_shot": None})),
    state("a" * 40, "main", PARAMS, metrics_file({"accuracy": 0.6, "many_shot": 0.8, "ece": 0.1}), experiments=[
        {"revs": [state("b" * 40, "exp-focal", dict(PARAMS, loss="focal"),
                        metrics_file({"accuracy": 0.65, "many_shot": 0.85}))], "executor": None, "name": "exp-focal"},
        {"revs": [state("c" * 40, "exp-failed", dict(PARAMS, seed=3),
                        {"metrics/metrics.json": {"error": {"type": "FileNotFoundError", "msg": "gone"}}})],
         "executor": {"state": "failed", "name": None, "local": None}, "name": "exp-failed"},
        {"revs": [{"rev": "d" * 40, "name": "exp-broken", "data": None,
                   "error": {"msg": "cannot collect", "type": "DvcException"}, "experiments": None}],
         "executor": None, "name": "exp-broken"},
    ]),
]


def test_experiments_table_rows_params_and_metrics():
    table = experiments_table(EXP_SHOW, params=("loss", "stage2.method", "seed"),
                              metrics=("accuracy", "many_shot", "few_shot", "ece", "train.loss"), differing=False)
    assert list(table.columns) == ["experiment", "rev", "state", "baseline", "loss", "stage2.method", "seed",
                                   "accuracy", "many_shot", "few_shot", "ece", "train.loss"]
    assert table["experiment"].tolist() == ["workspace", "main", "exp-focal", "exp-failed", "exp-broken"]
    assert table["rev"].tolist() == ["workspace", "aaaaaaa", "bbbbbbb", "ccccccc", "ddddddd"]
    assert table["state"].tolist() == ["workspace", "baseline", "done", "failed", "error"]
    assert table["baseline"].tolist()[2:] == ["main"] * 3
    assert table["loss"].tolist()[:3] == ["ce", "ce", "focal"]
    assert table["seed"].tolist()[:4] == [0, 0, 0, 3]
    assert table["accuracy"].tolist()[:3] == [0.7, 0.6, 0.65]
    # null, absent and unreadable metrics are NaN, never 0.
    assert math.isnan(table.loc[0, "few_shot"]) and math.isnan(table.loc[0, "ece"])
    assert table["accuracy"].iloc[3:].isna().all()
    assert table.loc[1, "ece"] == 0.1
    # Nested metrics of other files (DVCLive's) are reachable by dotted name.
    assert table.loc[0, "train.loss"] == 0.5
    assert experiment_names(EXP_SHOW) == ["workspace", "main", "exp-focal", "exp-failed", "exp-broken"]


def test_experiments_table_adds_the_params_that_differ():
    base = {**PARAMS, "train": {"epochs": 30, "lr": 0.1}}
    runs = [state("a" * 40, "main", base, metrics_file({"accuracy": 0.6}), experiments=[
        {"revs": [state("b" * 40, "longer", {**PARAMS, "train": {"epochs": 200, "lr": 0.1}},
                        metrics_file({"accuracy": 0.7}))], "executor": None, "name": "longer"},
        {"revs": [state("c" * 40, "tweak", {**PARAMS, "train": {"epochs": 30, "lr": 0.1}, "stage2": {
            "method": "crt", "crt": {"epochs": 5}}}, metrics_file({"accuracy": 0.5}))], "executor": None,
         "name": "tweak"}])]
    table = experiments_table(runs, params=("loss",), metrics=("accuracy",))
    assert list(table.columns) == ["experiment", "rev", "state", "baseline", "loss", "stage2.crt.epochs",
                                   "train.epochs", "accuracy"]
    assert table["train.epochs"].tolist() == [30, 200, 30] and table["stage2.crt.epochs"].tolist() == [2, 2, 5]
    # Keys equal in every experiment (train.lr where given, seed, ...) stay out of the way.
    assert "seed" not in table.columns and "dataset.name" not in table.columns


def test_experiments_table_survives_empty_and_odd_json():
    assert experiments_table([]).empty
    odd = [{"rev": "e" * 40, "name": None, "data": {"params": None, "metrics": {"m.json": "junk"}}}, "junk"]
    table = experiments_table(odd, params=("loss",), metrics=("accuracy",))
    assert table["experiment"].tolist() == ["eeeeeee"] and math.isnan(table.loc[0, "accuracy"])


OLD = pd.DataFrame({"rank": [0, 1, 2], "class": ["x", "y", "gone"], "train_count": [50, 20, 5],
                    "shot": ["many", "medium", "few"], "accuracy": [0.9, 0.5, 0.0]})
NEW = pd.DataFrame({"rank": [0, 1, 2], "class": ["y", "x", "new"], "train_count": [60, 50, 7],
                    "shot": ["many", "many", "few"], "accuracy": [0.7, 0.8, np.nan]})


def test_compare_per_class_matches_by_name_in_new_frequency_order():
    table = compare_per_class(OLD, NEW)
    assert list(table.columns) == ["rank", "class", "shot", "train_count_old", "train_count_new", "accuracy_old",
                                   "accuracy_new", "delta"]
    assert table["class"].tolist() == ["y", "x", "new", "gone"]
    assert table["rank"].tolist() == [0, 1, 2, 3]
    assert table["shot"].tolist() == ["many", "many", "few", "few"]
    assert table["train_count_old"].tolist() == [20, 50, pd.NA, 5]
    assert table["train_count_new"].tolist() == [60, 50, 7, pd.NA]
    np.testing.assert_allclose(table["delta"][:2], [0.7 - 0.5, 0.8 - 0.9])
    assert table["delta"][2:].isna().all()


def test_markdown_and_csv_formats():
    table = compare_per_class(OLD, NEW)
    md = format_table(table, "markdown").splitlines()
    assert len(md) == 2 + len(table)
    assert md[0].split("|")[1].strip() == "rank" and set(md[1]) <= set("|-:")
    assert "0.2000" in md[2] and "-0.1000" in md[3]
    assert md[4].count(" - ") >= 2  # missing old count, old accuracy and delta
    back = pd.read_csv(io.StringIO(format_table(table, "csv")))
    np.testing.assert_allclose(back["delta"], table["delta"].astype(float))
    with pytest.raises(ConfigError, match="markdown, csv"):
        format_table(table, "html")


def test_per_class_csv_without_needed_columns_is_rejected():
    with pytest.raises(ConfigError, match="lacks column.*shot.*needs class, train_count, shot, accuracy"):
        parse_per_class("class,train_count,accuracy\nx,1,0.5\n", "exp-1")


def test_validate_command(tmp_path, capsys):
    assert main(["validate", str(ROOT / "params.yaml")]) == 0
    assert "OK" in capsys.readouterr().out
    bad = tmp_path / "params.yaml"
    bad.write_text((ROOT / "params.yaml").read_text().replace("method: crt", "method: crtt", 1))
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "crtt" in err and "tau_norm" in err
    assert main(["validate", str(tmp_path / "absent.yaml")]) == 1


def test_report_outside_a_dvc_repo_is_a_clear_error(tmp_path, capsys):
    assert main(["report", "--repo", str(tmp_path)]) == 1
    assert "dvc exp show" in capsys.readouterr().err


@pytest.fixture
def two_experiments(project, tmp_path):
    """Two stage-2-only experiments of the tiny pipeline, with copies of their workspace outputs."""
    root, _ = project
    checkout_baseline(root)
    saved = {}
    for name, sets in (("report-ncm", ["stage2.method=ncm"]), ("report-none", ["stage2.method=none",
                                                                               "evaluate.tsne=true"])):
        run(["dvc", "exp", "run", "-n", name] + [a for s in sets for a in ("-S", s)], root)
        saved[name] = tmp_path / name
        shutil.copytree(root / "metrics", saved[name])
    yield root, saved
    checkout_baseline(root)


@pytest.mark.slow
def test_report_of_real_experiments(two_experiments):
    root, saved = two_experiments
    out = run(["python", "-m", "ltpipe.cli", "report", "--format", "csv"], root).stdout
    table = pd.read_csv(io.StringIO(out)).set_index("experiment")
    for name, method in (("report-ncm", "ncm"), ("report-none", "none")):
        metrics = json.loads((saved[name] / "metrics.json").read_text())
        assert table.loc[name, "stage2.method"] == method
        assert table.loc[name, "accuracy"] == pytest.approx(metrics["accuracy"])
        assert table.loc[name, "balanced_accuracy"] == pytest.approx(metrics["balanced_accuracy"])
        assert table.loc[name, "state"] == "done"
    # t-SNE only in the experiment that asked for it.
    assert len(pd.read_csv(saved["report-ncm"] / "tsne.csv")) == 0
    assert len(pd.read_csv(saved["report-none"] / "tsne.csv")) > 0

    out = run(["python", "-m", "ltpipe.cli", "report", "--compare", "report-ncm", "report-none", "--format", "csv"],
              root).stdout
    compared = pd.read_csv(io.StringIO(out)).set_index("class")
    old = pd.read_csv(saved["report-ncm"] / "per_class.csv").set_index("class")
    new = pd.read_csv(saved["report-none"] / "per_class.csv").set_index("class")
    assert list(compared.index) == list(new.index)  # most frequent class first
    np.testing.assert_allclose(compared["accuracy_old"], old.loc[compared.index, "accuracy"])
    np.testing.assert_allclose(compared["accuracy_new"], new.loc[compared.index, "accuracy"])
    np.testing.assert_allclose(compared["delta"], new.loc[compared.index, "accuracy"] - old.loc[compared.index,
                                                                                                  "accuracy"])
    assert (compared["train_count_new"] == new["train_count"]).all()

    markdown = run(["python", "-m", "ltpipe.cli", "report", "--compare", "report-ncm", "nope"], root, check=False)
    assert markdown.returncode == 1 and "report-ncm" in markdown.stderr and "valid experiments" in markdown.stderr

    # The declared plots render for both experiments.
    plots = json.loads(run(["dvc", "plots", "diff", "--json", "report-ncm", "report-none"], root).stdout)
    assert not plots.get("errors"), plots["errors"]
    for name in ("per_class_accuracy", "confusion", "classifier_weight_norms", "training_loss", "tsne"):
        assert name in plots["data"], name


def test_default_metrics_are_those_of_the_tasks_the_experiments_ran():
    multilabel = {**PARAMS, "task": "multilabel", "loss": "db"}
    runs = [state("a" * 40, "main", PARAMS, metrics_file({"accuracy": 0.6}), experiments=[
        {"revs": [state("b" * 40, "ml", multilabel, metrics_file({"mAP": 0.5, "micro_f1": 0.4}))], "executor": None,
         "name": "ml"}])]
    table = experiments_table(runs)
    assert {"accuracy", "many_shot", "mAP", "tail_mAP", "micro_f1"} <= set(table.columns)
    assert table["mAP"].tolist()[1] == 0.5 and math.isnan(table["mAP"].tolist()[0])
    assert table["task"].tolist()[1] == "multilabel", "a param that differs is shown"
    only_multiclass = experiments_table([state("a" * 40, "main", PARAMS, metrics_file({}))])
    assert "mAP" not in only_multiclass.columns and "accuracy" in only_multiclass.columns
