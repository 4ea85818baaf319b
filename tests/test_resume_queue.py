"""Resume survives DVC's temporary experiment folders: a queued experiment killed in stage 1 resumes from its last
finished epoch when it is queued again (the checkpoint lives in LTPIPE_RESUME_DIR, keyed by the run's fingerprint)."""
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from conftest import checkout_baseline, run

pytestmark = pytest.mark.slow
SETS = "-S train.epochs=60 -S train.lr=0.031 -S train.warmup_epochs=1"


def wait_for(condition, timeout, what, cwd=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        # not faster: each `dvc queue status` is a Python start-up, and the training under test needs the cores
        time.sleep(1.0)
    status = run("dvc queue status", cwd, check=False).stdout if cwd else ""
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{status}")


def checkpoint_epoch(resume: Path):
    for path in resume.glob("stage1-*.pt"):
        try:
            return path, torch.load(path, weights_only=False)["epoch"]
        except Exception:  # being replaced right now
            return None
    return None


def project_pids(tmp: Path, marker: bytes):
    """Processes whose command line holds `marker`, running in this project's folders (never another training or
    another project's queue on the machine)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes() and \
                    str((proc / "cwd").resolve()).startswith(str(tmp.resolve())):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def start_queue(tmp: Path) -> None:
    """`dvc queue start`, its output to a file: the worker it detaches inherits the output, so a captured pipe would
    stay open (and the call block) until the worker exits, i.e. until the queue has run."""
    with (tmp.parent / "queue-start.log").open("w") as log:
        env = dict(os.environ, PYTHONPATH=str(tmp), DVC_NO_ANALYTICS="1")
        subprocess.run(["dvc", "queue", "start"], cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)


def queue_idle(tmp):
    status = run("dvc queue status", tmp, check=False).stdout
    return "Running" not in status and "Queued" not in status


def test_killed_queued_experiment_resumes_from_its_checkpoint(project, resume_dir):
    tmp, _ = project
    try:
        run(f"dvc exp run --queue -n first {SETS}", tmp)
        start_queue(tmp)
        _, epoch = wait_for(lambda: (c := checkpoint_epoch(resume_dir)) and c[1] >= 3 and c, 300, "epoch 3 checkpoint",
                            tmp)
        pids = project_pids(tmp, b"stages.train_backbone")
        assert pids, "stage 1 is running in the queue worker"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: queue_idle(tmp), 120, "the killed task to end")
        assert "Failed" in run("dvc queue status", tmp).stdout
        path, killed_at = wait_for(lambda: checkpoint_epoch(resume_dir), 5, "the checkpoint to survive the failed task")
        assert killed_at >= epoch
        # DVC's idle worker shuts itself down about 10 s after the queue empties; a `dvc queue start` while it is
        # still alive spawns no new worker, and the dying one never takes the new task, which then waits forever.
        wait_for(lambda: not project_pids(tmp, b"queue-worker"), 120, "the idle queue worker to exit", tmp)

        run(f"dvc exp run --queue -n second {SETS}", tmp)
        start_queue(tmp)
        wait_for(lambda: queue_idle(tmp), 600, "the re-queued experiment")
        logs = run("dvc queue logs second", tmp).stdout
        assert f"resuming stage 1 from epoch {killed_at}/60" in logs, logs[-3000:]
        assert "Success" in run("dvc queue status", tmp).stdout
        assert not path.exists(), "a finished run deletes its checkpoint"
        steps = run("dvc exp show --json", tmp).stdout
        assert "second" in steps
    finally:
        run("dvc queue stop --kill", tmp, check=False)
        run("dvc queue remove --all", tmp, check=False)
        for path in resume_dir.glob("stage1-*.pt"):
            path.unlink()
        checkout_baseline(tmp)
