"""Name -> factory registries (timm's habit): every method is selected by a plain name from params.yaml."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Iterable, Mapping

from ltpipe.errors import ConfigError


class Registry:
    """Maps names to factories; unknown names and unknown keyword arguments fail with the valid choices."""

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: Dict[str, Callable[..., Any]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable], Callable]:
        def wrap(fn: Callable) -> Callable:
            key = name or fn.__name__
            if key in self._factories:
                raise KeyError(f"{self.kind} {key!r} registered twice")
            self._factories[key] = fn
            return fn

        return wrap

    def names(self) -> list[str]:
        return sorted(self._factories)

    def __contains__(self, name: str) -> bool:
        return name in self._factories

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._factories:
            raise ConfigError(f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}")
        return self._factories[name]

    def check_kwargs(self, name: str, kwargs: Dict[str, Any], fixed: Iterable[str] = ()) -> None:
        """Fail early if `kwargs` holds a keyword the factory does not take (`fixed` are passed by the caller)."""
        params = inspect.signature(self.get(name)).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return
        allowed = [p for p in params if p not in set(fixed)]
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ConfigError(
                f"{self.kind} {name!r} takes no parameter {', '.join(map(repr, unknown))}; "
                f"valid parameters: {', '.join(allowed) or '(none)'}"
            )

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.check_kwargs(name, kwargs)
        return self.get(name)(*args, **kwargs)


def as_kwargs(where: str, value: Any) -> Dict[str, Any]:
    """A params.yaml block of keyword arguments ({} for null); anything but a mapping is a ConfigError."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"params.yaml: {where} must be a mapping of keyword arguments, got {value!r}")
    return dict(value)


def named_kwargs(section: Mapping[str, Any] | None, name: str, where: str = "params") -> Dict[str, Any]:
    """The keyword-argument block `section[name]` of params.yaml's per-method blocks ({} when absent)."""
    return as_kwargs(f"{where}.{name}", (section or {}).get(name))
