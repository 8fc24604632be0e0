"""Command-line value parsing shared by the fire entry points.

fire hands ``--flag false`` over as the string ``'false'``, which Python would treat as true; every CLI of the
bundle reads its switches through :func:`parse_bool` and its lists through :func:`parse_list`, so that all of them
accept and refuse the same spellings.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import Any

__all__ = ["FALSE_WORDS", "TRUE_WORDS", "parse_bool", "parse_device", "parse_float", "parse_int", "parse_list"]

TRUE_WORDS = ("true", "1", "yes", "y", "on")
FALSE_WORDS = ("false", "0", "no", "n", "off")


def parse_bool(value: Any, name: str, error: type[Exception] = ValueError) -> bool:
    """``value`` as a bool (a bool, or one of ``TRUE_WORDS`` / ``FALSE_WORDS`` in any case); otherwise raise
    ``error`` with a message naming the option ``--name``."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise error(f"--{name} must be true or false, got {value!r}")


def parse_list(value: Any, name: str, error: type[Exception] = ValueError) -> list[str]:
    """``value`` as a list of strings: a list or tuple, ``"a,b,c"``, or a Python list literal ``"['a', 'b']"``
    (what fire passes for ``--x "[a,b]"``); None and ``""`` give ``[]``. Items are stripped, empty ones dropped."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text.strip("[]").split(",")  # [a, b] without quotes
        else:
            value = text.split(",")
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise error(f"--{name} must be a list like a,b,c; got {value!r}")
    return [str(v).strip() for v in value if str(v).strip()]


def parse_int(
    value: Any, name: str, error: type[Exception] = ValueError, minimum: int | None = None, label: str | None = None
) -> int:
    """``value`` as an int (an int, or a string of one; not a bool or a float with a fraction), at least
    ``minimum``; otherwise raise ``error`` naming ``label`` (default ``--name``, the command-line option)."""
    label = label or f"--{name}"
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if number is None:
        raise error(f"{label} must be an integer, got {value!r}")
    if minimum is not None and number < minimum:
        raise error(f"{label} must be >= {minimum}, got {number}")
    return number


def parse_device(value: Any, error: type[Exception] = ValueError) -> Any:
    """``value`` (``cpu``, ``cuda``, ``cuda:1``, a ``torch.device``) as a ``torch.device`` this machine has."""
    import torch

    try:
        device = value if isinstance(value, torch.device) else torch.device(str(value).strip())
    except (RuntimeError, ValueError):
        raise error(f"--device must be cpu, cuda or cuda:N, got {value!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise error(f"--device {value}: this machine has no CUDA GPU (torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= count:
            raise error(f"--device {value}: this machine has {count} CUDA GPU(s) (cuda:0 to cuda:{count - 1})")
    return device


def parse_float(
    value: Any, name: str, error: type[Exception] = ValueError, minimum: float | None = None, finite: bool = True
) -> float:
    """``value`` as a float (a number, or a string of one; finite unless ``finite=False``), at least ``minimum``;
    otherwise raise ``error`` naming ``--name`` (fire passes ``--lambda_l1 abc`` on as the string ``'abc'``)."""
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or (finite and (number != number or number in (float("inf"), float("-inf")))):
        raise error(f"--{name} must be a {'finite ' if finite else ''}number, got {value!r}")
    if minimum is not None and number < minimum:
        raise error(f"--{name} must be >= {minimum:g}, got {number:g}")
    return number
