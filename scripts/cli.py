"""One error policy for every command line of the bundle.

A user's mistake (any :class:`scripts.errors.UserError`, or an ``OSError`` such as a full disk or an unwritable
folder) ends the run with one ``error: <what and how to fix it>`` line on stderr, however deeply MONAI, ignite or
fire wrapped it. The commands (``python -m scripts <command>``, ``scripts.commands``) return exit status 2 through
:func:`run_fire`; ``python -m monai.bundle run`` gets the same line from :func:`install_excepthook` (installed by
``scripts.bundle_run.guard`` in every config's ``initialize``) and Python's status 1 for an uncaught exception.
Anything else is a bug of ours and keeps its traceback.
"""

from __future__ import annotations

import inspect
import logging
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from scripts.errors import UserError, find_cause

__all__ = [
    "EXIT_USER_ERROR",
    "help_text",
    "install_excepthook",
    "quiet_known_noise",
    "report_user_error",
    "run_fire",
    "user_error",
]

EXIT_USER_ERROR = 2


def user_error(exc: BaseException) -> BaseException | None:
    """The user's mistake behind ``exc`` (our own error types first, then an ``OSError``), or None for a bug."""
    return find_cause(exc, UserError) or find_cause(exc, OSError)


def report_user_error(exc: BaseException) -> bool:
    """Print ``error: ...`` for a user's mistake behind ``exc`` and return True; False (nothing printed) for a bug."""
    err = user_error(exc)
    if err is None:
        return False
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"error: {message}", file=sys.stderr, flush=True)
    return True


def help_text(component: Any, doc: str | None = None) -> str:
    """What ``--help`` prints: ``doc`` (the command module's docstring, its examples; by default the docstring of the
    function's module), then the options of the function (or of each subcommand). Why our own: fire passes
    ``--help`` to a function that takes ``**options`` as one more option."""
    commands = component if isinstance(component, dict) else {"": component}
    if doc is None:
        module = sys.modules.get(getattr(next(iter(commands.values()), None), "__module__", ""), None)
        doc = inspect.getdoc(module) if module is not None else None
    parts = [inspect.cleandoc(doc)] if doc else []
    for name, func in commands.items():
        usage = f"{name}{inspect.signature(func)}" if name else f"options{inspect.signature(func)}"
        parts.append(f"{usage}\n{inspect.getdoc(func) or ''}")
    return "\n\n".join(p.strip() for p in parts if p.strip())


def run_fire(
    component: Any,
    argv: Sequence[str] | None = None,
    serialize: Callable[[Any], Any] | None = None,
    doc: str | None = None,
) -> int:
    """Run a fire entry point: 0 on success (``-h``/``--help`` prints :func:`help_text` with ``doc``),
    :data:`EXIT_USER_ERROR` after one ``error:`` line on a mistake."""
    import fire

    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:
        print(help_text(component, doc))
        return 0
    quiet_known_noise()  # after the entry point's logging.basicConfig, so its handlers get the filter
    try:
        fire.Fire(component, command=None if argv is None else list(argv), serialize=serialize)
    except Exception as exc:  # noqa: BLE001 - user errors become one line, anything else is re-raised
        if report_user_error(exc):
            return EXIT_USER_ERROR
        raise
    return 0


def install_excepthook() -> None:
    """Uncaught user errors print one ``error:`` line instead of MONAI's nested "Failed to evaluate" traceback."""
    if getattr(sys.excepthook, "_mudiff_policy", False):
        return
    previous = sys.excepthook

    def hook(exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        if not report_user_error(exc):
            previous(exc_type, exc, tb)

    hook._mudiff_policy = True  # type: ignore[attr-defined]
    sys.excepthook = hook


def _not_noise(record: logging.LogRecord) -> bool:
    """False for ignite's fresh-run "resuming from iteration 0" and for the tracebacks that ignite and MONAI's
    handlers log while a user error propagates (the excepthook prints its one line at the end)."""
    if record.getMessage().startswith("Engine run resuming from iteration 0, epoch 0 "):
        return False
    if record.levelno >= logging.ERROR:
        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        if exc is not None and user_error(exc) is not None:
            return False
    return True


def quiet_known_noise() -> None:
    """Drop messages that say nothing to a user of this bundle: the optional nvImageCodec DICOM plugin's absence
    (this bundle reads NIfTI; MONAI reports it twice), ignite's "resuming from iteration 0" on every fresh run, and
    the logged tracebacks of a user error (its one ``error:`` line comes from the excepthook)."""
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    for handler in logging.getLogger().handlers:
        if _not_noise not in handler.filters:
            handler.addFilter(_not_noise)
    _quiet_stats_handler()


def _quiet_stats_handler() -> None:
    """MONAI's ``StatsHandler`` logs every exception with its traceback through a logger of its own; a user error
    still propagates (and ends in one line), only its traceback is not logged."""
    from monai.handlers import StatsHandler

    original = StatsHandler.exception_raised
    if getattr(original, "_mudiff_quiet", False):
        return

    def exception_raised(self: Any, engine: Any, e: Exception) -> None:
        if user_error(e) is not None:
            raise e
        original(self, engine, e)

    exception_raised._mudiff_quiet = True  # type: ignore[attr-defined]
    StatsHandler.exception_raised = exception_raised  # type: ignore[method-assign]
