"""Result tables: per-slice / per-subject CSV, summary JSON and a printed method x metric table.

Rows are flat dicts with the label columns ``method``, ``subject``, ``contrast`` (and ``slice`` for per-slice rows)
plus one column per metric, so another method is just more rows. Every file is written atomically, and a set of
files is committed together: all are written to temporary files first and only then renamed into place.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from scripts.data.io_utils import ensure_writable_dir, staged_files
from scripts.evaluation.paper_protocol import aggregate_nan

__all__ = ["LABEL_COLUMNS", "atomic_write_many", "format_table", "rows_to_csv", "summarize", "write_results"]

LABEL_COLUMNS: tuple[str, ...] = ("method", "subject", "contrast", "slice")
SLICE_CSV = "metrics_per_slice.csv"
SUBJECT_CSV = "metrics_per_subject.csv"
SUMMARY_JSON = "summary.json"


def atomic_write_many(files: Mapping[Path, bytes]) -> None:
    """Write several files so that either all appear complete or none is replaced.

    Each is written to a temporary file in its own folder and fsynced; only when all succeeded are they renamed
    (``os.replace``) into place. On failure the temporary files are removed and the targets stay untouched.
    """
    with staged_files({Path(t): t for t in files}) as temps:
        for target, payload in files.items():
            with open(temps[Path(target)], "wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())


def _columns(rows: Sequence[Mapping[str, object]]) -> list[str]:
    labels = [c for c in LABEL_COLUMNS if any(c in row for row in rows)]
    metrics: list[str] = []
    for row in rows:
        metrics.extend(k for k in row if k not in LABEL_COLUMNS and k not in metrics)
    return labels + metrics


def rows_to_csv(rows: Sequence[Mapping[str, object]]) -> bytes:
    """CSV bytes with label columns first, then metric columns in first-seen order; floats at full precision."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=_columns(rows), restval="", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(float(v)) if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue().encode("utf-8")


def _metric_keys(rows: Sequence[Mapping[str, object]]) -> list[str]:
    return [c for c in _columns(rows) if c not in LABEL_COLUMNS and c != "n_slices"]


def summarize(
    slice_rows: Sequence[Mapping[str, object]], subject_rows: Sequence[Mapping[str, object]]
) -> dict[str, dict[str, dict[str, dict[str, dict[str, float]]]]]:
    """``{method: {contrast: {"slice_level"|"subject_level": {metric: {mean, std, n}}}}}``.

    Slice level pools all slices of all subjects (the paper's aggregation); subject level averages subjects.
    Both use nan-aware mean and population std.
    """
    out: dict = {}
    for level, rows in (("slice_level", slice_rows), ("subject_level", subject_rows)):
        keys = _metric_keys(rows)
        groups: dict[tuple[str, str], list[Mapping[str, object]]] = {}
        for row in rows:
            groups.setdefault((str(row["method"]), str(row.get("contrast", ""))), []).append(row)
        for (method, contrast), members in groups.items():
            stats = {k: aggregate_nan([float(r.get(k, math.nan)) for r in members]) for k in keys}
            out.setdefault(method, {}).setdefault(contrast, {})[level] = stats
    return out


def _json_safe(value: object) -> object:
    """Replace NaN/inf by None so the summary is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def format_table(summary: Mapping, metrics: Sequence[str], level: str = "slice_level", digits: int = 3) -> str:
    """A plain-text table, one row per (method, contrast), one column per metric, cells ``mean ± std``."""
    header = ["method", "contrast", *metrics]
    body = []
    for method, per_contrast in summary.items():
        for contrast, levels in per_contrast.items():
            stats = levels.get(level, {})
            cells = []
            for metric in metrics:
                entry = stats.get(metric)
                if entry is None or entry["n"] == 0:
                    cells.append("-")
                else:
                    cells.append(f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}")
            body.append([method, contrast, *cells])
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) for row in [header, *body]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_results(
    out_dir: str | Path,
    slice_rows: Sequence[Mapping[str, object]],
    subject_rows: Sequence[Mapping[str, object]],
    summary: Mapping,
    extra: Mapping[str, object] | None = None,
    more_files: Iterable[tuple[Path, bytes]] = (),
) -> dict[str, Path]:
    """Write ``metrics_per_slice.csv``, ``metrics_per_subject.csv`` and ``summary.json`` (plus ``more_files``)
    atomically and together. ``extra`` goes into the JSON beside ``results`` (configuration, definitions)."""
    folder = ensure_writable_dir(out_dir)
    paths = {"per_slice": folder / SLICE_CSV, "per_subject": folder / SUBJECT_CSV, "summary": folder / SUMMARY_JSON}
    document = {"results": summary, **(extra or {})}
    payloads = {
        paths["per_slice"]: rows_to_csv(slice_rows),
        paths["per_subject"]: rows_to_csv(subject_rows),
        paths["summary"]: (json.dumps(_json_safe(document), indent=2, allow_nan=False) + "\n").encode("utf-8"),
    }
    payloads.update(dict(more_files))
    atomic_write_many(payloads)
    return paths
