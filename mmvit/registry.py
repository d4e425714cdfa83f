"""Flat registries: a dict and a decorator.

``@TOKENIZERS.register("patch2d")`` next to a class makes ``TOKENIZERS.build({"type": "patch2d", ...})``
construct it. Names are global within a registry, a duplicate raises, and an unknown name raises with the
list of registered names, so a typo never falls back to something else. Keyword arguments are checked
against the signature (an unknown one names the nearest) and coerced to its annotated types
(``mmvit.typed``), as component configs are.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from mmvit.typed import coerce_kwargs, nearest


def check_kwargs(fn: Callable, kwargs: dict, what: str) -> None:
    """Raise on keyword arguments that ``fn`` does not accept, naming the nearest valid one."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in valid:
            raise KeyError(f"{what}: unknown key {key!r}{nearest(key, valid)}; valid keys: {sorted(valid)}")


class Registry:
    def __init__(self, name: str):
        self.name = name
        self._entries: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            if name in self._entries:
                raise KeyError(f"{self.name}: {name!r} is already registered to {self._entries[name]!r}")
            self._entries[name] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise KeyError(
                f"{self.name}: unknown type {name!r}{nearest(name, self._entries)}; "
                f"registered: {sorted(self._entries)}"
            )
        return self._entries[name]

    def build(self, cfg: dict | str, **extra: Any) -> Any:
        """Build from ``{"type": name, **kwargs}`` (or a bare name); ``extra`` are caller-supplied kwargs."""
        if isinstance(cfg, str):
            cfg = {"type": cfg}
        if "type" not in cfg:
            raise KeyError(f"{self.name}: config {cfg!r} has no 'type'; registered: {sorted(self._entries)}")
        kwargs = {k: v for k, v in cfg.items() if k != "type"}
        obj = self.get(cfg["type"])
        where = f"{self.name}[{cfg['type']!r}]"
        check_kwargs(obj, kwargs, where)
        return obj(**coerce_kwargs(obj, kwargs, where), **extra)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.name}, {self.names()})"


TOKENIZERS = Registry("TOKENIZERS")
POS_EMBEDS = Registry("POS_EMBEDS")
MODELS = Registry("MODELS")
HEADS = Registry("HEADS")
DATASETS = Registry("DATASETS")
CURRICULA = Registry("CURRICULA")
OBJECTIVES = Registry("OBJECTIVES")
