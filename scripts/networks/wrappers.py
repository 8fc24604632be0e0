"""The one place that looks through wrappers (DistributedDataParallel, DataParallel, test doubles alike)."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["unwrap"]


def unwrap(module: Any, owner_of: str | None = None) -> Any:
    """The module inside any ``.module`` wrappers: state dicts and attributes belong to it, not to the wrapper.

    ``owner_of``: stop at the first object that has this attribute (``"predict_x0"``, ``"nz"``), even if it keeps a
    ``.module`` of its own.
    """
    while isinstance(getattr(module, "module", None), nn.Module) and not (owner_of and hasattr(module, owner_of)):
        module = module.module
    return module
