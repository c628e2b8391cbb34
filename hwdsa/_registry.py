"""A small generic name → object registry; entries may be lazy "module:attr" strings."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from hwdsa.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class _Entry(Generic[T]):
    target: T | str
    description: str


class Registry(Generic[T]):
    """Maps names to objects (or to "module:attr" strings imported on first `get`).

    Listing never imports an optional dependency, and a wrong name lists the valid ones.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, _Entry[T]] = {}

    def register(
        self, name: str, target: T | str | None = None, *, description: str = "", override: bool = False
    ) -> Callable[[T], T]:
        """Register `target` under `name`; without a target, works as a decorator."""

        def _add(obj: T | str) -> None:
            if name in self._entries and not override:
                raise ConfigError(f"{self.kind} {name!r} is already registered; pass override=True to replace it")
            self._entries[name] = _Entry(obj, description)

        if target is not None:
            _add(target)
            return lambda obj: obj

        def decorator(obj: T) -> T:
            _add(obj)
            return obj

        return decorator

    def get(self, name: str) -> T:
        """The object registered as `name`, importing it if it was registered as a string."""
        try:
            entry = self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(self._entries)) or '(none)'}"
            ) from None
        if isinstance(entry.target, str):
            module_name, _, attr = entry.target.partition(":")
            obj: T = getattr(importlib.import_module(module_name), attr)
            self._entries[name] = _Entry(obj, entry.description)
            return obj
        return entry.target

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def description(self, name: str) -> str:
        """The one-line description given at registration."""
        self.get(name)  # validates the name with the standard error
        return self._entries[name].description

    def __contains__(self, name: object) -> bool:
        return name in self._entries
