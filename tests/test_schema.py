"""The params schema: every key known, typed and range-checked once, one line per problem, before any stage works."""
import copy
import os
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT
from ltpipe.config import load_validated_params, read_params_file
from ltpipe.errors import ConfigError
from ltpipe.recipes import compose_params, compose_yaml, recipe_names
from ltpipe.schema import default_params, validate_params

PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def with_value(path, value, params=PARAMS):
    params = copy.deepcopy(params)
    *parents, leaf = path.split(".")
    node = params
    for key in parents:
        node = node[key]
    node[leaf] = value
    return params


def error_of(params):
    with pytest.raises(ConfigError) as info:
        validate_params(params)
    return str(info.value)


def test_committed_params_are_exactly_the_schema_defaults_and_the_composition_of_conf():
    """Every key of the schema is in params.yaml (so `dvc exp run -S` can set it) and nothing else is; params.yaml is
    byte for byte what `dvc exp run` composes from conf/ (so a run without overrides changes nothing)."""
    assert default_params() == validate_params(PARAMS).model_dump(mode="json")
    assert validate_params(PARAMS).model_dump(mode="json") == PARAMS
    assert compose_yaml([], ROOT / "conf") == (ROOT / "params.yaml").read_text()


@pytest.mark.parametrize("recipe", recipe_names(ROOT / "conf"))
def test_every_recipe_composes_to_valid_params(recipe):
    # Files a recipe names (voc_lt_db's pretrained weights) exist on the machine it runs on, not here.
    params = validate_params(compose_params([f"recipe={recipe}"], ROOT / "conf"), check_files=False)
    assert params.recipe == recipe


def test_recipes_hold_their_papers_settings():
    ldam = validate_params(compose_params(["recipe=ldam_drw"], ROOT / "conf"))
    assert (ldam.loss, ldam.losses.ldam.reweight, ldam.losses.ldam.drw_epoch) == ("ldam", "cb", 160)
    assert (ldam.train.epochs, ldam.train.batch_size, ldam.train.lr, ldam.train.weight_decay) == (200, 128, 0.1, 2e-4)
    assert ldam.train.milestones == [160, 180] and ldam.train.gamma == 0.01 and ldam.train.warmup_epochs == 5
    assert (ldam.imbalance.factor, ldam.model.backbone, ldam.split.val_from) == (100, "resnet32", "test")
    mislas = validate_params(compose_params(["recipe=mislas"], ROOT / "conf"))
    assert (mislas.train.mixer, mislas.mixers.mixup.alpha, mislas.train.gamma) == ("mixup", 1.0, 0.1)
    assert (mislas.stage2.method, mislas.stage2.mislas.eps_head, mislas.stage2.mislas.eps_tail,
            mislas.stage2.mislas.head_lr_factor) == ("mislas", 0.3, 0.0, 0.5)
    wb = validate_params(compose_params(["recipe=weight_balancing"], ROOT / "conf"))
    assert (wb.train.epochs, wb.train.batch_size, wb.train.lr, wb.train.weight_decay, wb.train.schedule) == \
        (320, 64, 0.01, 5e-3, "cosine")
    tde = validate_params(compose_params(["recipe=tde"], ROOT / "conf"))
    assert (tde.model.backbone, tde.model.head, tde.stage2.method, tde.stage2.tde.alpha) == \
        ("bbn_resnet32", "causal", "tde", 1.0)
    assert (tde.train.epochs, tde.train.batch_size, tde.train.lr, tde.train.weight_decay) == (200, 256, 0.2, 5e-4)
    # The authors' WarmupMultiStepLR is stepped before each 1-based epoch E: lr factor 0.01^bisect_right([120, 160], E),
    # so 0-based epochs 118 / 119 / 158 / 159 train at 1 / 0.01 / 0.01 / 1e-4.
    from ltpipe.train.schedule import lr_lambda

    factor = lr_lambda(steps_per_epoch=7, epochs=tde.train.epochs, warmup_epochs=tde.train.warmup_epochs,
                       schedule=tde.train.schedule, milestones=tde.train.milestones, gamma=tde.train.gamma)
    assert [factor(7 * e) for e in (118, 119, 158, 159)] == pytest.approx([1.0, 0.01, 0.01, 1e-4])
    overridden = validate_params(compose_params(["recipe=ldam_drw", "train.epochs=10", "train.milestones=[8,9]",
                                                 "losses.ldam.drw_epoch=8"], ROOT / "conf"))
    assert overridden.train.epochs == 10 and overridden.loss == "ldam", "overrides apply on top of the recipe"


def test_unknown_recipe_names_the_choices():
    with pytest.raises(ConfigError, match="recipe 'ldam': unknown; valid choices: bbn, cifar_lt_ce, ldam_drw"):
        compose_params(["recipe=ldam"], ROOT / "conf")


@pytest.mark.parametrize("path, typo, message", [
    ("train", "epoch", "train.epoch: unknown key; did you mean train.epochs?"),
    ("imbalance", "factr", "imbalance.factr: unknown key; did you mean imbalance.factor?"),
    ("evaluate", "tnse", "evaluate.tnse: unknown key; did you mean evaluate.tsne?"),
    ("", "trian", "trian: unknown key; did you mean train?"),
    ("losses.focal", "gama", "losses.focal.gama: unknown key; did you mean losses.focal.gamma?"),
    ("stage2.crt", "lrr", "stage2.crt.lrr: unknown key; did you mean stage2.crt.lr?"),
])
def test_unknown_keys_are_errors_with_the_nearest_key(path, typo, message):
    params = copy.deepcopy(PARAMS)
    node = params
    for key in filter(None, path.split(".")):
        node = node[key]
    node[typo] = 1
    assert error_of(params) == message


@pytest.mark.parametrize("path, value, message", [
    ("train.epochs", 3.7, "train.epochs: 3.7: must be an integer"),
    ("train.epochs", 3.0, "train.epochs: 3.0: must be an integer"),
    ("train.epochs", "ten", "train.epochs: 'ten': must be an integer"),
    ("train.epochs", True, "train.epochs: True: must be an integer"),
    ("train.lr", "fast", "train.lr: 'fast': must be a number"),
    ("train.lr", 0, "train.lr: 0: must be > 0"),
    ("train.momentum", 1.0, "train.momentum: 1.0: must be < 1"),
    ("train.channels_last", "yes", "train.channels_last: 'yes': must be true or false"),
    ("train.schedule", "step", "train.schedule: 'step': unknown lr schedule 'step'; valid choices: constant, cosine, "
                               "multistep"),
    ("train.warmup_epochs", 30, "train.warmup_epochs: 30: must be < epochs (30)"),
    ("loss", "focall", "loss: 'focall': unknown loss 'focall'; valid choices: "),
    ("stage2.method", "cRT", "stage2.method: 'cRT': unknown stage-2 method 'cRT'; valid choices: bbn, crt, "),
    ("stage2.crt.lr", -1, "stage2.crt.lr: -1: must be > 0"),
    ("stage2.crt.epochs", 0, "stage2.crt.epochs: 0: must be >= 1"),
    ("stage2.crt.batch_size", 0, "stage2.crt.batch_size: 0: must be >= 1"),
    ("stage2.crt.sampler", "balanced", "stage2.crt.sampler: 'balanced': unknown sampler 'balanced'; valid choices:"),
    ("stage2.crt.loss_params", {"gama": 1}, "stage2.crt.loss_params.gama: unknown key; loss_params takes no keys"),
    ("imbalance.profile", "linear", "imbalance.profile: 'linear': not a valid choice; valid choices: exp, step, pareto, "
                                    "none"),
    ("model.backbone", "resnet33", "model.backbone: 'resnet33': unknown backbone 'resnet33'"),
    ("train.select", "best_test", "train.select: 'best_test': not a valid choice; valid choices: last, best_val"),
    ("evaluate.few_threshold", 500, "evaluate.few_threshold: 500: must be <= many_threshold (100)"),
    ("dataset.imagefolder.image_size", 3.5, "dataset.imagefolder.image_size: 3.5: must be an integer"),
    ("train.augment.randaugment.num_ops", 0, "train.augment.randaugment.num_ops: 0: must be >= 1"),
    ("samplers.class_aware.samples_per_class", 0, "samplers.class_aware.samples_per_class: 0: must be >= 1"),
    ("mixers.remix.tau", 2.0, "mixers.remix.tau: 2.0: must be <= 1"),
])
def test_bad_values_name_the_key_the_value_and_the_rule(path, value, message):
    assert error_of(with_value(path, value)).startswith(message)


def test_every_problem_is_one_line():
    params = with_value("train.epochs", 3.7)
    params["train"]["epoch"] = 5
    params["stage2"]["crt"]["lr"] = -1
    lines = error_of(params).splitlines()
    assert sorted(lines) == sorted(["train.epochs: 3.7: must be an integer",
                                    "train.epoch: unknown key; did you mean train.epochs?",
                                    "stage2.crt.lr: -1: must be > 0"])


def test_stage2_loss_params_are_checked_against_the_chosen_loss():
    params = with_value("stage2.crt.loss", "focal")
    params["stage2"]["crt"]["loss_params"] = {"gamma": -2.0}
    assert error_of(params) == "stage2.crt.loss_params.gamma: -2.0: must be >= 0"
    params["stage2"]["crt"]["loss_params"] = {"gamma": 1.0}
    assert validate_params(params).stage2.crt.loss == "focal"


def test_drw_epoch_must_fall_inside_training():
    params = with_value("loss", "cb_ce")
    params["losses"]["cb_ce"]["drw_epoch"] = 30
    assert error_of(params) == "losses.cb_ce.drw_epoch: 30: must be < train.epochs (30) or null"


def test_feabal_curriculum_must_fit_in_training():
    params = with_value("loss", "feabal")
    params["train"]["epochs"] = 10
    assert error_of(params) == ("losses.feabal.full_before_end: 10: must be < train.epochs (10): the curriculum "
                                "needs an epoch")
    params["losses"]["feabal"]["curriculum"] = False
    assert validate_params(params).loss == "feabal"


@pytest.mark.parametrize("text", ["train.lr", "stage2.crt.lr"])
def test_5e_4_reads_the_same_from_pyyaml_and_from_dvc(tmp_path, text):
    """PyYAML reads `5e-4` as the string '5e-4'; DVC's -S writes the float 0.0005. Both validate to 0.0005."""
    *_, leaf = text.split(".")
    as_string = yaml.safe_load(f"{leaf}: 5e-4")[leaf]
    assert as_string == "5e-4"
    for value in (as_string, 0.0005):
        params = validate_params(with_value(text, value))
        node = params
        for key in text.split("."):
            node = getattr(node, key)
        assert node == 0.0005 and isinstance(node, float)


def test_yaml_syntax_error_is_one_line_with_the_position(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 0\ntrain: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        read_params_file(bad)
    assert len(str(info.value).splitlines()) == 1
    assert str(info.value).startswith(f"{bad}:3:1: YAML syntax error")


def test_top_level_list_and_empty_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping of sections .* got a list"):
        load_validated_params(bad)
    bad.write_text("")
    assert load_validated_params(bad).train.epochs == PARAMS["train"]["epochs"], "empty file = all defaults"


def cli(*args, cwd):
    # PYTHONPATH: this checkout's ltpipe, not whichever one an editable install points to
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "ltpipe.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=env)


def test_validate_command_one_line_errors_exit_1_and_debug_traceback(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(with_value("stage2.crt.lr", -1)))
    out = cli("validate", str(bad), cwd=tmp_path)
    assert out.returncode == 1 and out.stderr == "error: stage2.crt.lr: -1: must be > 0\n" and out.stdout == ""
    debug = cli("--debug", "validate", str(bad), cwd=tmp_path)
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(PARAMS))
    assert cli("validate", str(good), cwd=tmp_path).returncode == 0


def test_stage_exits_1_without_traceback_before_touching_outputs(tmp_path):
    (tmp_path / "params.yaml").write_text("- a list\n")
    env_cmd = [sys.executable, "-m", "stages.evaluate", "--prepared", "p", "--stage2", "s", "--out", "out",
               "--features", "f"]
    out = subprocess.run(env_cmd, cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("error: params.yaml: the top level must be a mapping") and "Traceback" not in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


@pytest.mark.parametrize("path, value, message", [
    ("model.freeze_stages", 4, "model.freeze_stages: 4: resnet8 has 3 stages; valid choices: -1 (train all), 0 "
                               "(freeze the stem) .. 3"),
    ("model.freeze_stages", -2, "model.freeze_stages: -2: must be >= -1"),
    ("model.pretrained", "weights.pt", "model.pretrained: 'weights.pt': must be a file under data/pretrained/"),
    ("model.pretrained", "data/pretrained/missing.safetensors", "model.pretrained: "
                                                               "'data/pretrained/missing.safetensors': no such file"),
    ("model.head", "cosine", "model.head: 'cosine': loss 'ce' is not a cosine-margin loss"),
    ("model.head", "arcface", "model.head: 'arcface': unknown classifier head 'arcface'; valid choices: causal, "
                              "cosine, linear"),
    ("train.optimizer", "adamx", "train.optimizer: 'adamx': unknown optimizer 'adamx'; valid choices: "),
    ("stage2.method", "tde", "stage2.method: 'tde': needs the causal head of stage 1: set model.head: causal"),
    ("stage2.ensemble.t_new", 0, "stage2.ensemble.t_new: 0: must be > 0"),
    ("stage2.train_views", -1, "stage2.train_views: -1: must be >= 0"),
    ("train.layer_decay", 1.5, "train.layer_decay: 1.5: must be <= 1"),
])
def test_fine_tuning_params_fail_before_training(path, value, message):
    assert error_of(with_value(path, value)).startswith(message)


def test_ldam_needs_the_cosine_head_and_optimizer_blocks_are_checked():
    params = with_value("loss", "ldam")
    assert error_of(params) == ("model.head: 'linear': loss 'ldam' trains LDAM's cosine classifier: "
                                "set model.head: cosine")
    params["model"]["head"] = "cosine"
    assert validate_params(params).model.head == "cosine"
    params = with_value("train.optimizer", "adamw")
    params["optimizers"]["adamw"]["momentum_x"] = 1
    assert error_of(params).startswith("optimizers.adamw: ")
    assert "takes no parameter 'momentum_x'" in error_of(params)


def test_stages_after_stage1_skip_the_optimizer_checks_and_timm_but_prepare_fails_on_them(tmp_path):
    """The optimizer checks are the only ones that import timm (seconds of start-up in every stage); the stages after
    stage 1 leave them out (stage_main's check_optimizer=False), prepare and stage 1 keep them. Validation alone
    imports neither timm nor scikit-learn (whose metrics module the stage-2 registry reaches)."""
    bad = with_value("train.optimizer", "adamx")
    assert validate_params(bad, check_optimizer=False).train.optimizer == "adamx"
    bad_kwargs = with_value("train.optimizer", "adamw")
    bad_kwargs["optimizers"]["adamw"]["momentum_x"] = 1
    assert validate_params(bad_kwargs, check_optimizer=False).train.optimizer == "adamw"

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    probe = ("import sys; from ltpipe.config import load_validated_params; "
             "load_validated_params(check_optimizer=False); "
             "print(sorted({'timm', 'torchvision', 'sklearn'} & set(sys.modules)))")
    imported = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, env=env,
                              check=True).stdout.strip()
    assert imported == "[]"

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad))
    out = subprocess.run([sys.executable, "-m", "stages.prepare", "--out", "prepared"], cwd=tmp_path,
                         capture_output=True, text=True, env=env)
    assert out.returncode == 1 and out.stderr.startswith("error: train.optimizer: 'adamx': unknown optimizer"), \
        out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]
    checks = {path.stem: "check_optimizer=False" in path.read_text() for path in (ROOT / "stages").glob("[!_]*.py")}
    assert checks == {"prepare": False, "train_backbone": False, "extract_features": True,
                      "retrain_classifier": True, "evaluate": True}


# ------------------------------------------------------------------------------------------------ task fit
def multilabel_params(**updates):
    """The multi-label demo recipe with `updates` (dotted keys) on top."""
    params = compose_params(["recipe=multilabel_digits"], ROOT / "conf")
    for path, value in updates.items():
        params = with_value(path, value, params)
    return params


def test_multilabel_recipe_is_valid_and_fits_its_task():
    params = validate_params(multilabel_params())
    assert (params.task, params.dataset.name, params.stage2.method) == ("multilabel", "mosaic_digits", "crt")
    assert (params.stage2.crt.sampler, params.train.mixer) == ("class_aware", "none")


@pytest.mark.parametrize("path, value, message", [
    ("loss", "ce", "loss: 'ce': does not fit task 'multilabel'; valid choices for multilabel: asl, bce, cb_bce, db, "
                   "focal_bce"),
    ("train.sampler", "sqrt", "train.sampler: 'sqrt': does not fit task 'multilabel'; valid choices for multilabel: "
                              "class_aware, instance"),
    ("train.mixer", "mixup", "train.mixer: 'mixup': does not fit task 'multilabel'; valid choices for multilabel: "
                             "none"),
    ("stage2.method", "bbn", "stage2.method: 'bbn': does not fit task 'multilabel'; valid choices for multilabel: "
                             "crt, lws, ncm, none, tau_norm, tde"),
    ("stage2.crt.loss", "focal", "stage2.crt.loss: 'focal': does not fit task 'multilabel'; valid choices for "
                                 "multilabel: asl, bce, cb_bce, db, focal_bce"),
    ("stage2.crt.sampler", "reversed", "stage2.crt.sampler: 'reversed': does not fit task 'multilabel'"),
    ("dataset.name", "cifar10", "dataset.name: 'cifar10': does not fit task 'multilabel'; valid choices for "
                                "multilabel: coco, label_csv, mosaic_digits"),
    ("imbalance.profile", "exp", "imbalance.profile: 'exp': does not fit task 'multilabel'; valid choices for "
                                 "multilabel: pareto, none"),
    ("stage2.ensemble.enabled", True, "stage2.ensemble.enabled: True: does not fit task 'multilabel'"),
])
def test_a_choice_that_does_not_fit_the_task_is_one_line_naming_the_valid_choices(path, value, message):
    assert error_of(multilabel_params(**{path: value})) .startswith(message)


def test_multilabel_choices_do_not_fit_the_multiclass_task():
    lines = error_of(with_value("loss", "db")).splitlines()
    assert lines == ["loss: 'db': does not fit task 'multiclass'; valid choices for multiclass: balanced_softmax, "
                     "cb_ce, cb_focal, cb_focal_softmax, cb_softmax_bce, ce, feabal, focal, gml, lade, las, ldam, "
                     "logit_adjust"]
    assert "dataset.name: 'mosaic_digits': does not fit task 'multiclass'" in error_of(
        with_value("dataset.name", "mosaic_digits"))


def test_switching_only_the_task_lists_every_choice_to_change():
    lines = error_of(with_value("task", "multilabel")).splitlines()
    assert [line.split(":")[0] for line in lines] == ["dataset.name", "loss", "stage2.crt.sampler", "stage2.crt.loss",
                                                      "imbalance.profile"]
    assert error_of(with_value("task", "multi")).startswith(
        "task: 'multi': unknown task 'multi'; valid choices: multiclass, multilabel")


def test_voc_lt_recipe_holds_the_db_config():
    voc = validate_params(compose_params(["recipe=voc_lt_db"], ROOT / "conf"), check_files=False)
    assert (voc.task, voc.loss, voc.dataset.name, voc.dataset.label_csv.image_size) == ("multilabel", "db",
                                                                                      "label_csv", 224)
    assert (voc.model.backbone, voc.model.freeze_stages, voc.model.pretrained) == (
        "resnet50", 1, "data/pretrained/resnet50.safetensors")
    assert (voc.train.lr, voc.train.batch_size, voc.train.epochs, voc.train.milestones) == (0.02, 32, 8, [5, 7])
    assert (voc.train.sampler, voc.samplers.class_aware.samples_per_class, voc.samplers.class_aware.reduce) == (
        "class_aware", 3, 4)
    assert (voc.imbalance.profile, voc.imbalance.n_max) == ("pareto", 800)
    with pytest.raises(ConfigError, match="model.pretrained: 'data/pretrained/resnet50.safetensors': no such file"):
        validate_params(compose_params(["recipe=voc_lt_db"], ROOT / "conf"))  # the stages check the file


def test_every_task_tag_names_a_task_and_every_stage_handles_every_task():
    from ltpipe.classifier import STAGE2
    from ltpipe.data.prepare import SPLITTERS
    from ltpipe.data.sources import SOURCES
    from ltpipe.evaluate import REPORTS
    from ltpipe.losses import LOSSES
    from ltpipe.mixing import MIXERS
    from ltpipe.samplers import SAMPLERS
    from ltpipe.tasks import TASKS

    tasks = TASKS.names()
    assert tasks == ["multiclass", "multilabel"]
    for registry in (SOURCES, LOSSES, SAMPLERS, MIXERS, STAGE2):
        assert registry.task_tags() == set(tasks), registry.kind
        assert all(registry.names(task) for task in tasks), registry.kind
    assert SPLITTERS.names() == REPORTS.names() == tasks
