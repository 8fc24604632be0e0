"""The ``synthesize`` command's body: its options become config overrides, then the one ``Synthesizer`` runs.

Everything (network hyper-parameters, task, slice mode, sampler) comes from ``configs/inference.yaml`` plus any
overlays, so ``python -m scripts synthesize`` and ``python -m monai.bundle run --config_file configs/inference.yaml``
cannot drift apart; ``OPTION_KEYS`` maps each option to the config key it overrides.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts.cli_args import parse_bool, parse_device, parse_list
from scripts.data import DataError, load_datalist
from scripts.evaluation.matching import find_contrast_file

from .errors import InferenceError
from .options import BOOL_OPTIONS, INFERENCE_OPTIONS
from .synthesizer import Synthesizer, check_items

__all__ = ["BUNDLE_ROOT", "DEFAULT_CONFIG", "OPTION_KEYS", "check_items", "items_from_folders", "load_config", "run"]

logger = logging.getLogger(__name__)

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = str(BUNDLE_ROOT / "configs" / "inference.yaml")
#: command-line option -> config key it overrides
OPTION_KEYS: dict[str, str] = {
    "datalist": "datalist_file",
    "split": "split",
    "out_dir": "output_dir",
    **INFERENCE_OPTIONS,
}


def load_config(config_file: str | Sequence[str] | None = None, overrides: Mapping[str, Any] | None = None):
    """``ConfigParser`` of the inference config (plus overlays) with ``overrides`` applied (config ids -> values).

    ``bundle_root`` defaults to this bundle's folder, so the command works from any working directory.
    """
    from monai.bundle import ConfigParser

    files = parse_list(config_file, "config_file") if config_file is not None else [DEFAULT_CONFIG]
    for f in files:
        if not os.path.isfile(f):
            raise InferenceError(f"config file not found: {f}")
    parser = ConfigParser()
    parser.read_config(files)
    parser["bundle_root"] = str(BUNDLE_ROOT)
    for key, value in (overrides or {}).items():
        parser[key] = value
    return parser


def items_from_folders(folders: Sequence[str], contrasts: Sequence[str]) -> list[dict[str, str]]:
    """One datalist item per subject folder (subject id = folder name), each contrast found by its name.

    A contrast with no file (or several) in a folder raises ``DataError`` naming the folder and the contrast.
    """
    items = []
    for folder in folders:
        path = Path(folder)
        if not path.is_dir():
            raise DataError(f"subject folder {folder} not found")
        item = {"subject": path.resolve().name}
        for contrast in contrasts:
            try:
                item[contrast] = str(find_contrast_file(path, item["subject"], contrast))
            except FileNotFoundError:
                present = sorted(p.name for p in path.iterdir() if p.name.endswith((".nii", ".nii.gz")))
                raise DataError(
                    f"subject folder {folder}: no file for input contrast {contrast!r} (NIfTI files there: {present})"
                ) from None
            except ValueError as exc:
                raise DataError(f"subject folder {folder}: {exc}") from None
        items.append(item)
    return items


def run(
    datalist: str | None = None,
    split: str | None = None,
    subject_dirs: str | Sequence[str] | None = None,
    subjects: str | Sequence[str] | None = None,
    out_dir: str | None = None,
    config_file: str | Sequence[str] | None = None,
    weights: str | None = None,
    device: str | None = None,
    **options: Any,
) -> list[dict[str, str]]:
    """Synthesize and write every selected subject; returns the written paths per subject.

    Args:
        datalist, split: a datalist JSON and its split (default: the config's, i.e. the sample's test split).
        subject_dirs: subject folders instead of a datalist (list or comma-separated).
        subjects: only these subject ids of the datalist split.
        out_dir: output folder (config ``output_dir``).
        config_file: config file or list of files (default ``configs/inference.yaml``).
        weights: generator weights (config ``ckpt_path``).
        device: ``cpu``, ``cuda``, ``cuda:1`` (default: CUDA when available).
        options: task, slice_mode, num_slices, spatial_size, reader, resample, batch_size, num_samples, seed, amp,
            attention, critic, mask_background (see ``OPTION_KEYS``).
    """
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise InferenceError(f"unknown option(s) {unknown}; valid: {sorted(OPTION_KEYS)} and datalist, split, ...")
    given = {"datalist": datalist, "split": split, "out_dir": out_dir, "weights": weights, **options}
    overrides = {}
    for name, value in given.items():
        if value is None:  # not given: the config's value stays
            continue
        if isinstance(value, str) and value.strip().lower() in ("null", "none"):
            overrides[OPTION_KEYS[name]] = None  # e.g. --spatial_size null (volume mode: pad to a multiple of 8)
        else:
            overrides[OPTION_KEYS[name]] = parse_bool(value, name, InferenceError) if name in BOOL_OPTIONS else value
    if device is not None:
        overrides["device"] = parse_device(device, InferenceError)
    parser = load_config(config_file, overrides)
    task = parser.get_parsed_content("task_def")
    if subject_dirs is not None:
        items = items_from_folders(parse_list(subject_dirs, "subject_dirs"), task.inputs)
    else:
        datalist_file = parser.get_parsed_content("datalist_file")
        items = load_datalist(datalist_file, parser.get_parsed_content("split"))
    wanted = parse_list(subjects, "subjects")
    if wanted:
        known = [str(it.get("subject")) for it in items]
        missing = [s for s in wanted if s not in known]
        if missing:
            raise DataError(f"subjects {missing} are not among the inputs {known}")
        items = [it for it in items if str(it.get("subject")) in wanted]
    synthesizer = Synthesizer.from_config(parser)
    output_dir = str(parser.get_parsed_content("output_dir"))
    written = []
    results = synthesizer.run(items, output_dir, parser.get_parsed_content("device"))  # checks all, loads weights
    start = time.perf_counter()
    for result, paths in results:
        cov = result.coverage
        print(
            f"{result.subject}: {len(cov.indices)} of {cov.depth} slices "
            f"({cov.mode} mode) in {time.perf_counter() - start:.1f} s -> {', '.join(str(p) for p in paths.values())}"
        )
        written.append({k: str(v) for k, v in paths.items()})
        start = time.perf_counter()
    return written
