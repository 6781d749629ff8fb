"""Re-exports of names that moved: the old import keeps working for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["moved_names"]


def moved_names(old_module: str, new_module: str, names: Iterable[str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `old_module` serving `names` from `new_module` with a warning."""
    known = frozenset(names)

    def __getattr__(name: str) -> Any:
        if name not in known:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        warnings.warn(
            f"{old_module}.{name} moved to {new_module}.{name}; the old name goes in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(new_module), name)

    return __getattr__
