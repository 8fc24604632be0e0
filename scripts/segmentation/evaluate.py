"""Dice of the downstream segmentation when one contrast is real, synthesized, copied from another input, or missing
(command line: ``python -m scripts evaluate_segmentation``).

Conditions, each scored on every subject of the split: ``real`` (all four real contrasts), one per synthesis folder
(``<subject>_syn_<target>.nii.gz`` in place of the real target), ``copy_<c>`` (the target replaced by input ``c``)
and ``zeros`` (the target channel left empty). Dice per subject in 3D over the synthesized window for the BraTS
regions (whole tumour, tumour core, enhancing tumour), with the BraTS convention that an empty prediction of an
empty region scores 1. Writes ``dice_per_subject.csv`` and ``dice_summary.json`` and prints the table.
"""

from __future__ import annotations

import ast
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scripts.data import DataError, load_datalist
from scripts.data.io_utils import ensure_writable_dir
from scripts.evaluation.matching import list_predictions
from scripts.evaluation.paper_protocol import aggregate_nan
from scripts.evaluation.tables import atomic_write_many, rows_to_csv
from scripts.networks.checkpoints import load_checked, read_state_dict

from .data import REGIONS, SEG_CONTRASTS, subject_stack, with_target

__all__ = ["dice_scores", "evaluate_conditions", "load_segmenter", "segment_stack", "run"]

logger = logging.getLogger(__name__)

BUNDLE_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = BUNDLE_ROOT / "configs" / "segment.yaml"


def load_segmenter(config_file: str | os.PathLike, weights: str | os.PathLike, device: str = "cpu"):
    """(network in eval mode with ``weights``, subject transform), both built from the segmentation config."""
    from monai.bundle import ConfigParser

    advice = f"train them with python -m monai.bundle run training --config_file {config_file}"
    state = read_state_dict(weights, "segmentation weights", advice=advice)
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(BUNDLE_ROOT)
    network = parser.get_parsed_content("network_def")
    load_checked(network, state, weights, "the segmentation weights", f"they are not weights of {config_file}")
    return network.to(device).eval(), parser.get_parsed_content("transform")


@torch.no_grad()
def segment_stack(network: torch.nn.Module, image: np.ndarray, device: str = "cpu", batch: int = 32) -> np.ndarray:
    """(N, 4, H, W) slices -> (N, 3, H, W) {0, 1} region masks (sigmoid > 0.5)."""
    out = []
    for start in range(0, len(image), batch):
        x = torch.from_numpy(np.ascontiguousarray(image[start : start + batch])).to(device)
        out.append((torch.sigmoid(network(x)) > 0.5).cpu().numpy())
    return np.concatenate(out).astype(np.uint8)


def dice_scores(pred: np.ndarray, label: np.ndarray) -> dict[str, float]:
    """3D Dice per region over a subject's stack; 1 when both are empty (the BraTS convention)."""
    scores = {}
    for index, name in enumerate(REGIONS):
        p, t = pred[:, index] > 0, label[:, index] > 0
        total = int(p.sum()) + int(t.sum())
        scores[f"dice_{name}"] = 1.0 if total == 0 else 2.0 * int((p & t).sum()) / total
    return scores


def _synthesis_files(folder: str, target: str) -> dict[str, str]:
    return {p.subject: str(p.path) for p in list_predictions(folder) if p.contrast == target}


def evaluate_conditions(
    items: Sequence[Mapping[str, Any]],
    network: torch.nn.Module,
    transform: Any,
    target: str,
    syntheses: Mapping[str, str] | None = None,
    copy_from: str | None = None,
    zeros: bool = True,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """One row per condition and subject: ``condition``, ``subject``, ``dice_wt``, ``dice_tc``, ``dice_et``."""
    if target not in SEG_CONTRASTS:
        raise DataError(f"--target must be one of {list(SEG_CONTRASTS)}, got {target!r}")
    files = {name: _synthesis_files(folder, target) for name, folder in (syntheses or {}).items()}
    conditions: dict[str, Any] = {"real": lambda it: dict(it)}
    for name, found in files.items():
        conditions[name] = lambda it, found=found, name=name: with_target(it, target, _lookup(found, it, name))
    if copy_from:
        if copy_from not in SEG_CONTRASTS or copy_from == target:
            raise DataError(f"--copy_from must be another input of {list(SEG_CONTRASTS)}, got {copy_from!r}")
        conditions[f"copy_{copy_from}"] = lambda it: with_target(it, target, it[copy_from])
    if zeros:
        conditions["zeros"] = lambda it: with_target(it, target, None)
    rows = []
    for item in items:
        missing = [k for k in (*SEG_CONTRASTS, "lesion") if not item.get(k)]
        if missing:
            raise DataError(f"subject {item.get('subject')}: no {missing} in the datalist")
        for condition, make in conditions.items():
            stack = subject_stack(make(item), transform)
            pred = segment_stack(network, stack["image"], device)
            rows.append({"condition": condition, "subject": stack["subject"], **dice_scores(pred, stack["label"])})
            logger.info("%s %s: %s", condition, stack["subject"], rows[-1])
    return rows


def _lookup(found: Mapping[str, str], item: Mapping[str, Any], name: str) -> str:
    subject = str(item.get("subject"))
    if subject not in found:
        raise DataError(f"{name}: no synthesis of subject {subject}")
    return found[subject]


def summarize_dice(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{condition: {dice_<region>: {mean, std, n}}}`` over subjects."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for condition in dict.fromkeys(r["condition"] for r in rows):
        members = [r for r in rows if r["condition"] == condition]
        out[condition] = {f"dice_{k}": aggregate_nan([m[f"dice_{k}"] for m in members]) for k in REGIONS}
    return out


def format_dice(summary: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    keys = [f"dice_{k}" for k in REGIONS]
    lines = [f"{'condition':<14}" + "".join(f"{k:>18}" for k in keys)]
    for condition, stats in summary.items():
        cells = "".join(
            f"{stats[k]['mean']:>10.3f} ± {stats[k]['std']:.3f}" if math.isfinite(stats[k]["mean"]) else f"{'-':>18}"
            for k in keys
        )
        lines.append(f"{condition:<14}{cells}")
    return "\n".join(lines)


def run(
    datalist_file: str,
    target: str,
    split: str = "test",
    syntheses: Any = None,
    copy_from: str | None = None,
    zeros: bool = True,
    weights: str | None = None,
    config_file: str | None = None,
    out_dir: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Score every condition on one split; writes the CSV and JSON when ``out_dir`` is given; returns the summary."""
    import json

    if isinstance(syntheses, str):
        try:
            syntheses = ast.literal_eval(syntheses)
        except (ValueError, SyntaxError):
            raise DataError(f"--syntheses must be a dict of method -> folder, got {syntheses!r}") from None
    out = ensure_writable_dir(out_dir) if out_dir else None
    device = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    network, transform = load_segmenter(
        config_file or DEFAULT_CONFIG, weights or BUNDLE_ROOT / "models" / "segmentation.pt", device
    )
    items = load_datalist(datalist_file, split)
    rows = evaluate_conditions(items, network, transform, target, syntheses, copy_from, bool(zeros), device)
    summary = summarize_dice(rows)
    print(f"Dice of the segmentation with {target} as given ({len(items)} subjects, mean ± std over subjects):")
    print(format_dice(summary))
    if out is not None:
        document = {"target": target, "datalist_file": str(datalist_file), "split": split, "results": summary}
        atomic_write_many(
            {
                out / "dice_per_subject.csv": rows_to_csv(rows),
                out / "dice_summary.json": (json.dumps(document, indent=2) + "\n").encode("utf-8"),
            }
        )
        print(f"written: {out / 'dice_per_subject.csv'}, {out / 'dice_summary.json'}")
    return summary
