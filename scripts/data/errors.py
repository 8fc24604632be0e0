"""The one exception type the data pipeline raises for bad input.

``DataError`` subclasses ``ValueError`` so generic ``except ValueError`` handlers still catch it, and its message
always names the offending file or datalist key, so a user can fix the input without reading a stack trace.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scripts.errors import UserError, find_cause

__all__ = ["DataError", "find_data_error", "call_unwrapping"]


class DataError(UserError, ValueError):
    """Bad input data: missing/corrupt file, wrong shape or grid, non-finite or constant volume, bad task."""


def find_data_error(exc: BaseException) -> DataError | None:
    """The first ``DataError`` in the exception chain of ``exc``: MONAI's ``Compose`` wraps every exception raised
    inside a transform into ``RuntimeError("applying transform ...")``."""
    return find_cause(exc, DataError)


def call_unwrapping(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` and re-raise any wrapped ``DataError`` directly, without MONAI's wrapper traceback."""
    try:
        return fn(*args, **kwargs)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - we only translate, everything else is re-raised unchanged
        err = find_data_error(exc)
        if err is None:
            raise
        raise DataError(str(err)) from None
