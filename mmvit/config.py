"""YAML configs with one ``_base_`` level, dotted command-line overrides and typed component configs.

A config file is plain YAML read with ``yaml.safe_load``'s rules, except that numbers in exponent notation
without a dot (``1e-3``, ``5e-2``) are floats, as in YAML 1.2 (YAML 1.1 reads them as strings, which a
typed config would reject and DeepSpeed would take as text). ``_base_: other.yaml`` (relative to the file) is
merged under it, key by key; the base may not have a base of its own (one level keeps a config readable
from two files). ``imports: [pkg.module]`` imports user modules before anything is built, so their registry
entries count. Each component turns its section into a dataclass with :func:`mmvit.typed.from_dict`, which
rejects unknown keys naming the nearest valid one and checks types, choices and ranges.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
from typing import Any, Iterable

import yaml

from mmvit.typed import from_dict, nearest

__all__ = ["Config", "SECTIONS", "apply_override", "from_dict", "import_modules", "load_config", "merge",
           "parse_yaml"]

# Top-level sections. Deeper keys are checked by the typed config of the component that reads them.
SECTIONS = ("_base_", "imports", "name", "seed", "run_dir", "tasks", "model", "objective", "data", "train", "deepspeed",
            "curriculum", "eval", "export")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` / ``-2E+4`` (no dot) as floats, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def parse_yaml(text_or_file: Any) -> Any:
    """``yaml.safe_load`` with YAML 1.2 exponent floats (see the module docstring)."""
    return yaml.load(text_or_file, Loader=_Loader)  # noqa: S506  (_Loader is a SafeLoader)


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
        data = parse_yaml(f) or {}
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
    value = parse_yaml(raw)
    node = cfg
    for i, part in enumerate(parts[:-1]):
        if part not in node or node[part] is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise KeyError(f"override {item!r}: {'.'.join(parts[:i + 1])!r} is not a mapping")
    node[parts[-1]] = value


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
