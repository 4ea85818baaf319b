"""What augmented train views (`stage2.train_views`) are worth to stage-2 methods, on one finished pipeline run.

Runs the library's own stages (extract_features, retrain_classifier, evaluate) on the stage 1 of a pipeline checkout
after `dvc repro` (e.g. a benchmarks/cifar10_lt.py work folder's repo/), for each number of views and each method and
stage-2 seed, into a separate output folder: the checkout, its DVC cache and its stage 1 are only read. Prints a
markdown table (test top-1, many / medium / few, mean ± std over the seeds) with date, machine, commit and wall times.

    python benchmarks/stage2_views.py --run /work/runs/mislas/repo --methods mislas crt --views 0 10 --seeds 0 1 2

`--set stage2.ncm.distance=cosine` (repeatable) changes a parameter of the run's params.yaml for these runs only.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml
from omegaconf import OmegaConf

from cifar10_lt import DETERMINISTIC, provenance, summary
from ltpipe.evaluate import evaluate
from ltpipe.features import extract_features
from ltpipe.schema import validate_params
from ltpipe.stage2 import retrain_classifier

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("accuracy", "many_shot", "medium_shot", "few_shot")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a pipeline checkout after `dvc repro`")
    parser.add_argument("--methods", nargs="+", default=["mislas", "crt"])
    parser.add_argument("--views", nargs="+", type=int, default=[0, 10], help="values of stage2.train_views")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="stage-2 seeds")
    parser.add_argument("--out", type=Path, default=Path("stage2_views"), help="output folder (features, heads)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. stage2.ncm.distance=cosine (YAML value)")
    args = parser.parse_args()
    stage1, prepared = args.run / "artifacts/stage1", args.run / "data/prepared"
    if not (stage1 / "model.safetensors").is_file() or not (prepared / "info.json").is_file():
        sys.exit(f"{args.run}: no artifacts/stage1/model.safetensors or data/prepared/info.json (run `dvc repro` first)")
    raw = yaml.safe_load((args.run / "params.yaml").read_text())
    raw["stage2"]["method"] = args.methods[0]  # the run's own method may not fit; each run below sets its own
    if args.set:  # OmegaConf's dotlist, as Hydra reads `-S` overrides; the schema checks the result
        raw = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(raw), OmegaConf.from_dotlist(args.set)))
    validate_params(raw, str(args.run / "params.yaml"))
    header = [*provenance(ROOT), f"stage 1: {args.run} (recipe {raw.get('recipe')}, seed {raw.get('seed')})"
              + "".join(f"; {a}" for a in args.set)]
    print("\n".join(header), flush=True)

    rows, walls = [], []
    for views in args.views:
        raw["stage2"]["train_views"] = views
        features = args.out / f"features_v{views}"
        start = time.perf_counter()
        extract_features(raw, stage1, prepared, features)
        walls.append(f"features with {views} views: {time.perf_counter() - start:.0f} s")
        print(walls[-1], flush=True)
        for method in args.methods:
            runs = []
            for seed in args.seeds:
                raw["stage2"].update(method=method, seed=seed)
                stage2 = args.out / f"{method}_v{views}_s{seed}"
                start = time.perf_counter()
                retrain_classifier(raw, prepared, stage1, features, stage2)
                evaluate(raw, prepared, stage2, stage2 / "metrics")
                runs.append(json.loads((stage2 / "metrics/metrics.json").read_text()))
                walls.append(f"{method} views {views} seed {seed}: {time.perf_counter() - start:.0f} s")
                print(f"{walls[-1]}: top-1 {runs[-1]['accuracy']:.4f}", flush=True)
                if method in DETERMINISTIC:
                    break
            rows.append(f"| {method} | {views} | " + " | ".join(summary([r[c] for r in runs]) for c in COLUMNS) + " |")
    report = "\n".join(header + ["wall times: " + "; ".join(walls), "",
                                 "| stage 2 | train views | top-1 (%) | many | medium | few |",
                                 "|---|---:|---:|---:|---:|---:|", *rows, ""])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(report)
    print("\n" + report)


if __name__ == "__main__":
    main()
