"""YAML configs with one ``_base_`` level, dotted command-line overrides and typed component configs.

A config file is plain YAML read with ``yaml.safe_load``. ``_base_: other.yaml`` (relative to the file) is
merged under it, key by key; the base may not have a base of its own (one level keeps a config readable
from two files). ``imports: [pkg.module]`` imports user modules before anything is built, so their registry
entries count. Each component turns its section into a dataclass with :func:`from_dict`, which rejects
unknown keys naming the nearest valid one.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib
import os
from typing import Any, Iterable, TypeVar

import yaml

from mmvit.registry import nearest

# Top-level sections. Deeper keys are checked by the typed config of the component that reads them.
SECTIONS = ("_base_", "imports", "name", "seed", "run_dir", "model", "data", "train", "deepspeed", "curriculum",
            "eval", "export")

T = TypeVar("T")


class Config(dict):
    """A dict with attribute access at every level (``cfg.train.steps`` is ``cfg["train"]["steps"]``)."""

    def __getattr__(self, key: str) -> Any:
        try:
            value = self[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}{nearest(key, self)}") from None
        if isinstance(value, dict) and not isinstance(value, Config):
            value = self[key] = Config(value)
        return value

    def to_dict(self) -> dict:
        """Plain nested dicts and lists (what ``yaml.safe_dump`` and checkpoints take)."""
        def plain(v: Any) -> Any:
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return copy.deepcopy(v)

        return plain(self)

    def dump(self, path: str) -> None:
        with open(path, "w") as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)


def merge(base: dict, child: dict) -> dict:
    """Recursive merge: dicts merge key by key, anything else in ``child`` replaces ``base``.

    A component whose ``type`` changes is replaced whole: the base's other keys belong to the old type.
    """
    out = copy.deepcopy(base)
    for key, value in child.items():
        same_type = not isinstance(value, dict) or not isinstance(out.get(key), dict) or \
            value.get("type", out[key].get("type")) == out[key].get("type")
        if isinstance(value, dict) and isinstance(out.get(key), dict) and same_type:
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read(path: str) -> dict:
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config must be a mapping, got {type(data).__name__}")
    return data


def apply_override(cfg: dict, item: str) -> None:
    """Apply ``a.b.c=value`` in place (value parsed as YAML).

    A key missing from the file is added (a config need not spell out every default); the component that
    reads the section checks it against its typed config, where an unknown key raises naming the nearest
    valid one. A leading ``+`` is accepted for familiarity and means the same.
    """
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    parts = key.lstrip("+").strip().split(".")
    if parts[0] not in SECTIONS:
        raise KeyError(f"override {item!r}: unknown section {parts[0]!r}{nearest(parts[0], SECTIONS)}")
    value = _parse_value(raw)
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise KeyError(f"override {item!r}: {'.'.join(parts[:i + 1])!r} is not a mapping")
    node[parts[-1]] = value


def _parse_value(raw: str) -> Any:
    """YAML value, except that ``1e-3`` is a float (YAML 1.1 wants ``1.0e-3``; nobody types that)."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def import_modules(names: Iterable[str]) -> None:
    for name in names or ():
        importlib.import_module(name)


def load_config(path: str, overrides: Iterable[str] = ()) -> Config:
    """Read ``path``, merge its ``_base_``, apply ``overrides``, import ``imports``, check sections."""
    data = _read(path)
    base = data.pop("_base_", None)
    if base is not None:
        base_path = os.path.join(os.path.dirname(os.path.abspath(path)), base)
        base_data = _read(base_path)
        if "_base_" in base_data:
            raise ValueError(f"{path}: its base {base} has a _base_ of its own; only one level is allowed")
        data = merge(base_data, data)
    for item in overrides or ():
        apply_override(data, item)
    for key in data:
        if key not in SECTIONS:
            raise KeyError(f"{path}: unknown section {key!r}{nearest(key, SECTIONS)}; sections: {list(SECTIONS)}")
    import_modules(data.get("imports") or [])
    return Config(data)


def from_dict(cls: type[T], data: dict | None, where: str | None = None) -> T:
    """Build dataclass ``cls`` from ``data``; an unknown key raises naming the nearest field."""
    data = dict(data or {})
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise KeyError(f"{where or cls.__name__}: unknown key {key!r}{nearest(key, names)}; "
                           f"valid keys: {names}")
    return cls(**data)
