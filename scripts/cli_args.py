"""Command-line value parsing shared by the fire entry points.

fire hands ``--flag false`` over as the string ``'false'``, which Python would treat as true; every CLI of the
bundle reads its switches through :func:`parse_bool` so that all of them accept and refuse the same spellings.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FALSE_WORDS", "TRUE_WORDS", "parse_bool"]

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
