"""Compare experiments: one row per `dvc exp show` experiment with the long-tail metrics side by side, and a per-class
old-vs-new table of two experiments.

The parsing functions take already-parsed JSON / DataFrames, so they are tested without DVC; only `exp_show_json` and
`read_per_class` talk to DVC. Per-class tables come from `dvc.api.read(..., rev=<experiment>)`: `dvc exp show` carries
scalar metrics only, and `dvc plots diff --json` returns every value as a string inside a Vega spec.
"""
from __future__ import annotations

import io
import json
import math
import subprocess
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import pandas as pd

from ltpipe.errors import ConfigError

KEY_PARAMS = ("loss", "stage2.method", "model.backbone", "dataset.name", "imbalance.factor", "seed")
KEY_METRICS = ("accuracy", "many_shot", "medium_shot", "few_shot", "balanced_accuracy", "geometric_mean_recall",
               "min_recall", "logit_adjusted_accuracy", "nll", "ece")
# The key metrics of each task's evaluate report; a table shows those of the tasks its experiments ran.
TASK_METRICS = {"multiclass": KEY_METRICS,
                "multilabel": ("mAP", "head_mAP", "medium_mAP", "tail_mAP", "micro_f1", "macro_f1")}
PER_CLASS_PATH = "metrics/per_class.csv"
PER_CLASS_COLUMNS = ("class", "train_count", "shot", "accuracy")
WORKSPACE = "workspace"
FORMATS = ("markdown", "csv")


def exp_show_json(repo: str = ".") -> List[Dict[str, Any]]:
    """Parsed `dvc exp show --json` of the DVC repo `repo` (run in that folder)."""
    try:
        out = subprocess.run(["dvc", "exp", "show", "--json"], cwd=repo, capture_output=True, text=True)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise ConfigError(f"cannot run `dvc exp show` in {repo!r}: {exc}") from exc
    if out.returncode:
        raise ConfigError(f"`dvc exp show --json` failed in {repo!r} (a DVC repo with at least one git commit is "
                          f"needed): {out.stderr.strip() or out.stdout.strip()}")
    try:
        return json.loads(out.stdout)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"`dvc exp show --json` in {repo!r} printed something that is not JSON: {exc}") from exc


def iter_experiments(exp_show: Sequence[Dict[str, Any]]) -> Iterator[Tuple[Dict[str, Any], str, Optional[str]]]:
    """(entry, state, baseline name) for the workspace, each baseline commit and each of its experiments."""
    for baseline in exp_show or []:
        if not isinstance(baseline, dict):
            continue
        yield baseline, WORKSPACE if baseline.get("rev") == WORKSPACE else "baseline", None
        for exp_range in baseline.get("experiments") or []:
            executor = exp_range.get("executor") or {}
            for exp in exp_range.get("revs") or []:
                # A finished experiment has no executor; queued/running/failed ones carry its state.
                yield exp, executor.get("state") or "done", _display_name(baseline)


def experiments_table(exp_show: Sequence[Dict[str, Any]], params: Sequence[str] = KEY_PARAMS,
                      metrics: Optional[Sequence[str]] = None, differing: bool = True) -> pd.DataFrame:
    """One row per experiment: experiment, rev, state, baseline, the `params`, then (with `differing`) every other
    param whose value is not the same in all rows (e.g. train.epochs, train.lr), then the `metrics` (dotted names
    into nested files; missing or null values are NaN; default: the key metrics of the tasks the experiments ran).
    Values from every params / metrics file are merged."""
    entries = list(iter_experiments(exp_show))
    all_params = [_merged_file_data((entry.get("data") or {}).get("params")) for entry, _, _ in entries]
    if metrics is None:
        tasks = {found.get("task", "multiclass") for found in all_params if found} or {"multiclass"}
        metrics = [m for task, names in TASK_METRICS.items() if task in tasks for m in names]
    if differing:
        keys = dict.fromkeys(k for found in all_params for k in found if k not in params)
        present = [found for found in all_params if found]  # a failed experiment has no params to compare
        params = [*params, *(k for k in keys if len({json.dumps(found.get(k), sort_keys=True, default=str)
                                                      for found in present}) > 1)]
    rows = []
    for (entry, state, baseline), found_params in zip(entries, all_params):
        data = entry.get("data") or {}
        found_metrics = _merged_file_data(data.get("metrics"))
        if entry.get("error"):
            state = "error"
        row = {"experiment": _display_name(entry), "rev": _short_rev(entry.get("rev")), "state": state,
               "baseline": baseline}
        row.update({p: found_params.get(p) for p in params})
        row.update({m: _number(found_metrics.get(m)) for m in metrics})
        rows.append(row)
    return pd.DataFrame(rows, columns=["experiment", "rev", "state", "baseline", *params, *metrics])


def experiment_names(exp_show: Sequence[Dict[str, Any]]) -> List[str]:
    """Every name `compare_experiments` accepts: "workspace", baseline names/revs and experiment names."""
    return list(dict.fromkeys(_display_name(entry) for entry, _, _ in iter_experiments(exp_show)))


def read_per_class(repo: str, rev: str) -> pd.DataFrame:
    """metrics/per_class.csv of one experiment, commit or "workspace", read through DVC's cache."""
    import dvc.api
    from dvc.exceptions import DvcException
    from scmrepo.exceptions import SCMError

    try:
        text = dvc.api.read(PER_CLASS_PATH, repo=repo, rev=None if rev == WORKSPACE else rev)
    except (DvcException, SCMError, FileNotFoundError) as exc:
        valid = ", ".join(experiment_names(exp_show_json(repo)))
        raise ConfigError(f"cannot read {PER_CLASS_PATH} of {rev!r} in {repo!r} ({type(exc).__name__}: {exc}); "
                          f"valid experiments: {valid}") from exc
    return parse_per_class(text, rev)


def parse_per_class(text: str, rev: str = "?") -> pd.DataFrame:
    """A per_class.csv as written by the evaluate stage; ConfigError naming the missing columns otherwise."""
    table = pd.read_csv(io.StringIO(text))
    missing = [c for c in PER_CLASS_COLUMNS if c not in table.columns]
    if missing:
        raise ConfigError(f"{PER_CLASS_PATH} of {rev!r} lacks column(s) {', '.join(missing)}; it has "
                          f"{', '.join(map(str, table.columns))}, needs {', '.join(PER_CLASS_COLUMNS)} "
                          f"(rerun its evaluate stage)")
    return table


def compare_per_class(old: pd.DataFrame, new: pd.DataFrame) -> pd.DataFrame:
    """Classes matched by name, in the new table's row order (most frequent first), then classes only in the old one:
    rank, class, shot, train_count_old/new, accuracy_old/new and delta = new - old (NaN where either is missing)."""
    order = pd.DataFrame({"class": list(dict.fromkeys([*new["class"], *old["class"]]))})
    # Left merges keep `order`'s row order (an outer merge would sort the class names).
    columns = list(PER_CLASS_COLUMNS)
    merged = (order.merge(new[columns], on="class", how="left")
              .merge(old[columns], on="class", how="left", suffixes=("", "_old")))
    return pd.DataFrame({
        "rank": range(len(merged)),
        "class": merged["class"],
        "shot": merged["shot"].fillna(merged["shot_old"]),
        "train_count_old": merged["train_count_old"].astype("Int64"),
        "train_count_new": merged["train_count"].astype("Int64"),
        "accuracy_old": merged["accuracy_old"],
        "accuracy_new": merged["accuracy"],
        "delta": merged["accuracy"] - merged["accuracy_old"],
    })


def compare_experiments(repo: str, old: str, new: str) -> pd.DataFrame:
    return compare_per_class(read_per_class(repo, old), read_per_class(repo, new))


def format_table(table: pd.DataFrame, fmt: str = "markdown", decimals: int = 4) -> str:
    """`markdown` (numbers rounded to `decimals`, missing values as "-") or `csv` (full precision, missing empty)."""
    if fmt == "csv":
        return table.to_csv(index=False, lineterminator="\n")
    if fmt == "markdown":
        return to_markdown(table, decimals)
    raise ConfigError(f"unknown report format {fmt!r}; valid choices: {', '.join(FORMATS)}")


def to_markdown(table: pd.DataFrame, decimals: int = 4) -> str:
    # Hand-rolled: pandas.DataFrame.to_markdown needs the optional `tabulate` package.
    header = [str(c) for c in table.columns]
    body = [[_cell(v, decimals) for v in row] for row in table.itertuples(index=False, name=None)]
    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    widths = [max([len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(header)]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if num else c.ljust(w)
                                 for c, w, num in zip(cells, widths, numeric)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2))
                          for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(header), rule, *map(line, body)]) + "\n"


def _cell(value: Any, decimals: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "-"
    if isinstance(value, float):
        return f"{value:.{decimals}f}"
    return str(value).replace("|", "\\|")


def _merged_file_data(files: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """{file: {"data": nested dict} | {"error": ...}} -> one flat {dotted.key: value} over the readable files."""
    flat: Dict[str, Any] = {}
    for result in (files or {}).values():
        data = result.get("data") if isinstance(result, dict) else None
        if isinstance(data, dict):
            for key, value in _flatten(data):
                flat.setdefault(key, value)
    return flat


def _flatten(node: Dict[str, Any], prefix: str = "") -> Iterator[Tuple[str, Any]]:
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _number(value: Any) -> float:
    """Metric values as floats; null, strings and lists are NaN (a failed or partial experiment)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


def _display_name(entry: Dict[str, Any]) -> str:
    return entry.get("name") or _short_rev(entry.get("rev"))


def _short_rev(rev: Optional[str]) -> str:
    return rev[:7] if rev and rev != WORKSPACE else (rev or "?")
