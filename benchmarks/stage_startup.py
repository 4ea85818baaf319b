"""What each DVC stage pays before its work: a fresh interpreter importing the stage's entry module and validating
the committed params.yaml, as `stage_main` does, with every check and without the stage-1 optimizer checks
(`check_optimizer=False`, what extract_features, retrain_classifier and evaluate use: those checks are the only ones
that import timm). On tiny data (the tests, the quick start) this start-up is most of a stage's time.

Run from the repository root:
    python benchmarks/stage_startup.py [--repeats 5]
Prints the median wall time per stage and mode, and which of the heavy libraries the process had imported.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from cifar10_lt import provenance

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("timm", "torchvision", "torch._dynamo", "sklearn", "pandas")
PROBE = """import sys
import stages.{stage}
from ltpipe.config import load_validated_params
load_validated_params(check_optimizer={check})
print(",".join(m for m in {heavy!r} if m in sys.modules))
"""


def time_probe(code: str, cwd: Path) -> tuple[float, str]:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - start, out.stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    stages = list(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    versions = ", ".join(f"{name} {importlib.metadata.version(name)}" for name in ("torch", "torchvision", "timm"))
    print("\n".join(provenance(ROOT)))
    print(f"Python {platform.python_version()}, {versions}; median of {args.repeats} runs")
    print("| stage | all checks (s) | check_optimizer=False (s) | heavy modules imported (all checks / without) |")
    print("|---|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(ROOT / "params.yaml", tmp)
        for stage in stages:
            row = []
            for check in (True, False):
                code = PROBE.format(stage=stage, check=check, heavy=HEAVY)
                runs = [time_probe(code, Path(tmp)) for _ in range(args.repeats)]
                row.append((statistics.median(t for t, _ in runs), runs[0][1] or "-"))
            print(f"| {stage} | {row[0][0]:.2f} | {row[1][0]:.2f} | {row[0][1]} / {row[1][1]} |", flush=True)


if __name__ == "__main__":
    main()
