"""Command-line value parsing shared by the fire entry points.

fire hands ``--flag false`` over as the string ``'false'``, which Python would treat as true; every CLI of the
bundle reads its switches through :func:`parse_bool` and its lists through :func:`parse_list`, so that all of them
accept and refuse the same spellings.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from typing import Any

__all__ = ["FALSE_WORDS", "TRUE_WORDS", "parse_bool", "parse_list"]

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
