"""Guards for ``python -m monai.bundle run``, the first item of every config's ``initialize``.

``monai.bundle run`` adds an override that names no key of the config (``--num_sample 2``, ``--epoch 1``,
``--weights X.pt``) as a new, unused key and carries on with the defaults: the wrong model or the wrong number of
epochs, silently. :func:`guard` stops such a run before anything is built, naming the nearest known keys, and
installs the command lines' error policy (``scripts.cli``). Called from Python (``monai.bundle.run(...)``, the zoo's
checks, MONAI Label), it does nothing: only the command line's own arguments are checked.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from scripts.cli import install_excepthook, quiet_known_noise
from scripts.cli_args import parse_device, parse_list
from scripts.errors import UserError
from scripts.inference.options import INFERENCE_OPTIONS

__all__ = ["BundleOverrideError", "command_line_overrides", "guard", "unknown_overrides"]

#: ``monai.bundle run``'s own arguments (``monai.bundle.scripts.run`` and ``ConfigWorkflow``), not config ids
RUN_ARGUMENTS = frozenset(
    {
        "run_id",
        "init_id",
        "final_id",
        "meta_file",
        "config_file",
        "logging_file",
        "tracking",
        "args_file",
        "workflow_name",
        "workflow_type",
        "properties_path",
    }
)
_SEP = "::"


class BundleOverrideError(UserError, ValueError):
    """``monai.bundle run`` was given an override that no config file has."""


def _is_bundle_run(argv: Sequence[str]) -> bool:
    main = os.path.normpath(str(argv[0])) if argv else ""
    return main.endswith(os.path.join("monai", "bundle", "__main__.py")) and len(argv) > 1 and argv[1] == "run"


def command_line_overrides(args: Sequence[str]) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` pairs of a fire command line (after ``run``), keys as fire names them."""
    pairs: dict[str, Any] = {}
    i = 0
    while i < len(args):
        token = str(args[i])
        i += 1
        if not token.startswith("--") or token == "--":
            continue  # the run id (``training``) or fire's separator
        key, eq, value = token[2:].partition("=")
        if not eq:
            if i < len(args) and not str(args[i]).startswith("--"):
                value, i = args[i], i + 1
            else:
                value = True
        pairs[key.replace("-", "_")] = value
    return pairs


def _ids(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    items = node.items() if isinstance(node, Mapping) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        name = f"{prefix}{_SEP}{key}" if prefix else str(key)
        yield name, value
        yield from _ids(value, name)


def unknown_overrides(config: Mapping[str, Any], overrides: Mapping[str, Any], tracking: bool = False) -> dict:
    """Override key -> suggestions, for each override that names no key of ``config`` (a key below a component
    with ``_target_`` counts as known: it becomes a constructor argument, which checks it)."""
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    ids = dict(_ids(config))
    extra = set(DEFAULT_MLFLOW_SETTINGS["configs"]) if tracking else set()
    unknown: dict[str, list[str]] = {}
    for key in overrides:
        if key in RUN_ARGUMENTS or key.startswith("_meta_"):
            continue
        name = key.replace("#", _SEP)
        parent = name.rpartition(_SEP)[0]
        if (
            name in ids
            or name in extra
            or (parent and isinstance(ids.get(parent), Mapping) and "_target_" in ids[parent])
        ):
            continue
        hints = []
        option = INFERENCE_OPTIONS.get(name) or INFERENCE_OPTIONS.get(
            next(iter(difflib.get_close_matches(name, INFERENCE_OPTIONS, n=1, cutoff=0.8)), "")
        )
        if option and option in ids and option != name:
            hints.append(option)
        top = [k for k in ids if _SEP not in k] if _SEP not in name else list(ids)
        hints += [k for k in difflib.get_close_matches(name, top, n=3, cutoff=0.6) if k not in hints]
        unknown[key] = hints
    return unknown


def _config_files(pairs: Mapping[str, Any]) -> list[str]:
    files = parse_list(pairs.get("config_file"), "config_file", BundleOverrideError)
    if not files:
        raise BundleOverrideError("monai.bundle run needs --config_file (e.g. configs/inference.yaml)")
    return files


def guard(argv: Sequence[str] | None = None) -> bool:
    """Check the ``monai.bundle run`` command line (``sys.argv``) before the config builds anything; True if fine.

    Raises :class:`BundleOverrideError` naming each unknown override and the nearest known keys.
    """
    from monai.bundle import ConfigParser

    argv = sys.argv if argv is None else argv
    if not _is_bundle_run(argv):
        return True
    install_excepthook()
    quiet_known_noise()
    pairs = command_line_overrides(argv[2:])
    if pairs.get("args_file"):
        pairs = {**ConfigParser.load_config_file(str(pairs["args_file"])), **pairs}
    if "device" in pairs and not str(pairs["device"]).startswith("$"):
        parse_device(pairs["device"], BundleOverrideError)  # cuda on a machine without one: say so now
    files = _config_files(pairs)
    config = ConfigParser.load_config_files(files)
    unknown = unknown_overrides(config, pairs, tracking=bool(pairs.get("tracking")))
    if unknown:
        names = ", ".join(os.path.basename(f) for f in files)
        parts = []
        for key, hints in unknown.items():
            hint = f" (did you mean {' or '.join('--' + h for h in hints)}?)" if hints else ""
            parts.append(f"--{key}{hint}")
        raise BundleOverrideError(
            f"{'; '.join(parts)}: no such key in {names}, so monai.bundle run would add it unused and run with the "
            "defaults; nothing was run. Config keys are listed in the config files (docs/README.md, 'Where to "
            "change what')"
        )
    return True
