"""The bundle's command lines, in one place: ``python -m scripts <command> [--option value ...]``.

Each module here is one command and holds only its options and its examples (``--help``); the work is done by the
library (``scripts.data``, ``scripts.inference``, ``scripts.evaluation``, ...). Every command has one error policy
(``scripts.cli``): a user's mistake is one ``error:`` line on stderr and exit status 2.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["COMMANDS", "MOVED", "main", "refuse_moved_command", "summary"]

#: command name -> its module under scripts.commands, in the order ``python -m scripts`` lists them
COMMANDS: tuple[str, ...] = (
    "demo",
    "synthesize",
    "synthesize_unet",
    "evaluate",
    "evaluate_segmentation",
    "choose_copy",
    "prepare_datalist",
    "preview",
    "convert_weights",
    "monailabel_studies",
    "monailabel_client",
)


#: the module each command was run as before it moved here (release 0.7.0) -> its command now
MOVED: dict[str, str] = {
    "scripts.inference.demo": "demo",
    "scripts.inference.synthesize": "synthesize",
    "scripts.baselines.synthesize": "synthesize_unet",
    "scripts.evaluation.evaluate": "evaluate",
    "scripts.segmentation.evaluate": "evaluate_segmentation",
    "scripts.evaluation.copy_baseline": "choose_copy",
    "scripts.prepare_datalist": "prepare_datalist",
    "scripts.preview": "preview",
    "scripts.convert_weights": "convert_weights",
    "scripts.monailabel_task": "monailabel_studies",
    "scripts.monailabel_client": "monailabel_client",
}


def refuse_moved_command(argv: Sequence[str]) -> None:
    """``python -m scripts.inference.demo`` (a command's old name) would import a library module and exit 0 having
    done nothing; say where the command went instead (one ``error:`` line, status 2). ``argv``: ``sys.orig_argv``."""
    args = list(argv)
    if "-m" not in args[:-1]:
        return
    module = args[args.index("-m") + 1]
    if module in MOVED:
        rest = " ".join(args[args.index("-m") + 2 :])
        print(
            f"error: {module} is no longer a command; run: python -m scripts {MOVED[module]} {rest}".rstrip(),
            file=sys.stderr,
        )
        raise SystemExit(2)


def summary(command: str) -> str:
    """The first line of the command's docstring, read without importing it (a listing must not load torch)."""
    source = (Path(__file__).parent / f"{command}.py").read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(source)) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _listing() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = [f"  {c.ljust(width)}  {summary(c)}" for c in COMMANDS]
    return "usage: python -m scripts <command> [--option value ...]   (--help after a command: its options)\n\n" + (
        "commands:\n" + "\n".join(lines)
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; no command or ``--help`` lists them, an unknown one is an ``error:`` line (status 2)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_listing())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name.replace("-", "_"), COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"error: unknown command {name!r}{hint} (python -m scripts lists the commands)", file=sys.stderr)
        return 2
    return importlib.import_module(f"{__name__}.{name}").main(rest)
