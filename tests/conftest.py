"""Shared fixtures: `project` is a temporary copy of the real pipeline after `dvc repro` with tiny params."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ltpipe.train.checkpoint import RESUME_ENV

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "train.epochs": 2,
    "train.warmup_epochs": 1,
    "train.batch_size": 64,
    "model.backbone": "resnet8",
    "stage2.crt.epochs": 2,
}


@pytest.fixture(scope="session", autouse=True)
def resume_dir(tmp_path_factory):
    """Stage-1 checkpoints of the test session go to a folder of their own, never the user's cache; under pytest's
    base temp, so pytest cleans it up with the other test folders. Set in the environment, which the DVC
    subprocesses and queue workers inherit."""
    path = tmp_path_factory.mktemp("resume")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(RESUME_ENV, str(path))
        yield path


def run(cmd, cwd, check=True):
    env = dict(os.environ, PYTHONPATH=str(cwd), DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, shell=isinstance(cmd, str))
    if check and out.returncode:
        raise AssertionError(f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out


def set_params(path: Path, updates):
    params = yaml.safe_load(path.read_text())
    for key, value in updates.items():
        *parents, leaf = key.split(".")
        node = params
        for p in parents:
            node = node[p]
        assert leaf in node, key
        node[leaf] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def set_defaults(root: Path, updates):
    """Change default values where `dvc exp run` composes them from (conf/config.yaml) and in params.yaml."""
    set_params(root / "conf/config.yaml", updates)
    set_params(root / "params.yaml", updates)


def make_project(tmp: Path, defaults) -> Path:
    """A git + DVC repository in `tmp` holding a copy of the pipeline, with `defaults` set in conf/config.yaml and
    params.yaml, committed."""
    for name in ("dvc.yaml", "params.yaml", ".gitignore"):
        shutil.copy(ROOT / name, tmp / name)
    for name in ("stages", "ltpipe", "conf", "data/pretrained"):
        shutil.copytree(ROOT / name, tmp / name, ignore=shutil.ignore_patterns("__pycache__"))
    set_defaults(tmp, defaults)
    run("git init -q && dvc init -q && dvc config core.analytics false && dvc config hydra.enabled true", tmp)
    shutil.copytree(ROOT / ".dvc/plots", tmp / ".dvc/plots")  # the project's custom plot templates
    run("git add -A && git commit -qm init", tmp)
    return tmp


@pytest.fixture(scope="session")
def project(tmp_path_factory):
    tmp = make_project(tmp_path_factory.mktemp("pipeline"), TINY)
    repro = run("dvc repro", tmp)
    run("git add -A && git commit -qm baseline", tmp)
    return tmp, repro.stdout + repro.stderr


def stages_ran(output: str):
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def plots_json(root) -> dict:
    """`dvc plots show --json` of the workspace; every declared plot must load (no "errors" entry)."""
    shown = json.loads(run("dvc plots show --json", root).stdout)
    assert not shown.get("errors"), shown.get("errors")
    return shown["data"]


def checkout_baseline(root):
    """Tracked files and DVC outputs back to the baseline commit: a failed experiment leaves a half-emptied
    workspace (DVC removes a stage's outputs before running it)."""
    run("git checkout -q -- . && dvc checkout -q --force", root)
