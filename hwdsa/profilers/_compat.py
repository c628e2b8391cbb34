"""`typing.override` where it exists (Python >= 3.12), a no-op otherwise: the edge agent has no typing_extensions."""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

_F = TypeVar("_F", bound=Callable[..., Any])

if TYPE_CHECKING:
    from typing_extensions import override as override
else:

    def override(fn: _F) -> _F:
        marker = getattr(typing, "override", None)
        return marker(fn) if marker is not None else fn


__all__ = ["override"]
