"""Runtime checks of factory keyword arguments against their `ltpipe.types` annotations.

The params schema validates params.yaml from the same signatures; this guards direct calls, so a range is written
once, in the signature, and never repeated as an inline check.
"""
from __future__ import annotations

import functools
import inspect
import typing
from typing import Any, Callable, Dict

from pydantic import TypeAdapter, ValidationError

from ltpipe.errors import ConfigError


def typed_kwargs(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Validate (and coerce, e.g. 1 -> 1.0) every keyword-only argument given to `fn` against its annotation;
    a bad value is a ConfigError naming the factory and the argument. Defaults are trusted (tests check them)."""
    hints = typing.get_type_hints(fn, include_extras=True)
    adapters: Dict[str, TypeAdapter] = {
        p.name: TypeAdapter(hints[p.name]) for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name in hints
    }

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name, value in kwargs.items():
            if name in adapters:
                try:
                    kwargs[name] = adapters[name].validate_python(value)
                except ValidationError as err:
                    reason = "; ".join(e["msg"] for e in err.errors())
                    raise ConfigError(f"{fn.__qualname__}: {name}={value!r} is invalid ({reason})") from None
        return fn(*args, **kwargs)

    return wrapper
