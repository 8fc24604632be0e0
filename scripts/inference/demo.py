"""The main job: synthesize and evaluate the embedded sample's test subject with the demo-scale MU-Diff.

    python -m scripts.inference.demo                 # trains models/demo/model.pt first if it is missing
    python -m scripts.inference.demo --epochs 2      # shorter training (only when it has to train)
    python -m scripts.inference.demo --retrain true  # train again from scratch

Steps:
1. weights: ``models/demo/model.pt`` (``--ckpt_dir``); when absent (or ``--retrain``) the demo overlay is trained
   with ``python -m monai.bundle run training --config_file "['configs/train.yaml','configs/train_demo.yaml']"``
   (an interrupted training resumes from ``resume.pt``);
2. MU-Diff synthesis of the test split with ``configs/inference.yaml`` + ``configs/inference_demo.yaml``;
3. the U-Net baseline's synthesis too (its demo model is trained first when ``models/unet_demo/model.pt`` is
   missing; ``--train_unet false`` skips it instead);
4. evaluation (``configs/evaluate.yaml``) against the real T1ce next to the copy baseline: the metric tables are
   printed, and the CSV / JSON / PNG report paths.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from scripts.cli_args import parse_bool
from scripts.data import DataError

from .errors import InferenceError
from .synthesize import BUNDLE_ROOT, load_config

__all__ = [
    "TRAIN_CONFIGS",
    "INFER_CONFIGS",
    "run_demo",
    "train_demo_model",
    "train_unet_model",
    "unet_predictions",
    "verdict",
    "main",
]

logger = logging.getLogger(__name__)

TRAIN_CONFIGS = ["configs/train.yaml", "configs/train_demo.yaml"]
INFER_CONFIGS = ["configs/inference.yaml", "configs/inference_demo.yaml", "configs/evaluate.yaml"]
#: The published task, whose demo folders carry no task suffix.
DEFAULT_TASK = "brats_t1ce"
UNET_CONFIGS = ["configs/train_unet.yaml", "configs/train_unet_demo.yaml"]


def _folder_name(task: str) -> str:
    """A task name as a folder-name suffix ("t1,t2,flair->t1ce" -> "t1_t2_flair_t1ce")."""
    return re.sub(r"[^A-Za-z0-9]+", "_", str(task)).strip("_")


def _abs(path: str | os.PathLike) -> str:
    return str(Path(path) if Path(path).is_absolute() else Path.cwd() / path)


def train_demo_model(
    ckpt_dir: str,
    epochs: int | None = None,
    train_slices: int | None = None,
    spatial_size: int | None = None,
    device: str | None = None,
    log_dir: str | None = None,
    task: str | None = None,
) -> Path:
    """Train the demo-scale model into ``ckpt_dir`` with the bundle's training command; returns ``model.pt``."""
    configs = [str(BUNDLE_ROOT / c) for c in TRAIN_CONFIGS]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", repr(configs)]
    cmd += ["--bundle_root", str(BUNDLE_ROOT), "--ckpt_dir", ckpt_dir]
    if log_dir:
        cmd += ["--output_dir", log_dir]
    if epochs is not None:
        cmd += ["--epochs", str(int(epochs)), "--cosine_epochs", str(int(epochs))]
    if train_slices is not None:
        cmd += ["--num_slices", str(int(train_slices))]
    if spatial_size is not None:
        cmd += ["--spatial_size", str(int(spatial_size))]
    if device is not None:
        cmd += ["--device", f"$torch.device('{device}')"]
    if task is not None:
        cmd += ["--task", str(task)]
    print("training the demo model:\n  " + " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=str(BUNDLE_ROOT), check=False)
    if done.returncode != 0:
        raise InferenceError(f"demo training failed (exit status {done.returncode}); see its log above")
    weights = Path(ckpt_dir) / "model.pt"
    if not weights.is_file():
        raise InferenceError(f"demo training finished but wrote no {weights}")
    print(f"trained in {time.perf_counter() - start:.0f} s: {weights}", flush=True)
    return weights


def train_unet_model(configs: list[str], device: str | None = None, overrides: dict[str, Any] | None = None) -> None:
    """Train the demo-scale U-Net baseline with its own bundle config (about a minute on an idle 2-core CPU);
    ``overrides`` are config ids given on the command line (e.g. ``task``, ``ckpt_dir``)."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", repr(configs)]
    cmd += ["--bundle_root", str(BUNDLE_ROOT)]
    for key, value in (overrides or {}).items():
        cmd += [f"--{key}", str(value)]
    if device is not None:
        cmd += ["--device", f"$torch.device('{device}')"]
    print("training the U-Net baseline:\n  " + " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=str(BUNDLE_ROOT), check=False)
    if done.returncode != 0:
        raise InferenceError(f"U-Net baseline training failed (exit status {done.returncode}); see its log above")
    print(f"U-Net baseline trained in {time.perf_counter() - start:.0f} s", flush=True)


def unet_predictions(
    out_dir: str,
    device: str | None = None,
    checkpoint: str | None = None,
    train_if_missing: bool = False,
    num_slices: int | None = None,
    task: str | None = None,
    retrain: bool = False,
) -> dict[str, str]:
    """Synthesize the test split with the U-Net baseline when its config and weights exist ({"unet": folder});
    otherwise say why it is skipped and return {}. ``checkpoint`` overrides the config's weights file;
    ``train_if_missing`` trains the demo U-Net first when the config's weights are absent; ``num_slices``
    overrides the training config's window so that the U-Net synthesizes exactly the slices that are evaluated
    (its demo trains on 48 middle slices, the evaluation scores 80); ``task`` other than ``DEFAULT_TASK`` trains and
    reads the U-Net in ``models/unet_demo_<task>``; ``retrain`` removes the config's own weights first (never a
    ``checkpoint`` given explicitly)."""
    configs = [str(BUNDLE_ROOT / c) for c in UNET_CONFIGS if (BUNDLE_ROOT / c).is_file()]
    if not configs or not configs[0].endswith("train_unet.yaml"):
        print("U-Net baseline: skipped (configs/train_unet.yaml not found)")
        return {}
    from scripts.baselines.unet import CheckpointError

    try:
        from scripts.baselines import synthesize as unet

        overrides = {} if task is None else {"task": task}
        if task is not None and task != DEFAULT_TASK:
            overrides["ckpt_dir"] = str(BUNDLE_ROOT / "models" / f"unet_demo_{_folder_name(task)}")
        settings = unet.settings_from_config(configs, **overrides)
        weights = checkpoint or settings["checkpoint"]
        if retrain and checkpoint is None and os.path.isfile(weights):
            os.remove(weights)
        if not os.path.isfile(weights) and train_if_missing and checkpoint is None:
            train_unet_model(configs, device, overrides)
        if not os.path.isfile(weights):
            names = [os.path.relpath(c, BUNDLE_ROOT) for c in configs]
            command = f'python -m monai.bundle run training --config_file "{names}"'
            print(f"U-Net baseline: skipped (no weights at {weights}; train it with {command})")
            return {}
        folder = str(Path(out_dir) / "unet")
        window = {} if num_slices is None else {"num_slices": int(num_slices)}
        unet.run(folder, config_file=configs, split="test", checkpoint=weights, device=device, **overrides, **window)
        print(f"U-Net baseline: {weights} -> {folder}")
    except Exception as exc:  # noqa: BLE001 - the baseline is optional; the demo goes on without it
        hint = ""
        if isinstance(exc, CheckpointError) and checkpoint is None:
            hint = " (weights of an older demo configuration? --retrain true trains both models again)"
        print(f"U-Net baseline: skipped ({type(exc).__name__}: {exc}){hint}")
        return {}
    return {"unet": folder}


#: (metric, higher is better) pairs the verdict compares, paper protocol first (the paper's headline numbers).
VERDICT_METRICS = (("paper_brain_psnr", True), ("paper_brain_ssim", True), ("paper_brain_mae", False))


def verdict(summary: dict[str, Any], method: str = "mudiff") -> list[str]:
    """One line per baseline: does ``method`` beat it on each verdict metric (slice-level means)?

    ``summary`` is the evaluation's ``{method: {contrast: {level: {metric: {mean, ...}}}}}``.
    """
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
                parts.append(f"{metric.removeprefix('paper_brain_')} {a:.3f} vs {b:.3f}")
            if parts:
                word = "beats" if wins == len(parts) else "does not beat" if wins == 0 else "partly beats"
                lines.append(f"{method} {word} {other} on {contrast} (paper protocol, brain: {', '.join(parts)})")
    return lines


def run_demo(
    epochs: int | None = None,
    retrain: bool = False,
    ckpt_dir: str | None = None,
    eval_dir: str | None = None,
    train_slices: int | None = None,
    num_slices: int | None = None,
    spatial_size: int | None = None,
    num_samples: int = 1,
    device: str | None = None,
    unet: bool = True,
    unet_weights: str | None = None,
    train_unet: bool = True,
    task: str = DEFAULT_TASK,
) -> dict[str, Any]:
    """Run the main job; returns the evaluation files (``summary``, CSVs, ``figure:<method>/<subject>`` PNGs).

    Args:
        epochs: training epochs when it has to train (default: configs/train_demo.yaml's).
        retrain: train even when weights exist (removes the folder's model.pt and resume.pt first, and the demo
            U-Net's default weights).
        ckpt_dir: weights folder (default models/demo).
        eval_dir: output folder (default eval/demo/evaluate): mudiff/ syntheses, report/ metrics and PNGs.
        train_slices, spatial_size: training overrides (slices per subject, slice size; spatial_size is also
            used for inference, which must see the training size).
        num_slices: slices synthesized and evaluated per subject (default 80: the whole sample volume).
        num_samples: > 1 adds the uncertainty map (std over samples) to the synthesis and the report.
        device: "cpu" / "cuda" (default: CUDA when available).
        unet: also evaluate the U-Net baseline when its weights exist.
        unet_weights: the U-Net's weights (default: its demo config's ``models/unet_demo/model.pt``).
        train_unet: train the demo U-Net first when its default weights are missing (``--train_unet false``
            skips the baseline instead).
        task: the synthesis task (``brats_t1ce`` as published; ``brats_flair``, ``brats_t2``, ``brats_t1``). Another
            task than T1ce keeps its own default folders: ``models/demo_<task>``, ``models/unet_demo_<task>``
            and ``eval/demo/<task>``.
    """
    from scripts.data.tasks import resolve_task

    resolve_task(task)  # an unknown task is one clear error before anything trains
    suffix = "" if task == DEFAULT_TASK else "_" + _folder_name(task)
    ckpt = _abs(ckpt_dir) if ckpt_dir else str(BUNDLE_ROOT / "models" / f"demo{suffix}")
    default_out = BUNDLE_ROOT / "eval" / "demo" / ("evaluate" if not suffix else suffix[1:])
    out = _abs(eval_dir) if eval_dir else str(default_out)
    weights = Path(ckpt) / "model.pt"
    if retrain:
        for name in ("model.pt", "resume.pt"):
            if (Path(ckpt) / name).is_file():
                (Path(ckpt) / name).unlink()
    if not weights.is_file():
        log_dir = str(Path(out) / "training")
        train_demo_model(ckpt, epochs, train_slices, spatial_size, device, log_dir=log_dir, task=task)
    else:
        print(f"using the demo weights {weights} (--retrain true trains them again)")
    overrides: dict[str, Any] = {"ckpt_dir": ckpt, "eval_dir": out, "num_samples": int(num_samples), "task": task}
    if num_slices is not None:
        overrides["num_slices"] = int(num_slices)
    if spatial_size is not None:
        overrides["spatial_size"] = int(spatial_size)
        overrides["image_size"] = int(spatial_size)
    if device is not None:
        import torch

        overrides["device"] = torch.device(device)
    parser = load_config([str(BUNDLE_ROOT / c) for c in INFER_CONFIGS], overrides)
    if unet:
        window = int(parser.get_parsed_content("num_slices"))
        unet_ckpt = _abs(unet_weights) if unet_weights else None
        parser["baseline_dirs"] = unet_predictions(
            out, device, unet_ckpt, train_if_missing=train_unet, num_slices=window, task=task, retrain=retrain
        )
    start = time.perf_counter()
    parser.get_parsed_content("evaluator").run()
    print(f"MU-Diff synthesis of the test split: {time.perf_counter() - start:.1f} s")
    result = parser.get_parsed_content("evaluation").run()
    print("\n" + "\n".join(verdict(result.summary)))
    pngs = [str(p) for k, p in result.files.items() if k.startswith("figure:mudiff/")]
    print("\nPNG report: " + ", ".join(pngs))
    return {k: str(v) for k, v in result.files.items()}


def main(argv: list[str] | None = None) -> int:
    """Entry point; bad input or a failed training is one ``error:`` line and exit status 2."""
    import fire

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    def _cli(retrain: Any = False, unet: Any = True, train_unet: Any = True, **kwargs: Any) -> None:
        run_demo(
            retrain=parse_bool(retrain, "retrain", InferenceError),
            unet=parse_bool(unet, "unet", InferenceError),
            train_unet=parse_bool(train_unet, "train_unet", InferenceError),
            **kwargs,
        )

    try:
        fire.Fire(_cli, command=argv)
    except (DataError, InferenceError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
