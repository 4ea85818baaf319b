"""`ltpipe` console script: `report` (compare experiments), `predict` (classify image files) and `validate`
(check params.yaml)."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional



def _report(args: argparse.Namespace) -> int:
    from ltpipe import report

    if args.compare:
        table = report.compare_experiments(args.repo, *args.compare)
    else:
        table = report.experiments_table(report.exp_show_json(args.repo))
    sys.stdout.write(report.format_table(table, args.format))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ltpipe.predict import format_prediction, load_predictor

    predictions, errors = load_predictor(args.model_dir, args.device).predict(args.images, top_k=args.top_k)
    for prediction in predictions:
        print(format_prediction(prediction))
    for path, reason in errors.items():
        print(f"error: {path}: {reason}", file=sys.stderr)
    return 1 if errors else 0


def _validate(args: argparse.Namespace) -> int:
    from ltpipe.config import load_validated_params
    from ltpipe.recipes import compose_params, recipe_names
    from ltpipe.schema import validate_params

    if args.recipe is None:
        load_validated_params(args.params)
        print(f"OK: {args.params} is valid")
        return 0
    for name in recipe_names(args.conf) if args.recipe == "all" else [args.recipe]:
        # The files a recipe names (pretrained weights) belong to the machine it runs on: the stages check them.
        validate_params(compose_params([f"recipe={name}"], args.conf), f"recipe {name}", check_files=False)
        print(f"OK: recipe {name} composes to valid params (files it names are checked when it runs)")
    return 0


def _compose(args: argparse.Namespace) -> int:
    from ltpipe.io import write_text
    from ltpipe.recipes import compose_yaml
    from ltpipe.schema import validate_params
    import yaml

    text = compose_yaml(args.overrides, args.conf)
    validate_params(yaml.safe_load(text), "the composed params")
    write_text(args.out, text)
    print(f"wrote {args.out} ({' '.join(args.overrides) or 'defaults'})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ltpipe.report import FORMATS

    parser = argparse.ArgumentParser(prog="ltpipe", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors (or set LTPIPE_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    rep = commands.add_parser("report", help="table of all DVC experiments, or a per-class comparison of two")
    rep.add_argument("--format", choices=FORMATS, default="markdown")
    rep.add_argument("--repo", default=".", help="the DVC repository (default: the current folder)")
    rep.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"),
                     help="per-class accuracy of two experiments, commits or 'workspace', with the delta NEW - OLD")
    rep.set_defaults(run=_report)

    pred = commands.add_parser("predict", help="top-k classes of image files with the trained pipeline")
    pred.add_argument("images", nargs="+", metavar="IMAGE")
    pred.add_argument("--model-dir", default=".", help="pipeline folder holding artifacts/ and data/prepared")
    pred.add_argument("--top-k", type=int, default=5)
    pred.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU) | cpu | cuda | cuda:N | mps")
    pred.set_defaults(run=_predict)

    val = commands.add_parser("validate", help="check params.yaml (names, keyword arguments, values), or a recipe")
    val.add_argument("params", nargs="?", default="params.yaml")
    val.add_argument("--recipe", help="check what conf/recipe/RECIPE.yaml composes to instead ('all': every recipe)")
    val.add_argument("--conf", default="conf", help="the Hydra config folder (default: conf)")
    val.set_defaults(run=_validate)

    comp = commands.add_parser("compose", help="write params.yaml from conf/ as `dvc exp run` would (for dvc repro)")
    comp.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                      help="Hydra overrides, e.g. recipe=ldam_drw train.epochs=10")
    comp.add_argument("--conf", default="conf", help="the Hydra config folder (default: conf)")
    comp.add_argument("--out", default="params.yaml")
    comp.set_defaults(run=_compose)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from ltpipe.config import DEBUG_ENV, run_cli

    args = build_parser().parse_args(argv)
    if args.debug:
        os.environ[DEBUG_ENV] = "1"
    status = []
    failed = run_cli(lambda: status.append(args.run(args)))
    return failed or status[0]


if __name__ == "__main__":
    sys.exit(main())
