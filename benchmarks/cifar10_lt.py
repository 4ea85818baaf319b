"""Reproduce the published CIFAR-10-LT (IF=100, ResNet-32) numbers with a recipe, through the real pipeline.

In a persistent work folder (a git clone of this repository plus the unpacked shared CIFAR-10 copy):
1. `dvc exp run -S recipe=<recipe>`: prepare, the recipe's stage 1 (200 epochs: hours on a CPU; an interrupted run
   resumes from its last finished epoch when this script is started again), stage 2, evaluate;
2. every stage-2 method on the cached stage 1, once per seed (`stage2.seed`), which never retrains stage 1;
3. a markdown table per method: our top-1 (mean +- std over the seeds), many / medium / few, the published number
   beside it (../shared/NOTES.md) and the difference; with date, machine, commit and wall times.

Run from the repository root:
    python benchmarks/cifar10_lt.py --recipe cifar_lt_ce [--methods none crt ...] [--seeds 0 1 2] [--workdir DIR]
    python benchmarks/cifar10_lt.py --recipe ldam_drw --methods none
`-S key=value` arguments after `--` go to every `dvc exp run` (e.g. `-- -S train.epochs=10` for a smoke run).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared/data/cifar10-jpg.tar.gz"
METHODS = ["none", "crt", "tau_norm", "lws", "ncm", "bbn", "weight_balancing", "mislas"]
# Published top-1 (%) for CIFAR-10-LT IF=100, ResNet-32, as collected in ../shared/NOTES.md, by (recipe, method).
PUBLISHED = {
    ("cifar_lt_ce", "none"): (70.4, "CE (Cao et al., NeurIPS 2019)"),
    ("cifar_lt_ce", "crt"): (75.0, "cRT"),
    ("cifar_lt_ce", "tau_norm"): (72.7, "tau-norm"),
    ("cifar_lt_ce", "lws"): (72.6, "LWS"),
    ("cifar_lt_ce", "bbn"): (79.8, "BBN end to end (Zhou et al., CVPR 2020); ours is frozen-feature"),
    ("cifar_lt_ce", "mislas"): (82.1, "MiSLAS with its mixup stage 1 (recipe mislas), not CE"),
    ("ldam_drw", "none"): (77.0, "LDAM-DRW (Cao et al., NeurIPS 2019)"),
    ("mislas", "mislas"): (82.1, "MiSLAS (Zhong et al., CVPR 2021)"),
    ("bbn", "bbn"): (79.8, "BBN end to end (Zhou et al., CVPR 2020); ours is frozen-feature"),
    ("tde", "tde"): (80.6, "De-confound-TDE (Tang et al., NeurIPS 2020; mean of 2 runs)"),
    ("tde", "none"): (71.7, "De-confound, the causal head without TDE (Tang et al.)"),
}
# Stage-2 methods with no randomness: one run per stage 1.
DETERMINISTIC = {"none", "ncm", "tau_norm", "tde"}
GROUPS = ("accuracy", "many_shot", "medium_shot", "few_shot", "balanced_accuracy", "min_recall")


def sh(cmd: list[str], cwd: Path, env: dict, log: Path) -> None:
    """Run with its output streamed into `log` (a stage-1 run shows its progress there while it trains: `tail -f`);
    exit on failure (the experiment can be resumed by running again)."""
    with log.open("a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        code = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if code:
        sys.exit(f"{' '.join(cmd)} failed (exit {code}); see {log}\n{log.read_text()[-3000:]}")


def setup(workdir: Path, archive: Path, env: dict, log: Path) -> Path:
    """The work folder: a clone of this repository (at its HEAD) and the unpacked data; kept between runs."""
    repo, data = workdir / "repo", workdir / "cifar10-jpg"
    workdir.mkdir(parents=True, exist_ok=True)
    if not data.is_dir():
        subprocess.run(["tar", "xzf", str(archive), "-C", str(workdir)], check=True)
    if not repo.is_dir():
        subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
        sh(["dvc", "config", "core.analytics", "false"], repo, env, log)
    return repo


def provenance(repo: Path) -> list[str]:
    """The lines every benchmark report starts with: command, date, machine and the commit of `repo`."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
    return [f"command: {' '.join([Path(sys.executable).name] + sys.argv)}",
            f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}",
            f"machine: {platform.platform()} | {os.cpu_count()} CPUs", f"commit: {commit.stdout.strip()}"]


def run_experiment(repo: Path, name: str, sets: list[str], env: dict, log: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    sh(["dvc", "exp", "run", "-n", name, *sets], repo, env, log)
    return json.loads((repo / "metrics/metrics.json").read_text()), time.perf_counter() - start


def summary(values: list) -> str:
    values = [100 * v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def table(recipe: str, results: dict) -> str:
    lines = ["| stage 2 | top-1 (%) | many | medium | few | balanced | min recall | published | diff | source |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for method, runs in results.items():
        cells = [summary([r[g] for r in runs]) for g in GROUPS]
        published, source = PUBLISHED.get((recipe, method), (None, ""))
        mean = statistics.mean(100 * r["accuracy"] for r in runs)
        diff = f"{mean - published:+.2f}" if published is not None else "-"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {published if published is not None else '-'} | "
                     f"{diff} | {source} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="cifar_lt_ce")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="stage-2 seeds (stage 1 uses seed 0)")
    parser.add_argument("--archive", type=Path, default=ARCHIVE)
    parser.add_argument("--workdir", type=Path, help="default: ~/.cache/ltpipe/bench/<recipe>")
    parser.add_argument("extra", nargs="*", help="extra `-S key=value` for every experiment (after --)")
    args = parser.parse_args()
    if not args.archive.is_file():
        sys.exit(f"{args.archive} not found (the shared CIFAR-10 JPEG archive)")
    workdir = args.workdir or Path.home() / ".cache/ltpipe/bench" / args.recipe
    log = workdir / "dvc.log"
    env = dict(os.environ, DVC_NO_ANALYTICS="1", LTPIPE_RESUME_DIR=str(workdir / "resume"))
    repo = setup(workdir, args.archive, env, log)
    env["PYTHONPATH"] = str(repo)
    base = ["-S", f"recipe={args.recipe}", "-S", f"dataset.imagefolder.root={workdir / 'cifar10-jpg'}", *args.extra]
    header = [f"recipe: {args.recipe}; extra: {' '.join(args.extra) or '-'}", *provenance(repo),
              f"progress: tail -f {log}"]
    print("\n".join(header), flush=True)

    results: dict = {}
    walls = []
    for method in args.methods:
        for seed in args.seeds:
            sets = base + ["-S", f"stage2.method={method}", "-S", f"stage2.seed={seed}"]
            metrics, wall = run_experiment(repo, f"{args.recipe}-{method}-s{seed}".replace("_", "-"), sets, env, log)
            results.setdefault(method, []).append(metrics)
            walls.append(f"{method} seed {seed}: {wall:.0f} s")
            print(f"{method} seed {seed}: top-1 {metrics['accuracy']:.4f} ({wall:.0f} s)", flush=True)
            if method in DETERMINISTIC:
                break
    report = "\n".join(header + ["wall times: " + "; ".join(walls), "", table(args.recipe, results), ""])
    (workdir / "results.md").write_text(report)
    print("\n" + report)


if __name__ == "__main__":
    main()
