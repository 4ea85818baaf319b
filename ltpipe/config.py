"""Read and validate params.yaml once, up front: every stage calls `stage_main`, so a bad name or value of a later
stage fails in seconds, before an earlier stage spends hours training. Errors are one line per problem and exit 1;
`LTPIPE_DEBUG=1` (or `--debug`) shows the traceback."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from ltpipe.errors import ConfigError

DEBUG_ENV = "LTPIPE_DEBUG"


def read_params_file(path: str | os.PathLike = "params.yaml") -> Any:
    """The parsed YAML; a missing file or a syntax error is one ConfigError line with the position."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the params file ({exc.strerror or exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        context = getattr(exc, "context", None)
        raise ConfigError(f"{where}: YAML syntax error: {problem}{f' ({context})' if context else ''}") from None


def load_validated_params(path: str | os.PathLike = "params.yaml", *, check_optimizer: bool = True):
    """The typed, validated `Params` of a params file (see ltpipe.schema.validate_params)."""
    from ltpipe.schema import validate_params

    raw = read_params_file(path)
    return validate_params({} if raw is None else raw, str(path), check_optimizer=check_optimizer)


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() not in ("", "0", "false", "no")


def run_cli(fn: Callable[[], Any]) -> int:
    """Run `fn`; bad input (ConfigError) prints `error: ...` lines and returns 1, with the traceback only in debug."""
    try:
        fn()
        return 0
    except ConfigError as exc:
        if debug_enabled():
            raise
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 1


def stage_main(description: str, run, *flags: str, outputs: tuple = (), distributed_module: str | None = None,
               check_optimizer: bool = True) -> None:
    """The whole of a `stages/*.py` entry point: parse the path flags dvc.yaml passes, validate params.yaml, remove
    what an earlier killed run of this stage left behind in the folders of `outputs` (flags naming output paths),
    then call `run(params, *paths)` with the paths in the order of `flags`.

    With `distributed_module` (the stage's module name) and `runtime.nproc_per_node` > 1, the stage relaunches itself
    under torchrun, so `dvc repro` stays the one command. `check_optimizer=False`: the stages after stage 1 (see
    ltpipe.schema.validate_params); prepare keeps the check, so that a bad optimizer fails before any long work."""
    import argparse

    from ltpipe.io import remove_leftovers

    parser = argparse.ArgumentParser(description=description)
    for flag in flags:
        parser.add_argument(flag, required=True)
    parser.add_argument("--debug", action="store_true", help=f"show tracebacks (or set {DEBUG_ENV}=1)")
    args = vars(parser.parse_args())
    if args.pop("debug"):
        os.environ[DEBUG_ENV] = "1"
    paths = [args[flag.lstrip("-").replace("-", "_")] for flag in flags]

    def main() -> None:
        from ltpipe.runtime import launch_distributed, under_torchrun

        params = load_validated_params(check_optimizer=check_optimizer)
        nproc = params.runtime.nproc_per_node
        if distributed_module is not None and nproc > 1 and not under_torchrun():
            status.append(launch_distributed(nproc, distributed_module, sys.argv[1:]))
            return
        if os.environ.get("RANK", "0") == "0":
            for flag in outputs:
                remove_leftovers(args[flag.lstrip("-").replace("-", "_")])
        run(params, *paths)

    status = []
    failed = run_cli(main)
    sys.exit(failed or (status[0] if status else 0))
