"""The markdown tables of docs/README.md ("Demo models") from a main-job report folder, so every number there is
copied from a run, not typed.

    python -m tools.demo_tables eval/demo/brats_t1ce/report [--names "{'mudiff': 'MU-Diff (demo)'}"]

Prints: the paper-protocol table (brain / tumour / enhancing, mean ± std over subjects of the per-subject means),
the float and 3D SSIM table, the per-subject rows, and the slice-level means the main job prints.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

NAMES = {"mudiff": "MU-Diff (demo)", "unet": "U-Net (same budget)"}


def _cell(stats: Mapping[str, Any] | None, digits: int) -> str:
    if not stats or stats.get("mean") is None:
        return "—"
    return f"{stats['mean']:.{digits}f} ± {stats.get('std', 0.0):.{digits}f}"


def _triple(level: Mapping[str, Any], metrics: Sequence[str]) -> str:
    return " / ".join(_cell(level.get(m), 2 if m.endswith("psnr") else 3) for m in metrics)


def _paper_cells(subj: Mapping[str, Any]) -> list[str]:
    return [
        _triple(subj, [f"paper_{r}_{m}" for m in ("psnr", "ssim", "mae")]) for r in ("brain", "lesion", "enhancing")
    ]


def _float_cells(subj: Mapping[str, Any]) -> list[str]:
    return [
        _triple(subj, ["float_brain_psnr", "float_brain_ssim"]),
        _triple(subj, ["float_lesion_psnr", "float_lesion_ssim"]),
        " / ".join(_cell(subj.get(f"ssim3d_{r}"), 3) for r in ("lesion", "healthy", "enhancing")),
    ]


def _method_table(
    header: Sequence[str],
    results: Mapping[str, Any],
    label: Mapping[str, str],
    cells: Callable[[Mapping[str, Any]], list[str]],
) -> list[str]:
    """One row per method (and contrast) of the subject-level statistics."""
    out = ["| method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for method, contrasts in results.items():
        for levels in contrasts.values():
            out.append(f"| {label[method]} | " + " | ".join(cells(levels["subject_level"])) + " |")
    return out


def tables(report: str | Path, names: Mapping[str, str] | None = None) -> str:
    names = {**NAMES, **dict(names or {})}
    results = json.loads((Path(report) / "summary.json").read_text(encoding="utf-8"))["results"]
    label = {m: f"copy {m[5:].upper()}" if m.startswith("copy_") else names.get(m, m) for m in results}
    out = _method_table(
        ["brain PSNR / SSIM / MAE", "tumour PSNR / SSIM / MAE", "enhancing PSNR / SSIM / MAE"],
        results,
        label,
        _paper_cells,
    )
    out += [""] + _method_table(
        ["float brain PSNR / SSIM", "float tumour PSNR / SSIM", "3D SSIM tumour / outside / enhancing"],
        results,
        label,
        _float_cells,
    )
    with open(Path(report) / "metrics_per_subject.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    out += ["", "| subject | method | brain PSNR / SSIM | tumour PSNR / SSIM |", "|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (list(results).index(r["method"]), r["subject"])):
        out.append(
            f"| {row['subject']} | {label[row['method']]} | {float(row['paper_brain_psnr']):.2f} / "
            f"{float(row['paper_brain_ssim']):.3f} | {float(row['paper_lesion_psnr']):.2f} / "
            f"{float(row['paper_lesion_ssim']):.3f} |"
        )
    out.append("")
    slice_means = []
    for metric in ("paper_brain_psnr", "paper_brain_ssim", "paper_brain_mae", "paper_lesion_psnr", "paper_lesion_ssim"):
        values = [
            f"{levels['slice_level'][metric]['mean']:.{2 if metric.endswith('psnr') else 3}f}"
            for contrasts in results.values()
            for levels in contrasts.values()
        ]
        slice_means.append(f"{metric.removeprefix('paper_')} {' / '.join(values)}")
    out.append(f"Over slices ({' / '.join(label[m] for m in results)}): " + "; ".join(slice_means))
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    import fire

    fire.Fire(lambda report, names=None: print(tables(report, names)), command=list(argv) if argv else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
