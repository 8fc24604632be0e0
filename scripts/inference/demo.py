"""The main job (``python -m scripts demo``): held-out BraTS subjects synthesized with the shipped weights and scored
next to the copy baseline and the same-budget U-Net; ``retrain`` reproduces the weights from a BraTS folder.

Weights: ``models/model.pt`` and ``models/unet.pt`` for T1ce, ``models/<task>/`` for the other tasks, each with its
record (network configuration, slicing, training subjects, command, commit, the copy baseline's contrast). The
synthesis runs ``configs/inference.yaml``, the scoring ``configs/evaluate.yaml``; the steps are in
``scripts.commands.demo``.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from scripts.cli_args import parse_device
from scripts.data import load_datalist, resolve_task
from scripts.data.datalist import prepare_datalist, read_split_file
from scripts.networks.checkpoints import atomic_torch_save
from scripts.networks.described import EXTRA_STATE_KEY, description_of, half_precision

from .errors import InferenceError
from .synthesize import BUNDLE_ROOT, load_config
from .weights import generator_state, read_checkpoint, weights_description

__all__ = ["DEMO_SPLIT", "DEMO_TASKS", "DemoWeights", "demo_weights", "retrain", "run_demo", "verdict"]

logger = logging.getLogger(__name__)

DEMO_TASKS: tuple[str, ...] = ("brats_t1ce", "brats_flair", "brats_t2", "brats_t1")
#: The bundle's default task keeps its weights where MONAI and the Model Zoo look (models/model.pt)
DEFAULT_TASK = "brats_t1ce"
DEMO_SPLIT = BUNDLE_ROOT / "scripts" / "data" / "splits" / "brats18_demo.json"
SAMPLE_DATALIST = BUNDLE_ROOT / "sample_data" / "datalist.json"
TRAIN_CONFIGS = ("configs/train.yaml", "configs/train_demo.yaml")
UNET_CONFIGS = ("configs/train_unet.yaml", "configs/train_unet_demo.yaml")
INFER_CONFIGS = ("configs/inference.yaml", "configs/evaluate.yaml")
#: MU-Diff samples averaged per slice: 4 scored better than 1 on the validation subjects (docs/README.md, "Demo
#: models"), and their spread is the uncertainty map
DEFAULT_NUM_SAMPLES = 4


@dataclass(frozen=True)
class DemoWeights:
    """Where a task's shipped weights live."""

    mudiff: Path
    unet: Path


def demo_weights(task: str, models_dir: str | Path | None = None) -> DemoWeights:
    """``models/model.pt`` + ``models/unet.pt`` for the default task, ``models/<task>/{model,unet}.pt`` otherwise."""
    if task not in DEMO_TASKS:
        raise InferenceError(f"unknown demo task {task!r}; the demo models exist for {', '.join(DEMO_TASKS)}")
    root = Path(models_dir) if models_dir else BUNDLE_ROOT / "models"
    folder = root if task == DEFAULT_TASK else root / task
    return DemoWeights(folder / "model.pt", folder / "unet.pt")


def _run(cmd: Sequence[str], what: str) -> float:
    """Run a bundle command from the bundle root; returns its wall time; a failure is an ``InferenceError``."""
    print(f"{what}:\n  {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(list(cmd), cwd=str(BUNDLE_ROOT), check=False)
    if done.returncode != 0:
        raise InferenceError(f"{what} failed (exit status {done.returncode}); see its log above")
    return time.perf_counter() - start


def _bundle_training(configs: Sequence[str], overrides: Mapping[str, Any]) -> list[str]:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", repr(list(configs))]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]
    return cmd


def _commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=str(BUNDLE_ROOT), capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _write_weights(source: Path, target: Path, provenance: Mapping[str, Any]) -> None:
    """Copy trained weights as float16 with the training record completed by ``provenance`` (atomically)."""
    state = generator_state(read_checkpoint(source), source)
    described = description_of(state)
    if described is None:
        raise InferenceError(f"{source}: trained weights without a record (written by an older configuration?)")
    state[EXTRA_STATE_KEY] = {**described, "record": {**described["record"], **provenance}}
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(half_precision(state), str(target))


def retrain(
    task: str = DEFAULT_TASK,
    brats_dir: str | None = None,
    work_dir: str | None = None,
    models_dir: str | None = None,
    device: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> DemoWeights:
    """Train the task's demo MU-Diff and U-Net on ``brats_dir`` with the fixed demo split, then replace the shipped
    weights (float16, with their records). An interrupted training resumes from ``<work_dir>/*/resume.pt``.

    ``overrides``: config ids given to both trainings (e.g. ``{"epochs": 1}`` for a quick check; the record keeps
    them, so such weights say what they are).
    """
    if not brats_dir:
        raise InferenceError(
            "--retrain true needs --brats_dir, a folder of BraTS 2018/2019 subjects (e.g. the 15 of "
            "../shared/data/brats18 the shipped weights were trained on)"
        )
    weights = demo_weights(task, models_dir)
    work = Path(work_dir) if work_dir else BUNDLE_ROOT / "eval" / "demo" / "retrain" / task
    datalist_file = work / "datalist.json"
    prepare_datalist(str(brats_dir), output=str(datalist_file), split=str(DEMO_SPLIT))
    common = {"bundle_root": str(BUNDLE_ROOT), "datalist_file": str(datalist_file), "task": task}
    common["cache_dir"] = str(work / "cache")  # both trainings prepare the same slice stacks: load each subject once
    if device is not None:
        common["device"] = f"$torch.device('{device}')"
    runs = {
        "mudiff": (TRAIN_CONFIGS, weights.mudiff, "training the demo MU-Diff"),
        "unet": (UNET_CONFIGS, weights.unet, "training the demo U-Net"),
    }
    per_run = _split_overrides({name: configs for name, (configs, _, _) in runs.items()}, overrides or {})
    split = read_split_file(str(DEMO_SPLIT))
    copy = _choose_copy(datalist_file, task)
    for name, (configs, target, what) in runs.items():
        folder = work / name
        settings = {**common, **per_run[name], "ckpt_dir": str(folder), "output_dir": str(folder / "log")}
        cmd = _bundle_training([str(BUNDLE_ROOT / c) for c in configs], settings)
        seconds = _run(cmd, what)
        provenance = {
            "training_subjects": split["training"],
            "validation_subjects": split["validation"],
            "split_file": str(DEMO_SPLIT.relative_to(BUNDLE_ROOT)),
            "configs": list(configs),
            "command": "python -m monai.bundle run training --config_file "
            + shlex.quote(repr(list(configs)))
            + "".join(
                f" --{k} {shlex.quote(str(v))}"
                for k, v in settings.items()
                if k not in ("bundle_root", "ckpt_dir", "output_dir", "cache_dir")
            ),
            "commit": _commit(),
            "trained_on": datetime.now(timezone.utc).strftime("%Y-%m-%d"),  # noqa: UP017 - Python 3.10
            "training_seconds": round(seconds),
            "threads": torch.get_num_threads(),
            "copy_from": copy,
        }
        _write_weights(folder / "model.pt", target, provenance)
        print(f"{what}: {seconds / 60:.1f} min -> {target}", flush=True)
    return weights


def _split_overrides(configs: Mapping[str, Sequence[str]], overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each training gets the override keys its own config has; a key that no config has is an error."""
    from monai.bundle import ConfigParser

    known = {}
    for name, files in configs.items():
        parser = ConfigParser()
        parser.read_config([str(BUNDLE_ROOT / f) for f in files])
        known[name] = {k: v for k, v in overrides.items() if k in parser}
    unknown = sorted(set(overrides) - {k for keys in known.values() for k in keys})
    if unknown:
        raise InferenceError(f"--train_overrides: {unknown} are keys of neither training config")
    return known


def _choose_copy(datalist_file: Path, task: str) -> str:
    """The copy baseline's contrast, chosen on the training and validation subjects (never the test ones)."""
    from .split_evaluation import choose_copy_contrast

    items = load_datalist(str(datalist_file), "training") + load_datalist(str(datalist_file), "validation")
    return str(choose_copy_contrast(items, task)["contrast"])


def _subjects(data_dir: str | None, out: Path) -> tuple[str, str]:
    """(datalist file, split) to score: the embedded held-out subjects, or every subject of ``data_dir``."""
    if data_dir is None:
        return str(SAMPLE_DATALIST), "test"
    datalist_file = out / "datalist.json"
    prepare_datalist(str(data_dir), output=str(datalist_file), split="test")
    return str(datalist_file), "test"


def _unet_synthesis(
    weights: Path, datalist_file: str, split: str, folder: Path, device: str, num_slices: int | None = None
) -> None:
    from scripts.baselines.synthesize import synthesize_datalist
    from scripts.baselines.unet import read_state_dict

    described = description_of(read_state_dict(weights))
    if described is None:
        raise InferenceError(f"{weights}: U-Net weights without a record of their slicing")
    record = described["record"]
    synthesize_datalist(
        weights,
        datalist_file,
        folder,
        split=split,
        task=record["task"],
        slice_mode=record["slice_mode"],
        num_slices=record["num_slices"] if num_slices is None else int(num_slices),
        spatial_size=record["spatial_size"],
        device=device,
    )


#: (metric, higher is better) pairs the verdict compares, paper protocol (the paper's headline numbers)
VERDICT_METRICS = tuple(
    (f"paper_{region}_{metric}", metric != "mae")
    for region in ("brain", "lesion", "enhancing")
    for metric in ("psnr", "ssim", "mae")
)


def verdict(summary: Mapping[str, Any], method: str = "mudiff") -> list[str]:
    """One line per baseline: does ``method`` beat it on each paper-protocol metric (slice-level means) in the brain,
    the tumour ("lesion") and the enhancing tumour (where those regions were scored)?"""
    ours = summary.get(method, {})
    lines = []
    for other in (m for m in summary if m != method):
        for contrast, levels in summary[other].items():
            mine = ours.get(contrast, {}).get("slice_level", {})
            theirs = levels.get("slice_level", {})
            parts, wins = [], 0
            for metric, higher in VERDICT_METRICS:
                a, b = mine.get(metric, {}).get("mean"), theirs.get(metric, {}).get("mean")
                if a is None or b is None:
                    continue
                better = a > b if higher else a < b
                wins += better
                parts.append(f"{metric.removeprefix('paper_')} {a:.3f} vs {b:.3f}{'' if better else ' (x)'}")
            if parts:
                word = "beats" if wins == len(parts) else "does not beat" if wins == 0 else "partly beats"
                lines.append(
                    f"{method} {word} {other} on {contrast} ({wins}/{len(parts)}; paper protocol: {', '.join(parts)})"
                )
    return lines


def run_demo(
    task: str = DEFAULT_TASK,
    data_dir: str | None = None,
    out_dir: str | None = None,
    retrain_models: bool = False,
    brats_dir: str | None = None,
    models_dir: str | None = None,
    num_samples: int = DEFAULT_NUM_SAMPLES,
    device: str | None = None,
    unet: bool = True,
    train_overrides: Mapping[str, Any] | None = None,
    num_slices: int | None = None,
) -> dict[str, str]:
    """Run the main job; returns the report files (``summary``, CSVs, ``figure:<method>/<subject>`` PNGs).

    Args:
        task: ``brats_t1ce`` (default), ``brats_flair``, ``brats_t2`` or ``brats_t1``.
        data_dir: score every subject of this folder instead of the embedded held-out subjects.
        out_dir: output folder (default ``eval/demo/<task>``): ``mudiff/``, ``unet/`` syntheses, ``report/``.
        retrain_models: train the task's models again on ``brats_dir`` first (replaces the shipped weights).
        models_dir: weights folder (default ``models/``).
        num_samples: MU-Diff samples averaged per slice (default 4, chosen on validation); > 1 also writes the
            uncertainty map (std over samples).
        device: "cpu" / "cuda" (default: CUDA when available).
        unet: also score the U-Net baseline.
        train_overrides: config ids for the trainings when retraining (``--train_overrides "{'epochs': 1}"``; each
            key goes to the training configs that have it).
        num_slices: synthesize and score only this many middle slices (default: the weights' window, 80).
    """
    resolve_task(task)  # an unknown task is one clear error before anything runs
    weights = demo_weights(task, models_dir)
    out = Path(out_dir) if out_dir else BUNDLE_ROOT / "eval" / "demo" / task
    if retrain_models:
        retrain(task, brats_dir, out / "retrain", models_dir=models_dir, device=device, overrides=train_overrides)
    for path in (weights.mudiff, *([weights.unet] if unet else [])):
        if not path.is_file():
            raise InferenceError(
                f"{path} not found: the demo weights ship with the repository (git lfs is not needed); restore them "
                "with git checkout, or train them with --retrain true --brats_dir <BraTS folder>"
            )
    described = weights_description(weights.mudiff)
    record = dict((described or {}).get("record") or {})
    if record.get("task") not in (None, task):
        raise InferenceError(f"{weights.mudiff} holds weights for {record['task']!r}, not {task!r}")
    if not record.get("copy_from"):
        raise InferenceError(
            f"{weights.mudiff}: its record names no copy-baseline contrast (copy_from, chosen on the training subjects "
            "when --retrain writes the weights); score other weights with python -m scripts evaluate"
        )
    device = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    datalist_file, split = _subjects(data_dir, out)
    overrides: dict[str, Any] = {  # the network and slicing follow the weights' record (configs/inference.yaml)
        "ckpt_path": str(weights.mudiff),
        "datalist_file": datalist_file,
        "split": split,
        "eval_dir": str(out),
        "num_samples": int(num_samples),
        "device": parse_device(device, InferenceError),
        "copy_from": record.get("copy_from"),
    }
    if num_slices is not None:
        overrides["num_slices"] = int(num_slices)
    parser = load_config([str(BUNDLE_ROOT / c) for c in INFER_CONFIGS], overrides)
    print(f"MU-Diff weights: {weights.mudiff} ({_summary_of(record)})")
    start = time.perf_counter()
    parser.get_parsed_content("evaluator").run()
    print(f"MU-Diff synthesis: {time.perf_counter() - start:.1f} s")
    if unet:
        folder = out / "unet"
        start = time.perf_counter()
        _unet_synthesis(weights.unet, datalist_file, split, folder, device, num_slices)
        print(f"U-Net synthesis ({weights.unet}): {time.perf_counter() - start:.1f} s")
        parser["baseline_dirs"] = {"unet": str(folder)}
    result = parser.get_parsed_content("evaluation").run()
    print("\n" + "\n".join(verdict(result.summary)))
    pngs = [str(p) for k, p in result.files.items() if k.startswith("figure:mudiff/")]
    print("\nPNG report: " + ", ".join(pngs))
    return {k: str(v) for k, v in result.files.items()}


def _summary_of(record: Mapping[str, Any]) -> str:
    if not record:
        return "no training record"
    keys = ("task", "spatial_size", "trained_on", "training_seconds", "commit")
    return ", ".join(f"{k} {json.dumps(record[k]) if k == 'commit' else record[k]}" for k in keys if k in record)
