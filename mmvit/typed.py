"""Typed component configs: plain dicts (from YAML, overrides, checkpoints) into checked dataclasses.

Every component reads its config section with :func:`from_dict`. The dataclass's annotations are the
schema: each given value is coerced to its field's type (``"1e-1"`` to ``0.1`` for a ``float``, ``2.0`` to
``2`` for an ``int``, lists element by element), ``Literal[...]`` fields accept only their listed values,
and ranges declared with :func:`num` (``ge``, ``gt``, ``le``, ``lt``) are checked on every field. An
unknown key raises naming the nearest valid one. Errors name the config path (``data.max_bad_fraction``)
and what is allowed, so a typo or a wrong value fails at start, not steps later.

Functions and classes built through a registry get the same coercion of their keyword arguments from
their signature's annotations (:func:`coerce_kwargs`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal, TypeVar, Union

T = TypeVar("T")
_RANGE_KEYS = ("ge", "gt", "le", "lt")


def nearest(name: str, choices: Iterable[str]) -> str:
    """A "did you mean" suffix for error messages ('' when nothing is close)."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def num(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with a declared range, checked by :func:`from_dict` (``None`` values pass)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return dataclasses.field(default=default, metadata={"range": bounds})


def range_text(bounds: dict[str, float]) -> str:
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{ops[k]} {bounds[k]:g}" for k in _RANGE_KEYS if k in bounds)


def check_range(value: Any, bounds: dict[str, float], where: str) -> None:
    if value is None or not bounds:
        return
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        ok = ((bounds.get("ge") is None or v >= bounds["ge"]) and (bounds.get("gt") is None or v > bounds["gt"])
              and (bounds.get("le") is None or v <= bounds["le"]) and (bounds.get("lt") is None or v < bounds["lt"]))
        if not ok or (isinstance(v, float) and math.isnan(v)):
            raise ValueError(f"{where} must be {range_text(bounds)}, got {value!r}")


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        args = ", ".join(_type_name(a) for a in typing.get_args(hint))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    return getattr(hint, "__name__", str(hint))


class _Mismatch(Exception):
    pass


def _number(value: Any, kind: type) -> int | float:
    """``value`` as ``kind`` (int or float), accepting numbers written as strings (YAML 1.1 reads ``1e-3`` as
    one) and whole floats for ints; bools are not numbers here."""
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise _Mismatch from None
    if not isinstance(value, (int, float)):
        raise _Mismatch
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise _Mismatch
        return int(value)
    return float(value)


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` converted to the annotated type ``hint``; raises ValueError naming ``where``."""
    try:
        return _coerce(value, hint, where)
    except _Mismatch:
        raise ValueError(f"{where} must be {_type_name(hint)}, got {value!r}") from None


def _coerce(value: Any, hint: Any, where: str) -> Any:
    if hint is Any or hint is inspect.Parameter.empty or hint is object:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        for choice in args:
            if value == choice and type(value) is type(choice):
                return choice
        raise ValueError(f"{where} must be one of {list(args)}, got {value!r}{nearest(str(value), map(str, args))}")
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        members = [a for a in args if a is not type(None)]
        # An exact type match first (a float stays a float in ``float | str``), then conversions in order.
        for member in members:
            if isinstance(member, type) and not typing.get_origin(member) and type(value) is member:
                return value
        errors = []
        for member in members:
            try:
                return _coerce(value, member, where)
            except _Mismatch:
                continue
            except ValueError as e:  # a Literal member that did not match: keep its message
                errors.append(str(e))
        if errors and len(members) == 1:
            raise ValueError(errors[0])
        raise _Mismatch
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        container = origin or hint
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ValueError(f"{where} must have {len(args)} values, got {value!r}")
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return container(items)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        if len(args) == 2:
            return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint in (int, float):
        return _number(value, hint)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        if isinstance(value, dict):
            return from_dict(hint, value, where)
        raise _Mismatch
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _Mismatch
    return value  # an annotation this layer does not model (a Callable, a TypeVar): passed through


@functools.lru_cache(maxsize=512)
def _hints(obj: Any) -> dict[str, Any]:
    target = obj.__init__ if isinstance(obj, type) else obj
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001  (unresolvable annotations in a user's module: no coercion for it)
        return {}


def check_keys(cls: type, data: dict, where: str, exclude: tuple[str, ...] = ()) -> None:
    """Raise on a key that is not a field of dataclass ``cls``: with the class's ``RENAMED`` hint (keys other
    frameworks or older configs use, mapped to a sentence saying what to write instead), else naming the
    nearest field."""
    fields = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in exclude]
    renamed = getattr(cls, "RENAMED", {})
    for key in data:
        if key in renamed:
            raise KeyError(f"{where}: unknown key {key!r}: {renamed[key]}")
        if key not in fields:
            raise KeyError(f"{where}: unknown key {key!r}{nearest(key, fields)}; valid keys: {fields}")


def from_dict(cls: type[T], data: dict | None, where: str | None = None) -> T:
    """Build dataclass ``cls`` from ``data``: unknown keys raise naming the nearest field, values are
    coerced to the field types, ``Literal`` choices and declared ranges are checked."""
    where = where or cls.__name__
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    check_keys(cls, data, where)
    values = {k: coerce(v, hints.get(k, Any), f"{where}.{k}") for k, v in data.items()}
    obj = cls(**values)
    for name, f in fields.items():
        check_range(getattr(obj, name), f.metadata.get("range", {}), f"{where}.{name}")
    return obj


def coerce_kwargs(fn: Any, kwargs: dict, where: str) -> dict:
    """Keyword arguments for ``fn`` coerced to its annotated parameter types (as :func:`from_dict` does)."""
    hints = _hints(fn)
    return {k: coerce(v, hints[k], f"{where}.{k}") if k in hints else v for k, v in kwargs.items()}
