"""Name -> factory registries (timm's habit): every method is selected by a plain name from params.yaml.

A factory's keyword arguments, with the value types of `ltpipe.types` in its signature, are its params block: the
registry turns the signature into a pydantic model (`kwargs_model`), which both `build` and the params schema
(`ltpipe.schema`) validate against, so a type or range is declared once, where the argument is.
"""
from __future__ import annotations

import functools
import inspect
import typing
from typing import Any, Callable, Dict, Iterable, Mapping

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, create_model, model_validator

from ltpipe.errors import ConfigError
from ltpipe.validation import format_validation_error, nested_error

# Frozen, closed blocks: an unknown keyword is an error, never silently ignored.
BLOCK_CONFIG = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, validate_default=True)


class RegistryRef:
    """Marks a `str` annotation as the name of an entry of `registry` (see `Registry.name_type`)."""

    def __init__(self, registry: "Registry"):
        self.registry = registry


class Registry:
    """Maps names to factories; unknown names and bad keyword arguments fail with the valid choices.

    `fixed` names the arguments the caller supplies (data, class counts, ...): they are not params keys, and each is
    passed only to the factories whose signature has it (a loss that needs the number of training images declares
    `num_images`, the others do not). `tasks` are the tasks (`ltpipe.tasks`) an entry fits unless it registers its
    own; None: every task.
    """

    def __init__(self, kind: str, fixed: Iterable[str] = (), tasks: Iterable[str] | None = None):
        self.kind = kind
        self.fixed = tuple(fixed)
        self.default_tasks = None if tasks is None else tuple(tasks)
        self._factories: Dict[str, Callable[..., Any]] = {}
        self._checks: Dict[str, Callable[[Dict[str, Any]], None]] = {}
        self._tasks: Dict[str, tuple[str, ...] | None] = {}

    def register(self, name: str | None = None, *, check: Callable[[Dict[str, Any]], None] | None = None,
                 tasks: Iterable[str] | None = None) -> Callable[[Callable], Callable]:
        """`check(kwargs)` (optional) validates relations between keyword arguments; it raises ValueError.
        `tasks`: the tasks this entry fits (default: the registry's)."""
        def wrap(fn: Callable) -> Callable:
            key = name or fn.__name__
            if key in self._factories:
                raise KeyError(f"{self.kind} {key!r} registered twice")
            self._factories[key] = fn
            self._tasks[key] = self.default_tasks if tasks is None else tuple(tasks)
            if check is not None:
                self._checks[key] = check
            return fn

        return wrap

    def names(self, task: str | None = None) -> list[str]:
        """All names, or those that fit `task`."""
        return sorted(n for n in self._factories if task is None or self.fits(n, task))

    def fits(self, name: str, task: str) -> bool:
        """Whether entry `name` works for `task` (an entry registered without tasks fits every task)."""
        tasks = self._tasks[self.check_name(name)]
        return tasks is None or task in tasks

    def task_tags(self) -> set[str]:
        """Every task some entry names (tests check these are real tasks)."""
        return {t for tasks in self._tasks.values() if tasks for t in tasks}

    def __contains__(self, name: str) -> bool:
        return name in self._factories

    def check_name(self, name: Any) -> str:
        if not isinstance(name, str) or name not in self._factories:
            raise ConfigError(f"unknown {self.kind} {name!r}; valid choices: {', '.join(self.names())}")
        return name

    def get(self, name: str) -> Callable[..., Any]:
        return self._factories[self.check_name(name)]

    def name_type(self) -> Any:
        """Annotation for a keyword argument that names an entry; `<arg>_params` beside it is validated as that
        entry's keyword arguments."""
        return typing.Annotated[str, AfterValidator(self.check_name), RegistryRef(self)]

    def name_arguments(self, name: str) -> Dict[str, "Registry"]:
        """The keyword arguments of entry `name` that name an entry of another registry (`loss: LossName`)."""
        fn = self._factories[self.check_name(name)]
        hints = _annotations(fn)
        return {p: ref.registry for p in inspect.signature(fn).parameters for ref in _registry_refs(hints.get(p))}

    def kwargs_model(self, name: str) -> type[BaseModel]:
        """The pydantic model of entry `name`'s keyword arguments (types, ranges and defaults from its signature)."""
        return _kwargs_model(self, self.check_name(name))

    def validate_kwargs(self, name: str, kwargs: Mapping[str, Any] | None, where: str | None = None) -> Dict[str, Any]:
        """Validated keyword arguments (defaults filled in); ConfigError with one line per problem otherwise."""
        model = self.kwargs_model(name)
        try:
            return dict(model.model_validate(dict(kwargs or {})))
        except ValidationError as err:
            if where is not None:
                raise ConfigError(format_validation_error(err, where, model)) from None
            lines = format_validation_error(err, "", model).splitlines()
            raise ConfigError("\n".join(f"{self.kind} {name!r}: {line}" for line in lines)) from None

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call entry `name`; keyword arguments named in `fixed` pass through to a factory that takes them, the others
        are validated."""
        factory = self.get(name)
        taken = _parameter_names(factory)
        fixed = {k: v for k, v in kwargs.items() if k in self.fixed and k in taken}
        block = {k: v for k, v in kwargs.items() if k not in self.fixed}
        return factory(*args, **fixed, **self.validate_kwargs(name, block))


def _parameter_names(fn: Callable) -> set[str]:
    return set(inspect.signature(fn).parameters)


def _annotations(fn: Callable) -> Dict[str, Any]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    return typing.get_type_hints(target, include_extras=True)


def _registry_refs(annotation: Any) -> list[RegistryRef]:
    return [m for m in getattr(annotation, "__metadata__", ()) if isinstance(m, RegistryRef)]


@functools.lru_cache(maxsize=None)
def _kwargs_model(registry: Registry, name: str) -> type[BaseModel]:
    fn = registry._factories[name]
    hints = _annotations(fn)
    fields, refs = {}, {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in registry.fixed or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        annotation = hints.get(p.name, Any)
        fields[p.name] = (annotation, ... if p.default is p.empty else p.default)
        for ref in _registry_refs(annotation):
            refs[p.name] = ref.registry
    check = registry._checks.get(name)

    def validate_nested(self):
        # `loss: ...` next to `loss_params: {...}`: the block must be valid keyword arguments of that loss.
        for field, sub in refs.items():
            block = f"{field}_params"
            if block in type(self).model_fields:
                model = sub.kwargs_model(getattr(self, field))
                try:
                    model.model_validate(dict(getattr(self, block) or {}))
                except ValidationError as err:
                    raise nested_error(err, (block,), model) from None
        if check is not None:
            check(dict(self))
        return self

    return create_model(f"{registry.kind}:{name}", __config__=BLOCK_CONFIG,
                        __validators__={"_nested": model_validator(mode="after")(validate_nested)}, **fields)


def as_kwargs(where: str, value: Any) -> Dict[str, Any]:
    """A params.yaml block of keyword arguments ({} for null); anything but a mapping is a ConfigError."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"params.yaml: {where} must be a mapping of keyword arguments, got {value!r}")
    return dict(value)
