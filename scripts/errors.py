"""The root of the exceptions that mean "the user can fix this from the message alone".

Every error type of the bundle that reports a user's mistake (bad data, weights of another task, an unusable
checkpoint, a setting out of range) subclasses :class:`UserError` as well as the builtin it used to be, so the
command lines (``scripts.cli``) end such a run with one ``error:`` line, whichever layer raised it and however
deeply MONAI or ignite wrapped it.
"""

from __future__ import annotations

__all__ = ["UserError", "find_cause"]


class UserError(Exception):
    """A mistake in the input, the settings or the files given; ``str(err)`` names the file or key and the fix."""


def find_cause(exc: BaseException, types: type[BaseException] | tuple[type[BaseException], ...] = UserError):
    """The first exception of ``types`` in the ``__cause__``/``__context__`` chain of ``exc`` (itself included),
    or None: MONAI wraps errors raised inside transforms and config expressions in ``RuntimeError``s."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, types):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
