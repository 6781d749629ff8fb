"""Names that moved to another module: still importable from the old one for one release, with a warning."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def moved_names(old_module: str, new_homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` for `old_module`: each old name in `new_homes` (old name → "new_module.NewName")
    resolves from its new home and emits a DeprecationWarning naming it. The new module is absolute when it
    starts with "detr_hf", else relative to `old_module`'s package (so it also works in a remote-code copy)."""
    package = old_module.rpartition(".")[0]

    def __getattr__(name: str) -> Any:
        if name not in new_homes:
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        module, _, new_name = new_homes[name].rpartition(".")
        if module != "detr_hf" and not module.startswith("detr_hf."):
            module = f"{package}.{module}"
        warnings.warn(
            f"{old_module}.{name} moved to {module}.{new_name}; the old name will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(module), new_name)

    return __getattr__
