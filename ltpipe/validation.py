"""pydantic validation errors as one line per problem: key path, value, rule and, where they exist, the valid choices
or the nearest valid key (`train.epoch: unknown key; did you mean train.epochs?`)."""
from __future__ import annotations

import difflib
import re
from typing import Any, Iterable, List, Sequence, Tuple

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticCustomError

# pydantic's wording, reworded where it would confuse a params.yaml user ("dictionary", "Input should be").
_RULES = {
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "int_parsing": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "dict_type": "must be a mapping of keys to values",
    "model_type": "must be a mapping of keys to values",
    "model_attributes_type": "must be a mapping of keys to values",
    "mapping_type": "must be a mapping of keys to values",
    "none_required": "must be null",
}


def _model_at(model: type[BaseModel] | None, loc: Sequence[Any]) -> type[BaseModel] | None:
    """The nested model class that holds the key at `loc` (None when the path leaves the models)."""
    for part in loc:
        field = model.model_fields.get(part) if model is not None and isinstance(part, str) else None
        if field is None:
            return None
        model = _as_model(field.annotation)
    return model


def _as_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():  # Optional[Model]
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _path(prefix: str, loc: Iterable[Any]) -> str:
    parts = [str(p) for p in loc if not (isinstance(p, str) and (p.startswith("function-") or "[" in p))]
    return ".".join([prefix, *parts] if prefix else parts) or "(top level)"


def _rule(error: dict) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _RULES:
        return _RULES[kind]
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        return f"must be {op} {bound}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        return f"not a valid choice; valid choices: {', '.join(choices)}"
    message = error["msg"]
    for noise in ("Value error, ", "Assertion failed, "):
        message = message.replace(noise, "")
    return message


def _nearest(key: str, valid: Sequence[str]) -> List[str]:
    """The likeliest intended key: a close spelling, else a key that starts with (or is the start of) it."""
    return difflib.get_close_matches(key, valid, n=1, cutoff=0.6) or \
        [v for v in valid if v.startswith(key) or key.startswith(v)][:1]


def _lines(err: ValidationError, prefix: str, model: type[BaseModel] | None, base: Tuple[Any, ...] = ()) -> List[str]:
    lines = []
    for error in err.errors(include_url=False):
        loc = base + tuple(error["loc"])
        if error["type"] == "nested":
            # Raised by a validator for a block it validates itself: its own errors, under the block's path.
            here = _path(prefix, loc) if loc or prefix else ""
            lines.extend(f"{here}.{line}" if here else line for line in error["ctx"]["lines"])
            continue
        path = _path(prefix, loc)
        if error["type"] == "extra_forbidden":
            holder = _model_at(model, loc[:-1])
            valid = list(holder.model_fields) if holder is not None else []
            near = _nearest(str(loc[-1]), valid)
            parent = _path(prefix, loc[:-1]) if loc[:-1] or prefix else ""
            if near:
                hint = f"did you mean {parent + '.' if parent else ''}{near[0]}?"
            elif valid:
                hint = f"valid keys{' of ' + parent if parent else ''}: {', '.join(valid)}"
            else:
                hint = f"{parent or 'this block'} takes no keys"
            lines.append(f"{path}: unknown key; {hint}")
        elif error["type"] == "missing":
            lines.append(f"{path}: missing (required key)")
        else:
            lines.append(f"{path}: {error['input']!r}: {_rule(error)}")
    return lines


def format_validation_error(err: ValidationError, prefix: str, model: type[BaseModel] | None) -> str:
    """One line per problem, paths prefixed with `prefix` (e.g. "params.yaml" keys or "loss 'focal'")."""
    return "\n".join(dict.fromkeys(_lines(err, prefix, model)))


def nested_error(err: ValidationError, base: Tuple[Any, ...], model: type[BaseModel]) -> PydanticCustomError:
    """Re-raise a sub-block's ValidationError from a validator without losing its key paths."""
    lines = _lines(err, "", model, base)
    return PydanticCustomError("nested", "; ".join(lines), {"lines": lines})


def relation_error(path: str, value: Any, rule: str) -> PydanticCustomError:
    """A rule between keys (checked in a model validator), reported at `path` relative to the validated block."""
    line = f"{path}: {value!r}: {rule}"
    return PydanticCustomError("nested", line, {"lines": [line]})
