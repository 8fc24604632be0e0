"""Is a faster inference path as good as float32? Synthesis quality per path, on real held-out slices, several seeds.

Why: the bundle's default path must be the fastest one whose output cannot be told apart from float32's by the
metrics users care about (issue 14). bf16 autocast changes every output pixel by up to ~1e-2, and so does
drawing a different seed; the question is whether the change moves the quality against the truth.

For each path (``fp32``: every switch off; ``bf16``: ``amp``; ``bf16+channels_last``: ``amp`` + ``channels_last``)
and each seed, the bundle's own inference (``configs/inference.yaml``, the weights' record decides the network
and slicing) synthesizes the chosen split; one evaluation (``configs/evaluate.yaml``) scores every (path, seed) as
a method. Then, per metric, the paired per-slice difference ``path - fp32`` (same seed, averaged over seeds) is
summarised with a bootstrap 95 % interval and a sign-flip permutation p-value, next to the same statistics for
``fp32 seed b - fp32 seed a`` (what a different seed alone does).

Rule (an equivalence test): a path is indistinguishable from fp32 when, for every metric, the whole 95 % interval
of its paired difference lies within +- the half-width of the seed-vs-seed interval, i.e. the path moves the
metric less than the smallest shift that two float32 runs with different seeds could reveal on these slices. A
plain "does the paired interval contain 0" would not do: with the same seed the two paths see the same noise, so a
paired test on 160 slices detects shifts of 1e-4 dB that no user could ever see (docs/benchmarks.md).

Choose on the validation subjects (default ``--split validation``); report on the test subjects afterwards::

    python -m tools.precision_study --brats_dir ../shared/data/brats18 --split validation \
        --seeds 0,1,2 --out_dir eval/precision/validation
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
#: path name -> (amp, channels_last)
PATHS: dict[str, tuple[bool, bool]] = {
    "fp32": (False, False),
    "bf16": (True, False),
    "bf16+channels_last": (True, True),
}
METRICS: tuple[str, ...] = (
    "paper_brain_psnr",
    "paper_brain_ssim",
    "paper_brain_mae",
    "paper_lesion_psnr",
    "paper_lesion_ssim",
    "paper_lesion_mae",
    "float_brain_psnr",
    "float_brain_ssim",
)
REFERENCE = "fp32"


def _method(path: str, seed: int) -> str:
    return f"{path.replace('+', '_')}_s{seed}"


def paired_statistics(differences: np.ndarray, rounds: int = 10000, seed: int = 0) -> dict[str, float]:
    """Mean of paired differences, bootstrap 95 % interval and two-sided sign-flip permutation p-value."""
    diffs = np.asarray(differences, dtype=np.float64)
    diffs = diffs[np.isfinite(diffs)]
    if diffs.size == 0:
        return {"n": 0, "mean": math.nan, "low": math.nan, "high": math.nan, "p": math.nan}
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, diffs.size, size=(rounds, diffs.size))].mean(axis=1)
    flips = rng.choice((-1.0, 1.0), size=(rounds, diffs.size))
    null = np.abs((flips * diffs).mean(axis=1))
    observed = abs(diffs.mean())
    return {
        "n": int(diffs.size),
        "mean": float(diffs.mean()),
        "low": float(np.percentile(means, 2.5)),
        "high": float(np.percentile(means, 97.5)),
        "p": float((1 + np.sum(null >= observed - 1e-15)) / (rounds + 1)),
    }


def read_slice_rows(csv_file: Path) -> dict[str, dict[tuple[str, int], dict[str, float]]]:
    """method -> (subject, slice) -> metric -> value, from the evaluation's per-slice CSV."""
    table: dict[str, dict[tuple[str, int], dict[str, float]]] = defaultdict(dict)
    with open(csv_file, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            key = (row["subject"], int(row["slice"]))
            table[row["method"]][key] = {m: float(row[m]) if row.get(m) else math.nan for m in METRICS}
    return table


def compare(
    table: Mapping[str, Mapping[tuple[str, int], Mapping[str, float]]], paths: Sequence[str], seeds: Sequence[int]
):
    """Per path and metric: mean over seeds and slices, and the paired statistics against fp32 (and seed vs seed)."""
    keys = sorted(table[_method(REFERENCE, seeds[0])])

    def values(path: str, seed: int, metric: str) -> np.ndarray:
        rows = table[_method(path, seed)]
        return np.array([rows[k][metric] for k in keys])

    warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)  # slices without tumour: NaN metrics
    result: dict[str, Any] = {"slices": len(keys), "paths": {}}
    for path in paths:
        entry = {}
        for metric in METRICS:
            per_seed = np.stack([values(path, s, metric) for s in seeds])
            ref = np.stack([values(REFERENCE, s, metric) for s in seeds])
            entry[metric] = {
                "mean": float(np.nanmean(per_seed)),
                "seed_means": [float(np.nanmean(v)) for v in per_seed],
                "vs_fp32": paired_statistics(np.nanmean(per_seed - ref, axis=0)) if path != REFERENCE else None,
            }
        result["paths"][path] = entry
    if len(seeds) > 1:
        result["seed_vs_seed"] = {
            metric: paired_statistics(values(REFERENCE, seeds[1], metric) - values(REFERENCE, seeds[0], metric))
            for metric in METRICS
        }
    return result


def verdicts(result: Mapping[str, Any]) -> dict[str, bool]:
    """The rule of the module docstring, per path other than fp32: every metric's paired 95 % interval lies within
    +- the half-width of the seed-vs-seed interval."""
    out = {}
    seed_noise = result.get("seed_vs_seed", {})
    for path, entry in result["paths"].items():
        if path == REFERENCE:
            continue
        ok = bool(seed_noise)
        for metric, stats in entry.items():
            diff, noise = stats["vs_fp32"], seed_noise.get(metric)
            if diff["n"] == 0 or noise is None or noise["n"] == 0:
                continue
            margin = (noise["high"] - noise["low"]) / 2
            ok = ok and -margin <= diff["low"] and diff["high"] <= margin
        out[path] = ok
    return out


def format_result(result: Mapping[str, Any]) -> str:
    lines = [
        f"{result['slices']} slices per seed; difference = path - fp32 per slice (same seed), mean over seeds",
        "| path | metric | mean | seed means | diff vs fp32 | 95 % interval | p (sign flip) |",
        "|---|---|---:|---|---:|---|---:|",
    ]
    for path, entry in result["paths"].items():
        for metric, stats in entry.items():
            d = stats["vs_fp32"]
            seeds = ", ".join(f"{v:.4f}" for v in stats["seed_means"])
            diff = f"{d['mean']:+.4f} | [{d['low']:+.4f}, {d['high']:+.4f}] | {d['p']:.3f}" if d else "— | — | —"
            lines.append(f"| {path} | {metric} | {stats['mean']:.4f} | {seeds} | {diff} |")
    for metric, d in result.get("seed_vs_seed", {}).items():
        lines.append(
            f"| fp32 seed b - seed a | {metric} | | | {d['mean']:+.4f} | [{d['low']:+.4f}, {d['high']:+.4f}] |"
            f" {d['p']:.3f} |"
        )
    return "\n".join(lines)


def run_study(
    brats_dir: str | None = None,
    datalist_file: str | None = None,
    split: str = "validation",
    weights: str | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    paths: Sequence[str] = ("fp32", "bf16+channels_last"),
    num_samples: int = 1,
    out_dir: str = "eval/precision",
    threads: int | None = None,
) -> dict[str, Any]:
    import torch
    from scripts.data.datalist import prepare_datalist
    from scripts.inference.demo import DEMO_SPLIT, INFER_CONFIGS
    from scripts.inference.synthesize import load_config

    if threads:
        torch.set_num_threads(int(threads))
    if REFERENCE not in paths:
        paths = (REFERENCE, *paths)
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        raise SystemExit(f"error: unknown path(s) {unknown}; known: {list(PATHS)}")
    out = Path(out_dir).resolve()
    if datalist_file is None:
        if brats_dir is None:
            raise SystemExit("error: give --brats_dir (a BraTS folder, split by the demo split) or --datalist_file")
        datalist_file = str(out / "datalist.json")
        prepare_datalist(str(brats_dir), output=datalist_file, split=str(DEMO_SPLIT))
    weights = weights or str(REPO_ROOT / "models" / "model.pt")
    base = {
        "ckpt_path": weights,
        "datalist_file": datalist_file,
        "split": split,
        "eval_dir": str(out),
        "num_samples": int(num_samples),
        "device": "$torch.device('cpu')",
        "copy_from": "",
        "figures": False,
    }
    predictions, seconds = {}, {}
    for seed in seeds:
        for path in paths:
            amp, channels_last = PATHS[path]
            method = _method(path, seed)
            folder = out / "syntheses" / method
            predictions[method] = str(folder)
            if folder.is_dir() and any(folder.glob("*_syn_*.nii.gz")):
                print(f"{method}: kept from an earlier run ({folder})", flush=True)
                continue
            parser = load_config(
                [str(REPO_ROOT / c) for c in INFER_CONFIGS],
                {**base, "seed": int(seed), "amp": amp, "channels_last": channels_last, "output_dir": str(folder)},
            )
            start = time.perf_counter()
            parser.get_parsed_content("evaluator").run()
            seconds[method] = time.perf_counter() - start
            print(f"{method}: {seconds[method]:.1f} s", flush=True)
    first = next(iter(predictions))
    parser = load_config(
        [str(REPO_ROOT / c) for c in INFER_CONFIGS],
        {
            **base,
            "output_dir": predictions[first],
            "baseline_dirs": {k: v for k, v in predictions.items() if k != first},
        },
    )
    # the evaluation names the output_dir's method "mudiff"; rename it back after reading
    evaluation = parser.get_parsed_content("evaluation")
    files = evaluation.run().files
    table = read_slice_rows(Path(files["per_slice"]))
    table[first] = table.pop("mudiff")
    result = compare(table, list(paths), list(seeds))
    result.update(
        {
            "weights": weights,
            "split": split,
            "datalist_file": datalist_file,
            "seeds": list(seeds),
            "num_samples": int(num_samples),
            "threads": torch.get_num_threads(),
            "synthesis_seconds": seconds,
            "indistinguishable": verdicts(result),
        }
    )
    print(format_result(result))
    print("indistinguishable from fp32: " + json.dumps(result["indistinguishable"]))
    (out / "precision_study.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out / 'precision_study.json'}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    import fire

    def _cli(
        brats_dir: str | None = None,
        datalist_file: str | None = None,
        split: str = "validation",
        weights: str | None = None,
        seeds: Any = "0,1,2",
        paths: Any = "fp32,bf16+channels_last",
        num_samples: int = 1,
        out_dir: str = "eval/precision",
        threads: int | None = None,
    ) -> None:
        from scripts.cli_args import parse_list

        run_study(
            brats_dir=brats_dir,
            datalist_file=datalist_file,
            split=split,
            weights=weights,
            seeds=[int(s) for s in parse_list(seeds, "seeds")],
            paths=[str(p) for p in parse_list(paths, "paths")],
            num_samples=num_samples,
            out_dir=out_dir,
            threads=threads,
        )

    fire.Fire(_cli, command=list(argv) if argv is not None else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
