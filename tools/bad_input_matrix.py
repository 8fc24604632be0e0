"""Run every entry point on a list of real users' mistakes and count the ones that end in one clean ``error:`` line.

    python -m tools.bad_input_matrix [--out eval/bad_inputs.json] [--only cli,bundle] [--timeout 180]

Each case is a fresh subprocess on the embedded real subjects (shipped FLAIR weights); nothing is written outside a
temporary folder. A case is *clean* when the command exits non-zero, prints no traceback, its last stderr line starts
with ``error:``, that line names what it should (a file, a key or a value), and no output file was left behind.
Prints a table and writes JSON: the numbers quoted for the error policy (issue "every mistake gets one clear line")
come from here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SUBJECT = ROOT / "sample_data" / "tcga_brats_space" / "TCGA-DU-7294"
WEIGHTS = ROOT / "models" / "brats_flair" / "model.pt"
T1CE_WEIGHTS = ROOT / "models" / "model.pt"
CLI = [sys.executable, "-m", "scripts", "synthesize"]
BUNDLE = [sys.executable, "-m", "monai.bundle", "run"]
INFERENCE = ["--config_file", "configs/inference.yaml"]


@dataclass
class Case:
    """One mistake: the command's extra arguments (``{tmp}`` is the case's folder) and what its line must name."""

    name: str
    entry: str  # cli | bundle | training | datalist | evaluate
    argv: list[str]
    expect: str
    setup: Callable[[Path], None] | None = None
    outputs: list[str] = field(default_factory=lambda: ["{tmp}/out"])


def _copy_subject(tmp: Path, drop: str | None = None) -> Path:
    folder = tmp / "subject" / SUBJECT.name
    folder.mkdir(parents=True)
    for f in SUBJECT.glob("TCGA-DU-7294_*.nii.gz"):
        if drop is None or f"_{drop}_" not in f.name:
            shutil.copy(f, folder / f.name)
    return folder


def _nan_subject(tmp: Path) -> None:
    folder = _copy_subject(tmp)
    path = folder / "TCGA-DU-7294_t2_bet.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[data.shape[0] // 2, data.shape[1] // 2, data.shape[2] // 2] = np.nan
    header = img.header.copy()
    header.set_data_dtype(np.float32)  # the original int16 header would store the NaN as 0
    header.set_slope_inter(1.0, 0.0)
    nib.save(nib.Nifti1Image(data, img.affine, header), path)


def _other_grid(tmp: Path) -> None:
    folder = _copy_subject(tmp)
    path = folder / "TCGA-DU-7294_t2_bet.nii.gz"
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[:-4], img.affine), path)


def _empty_file(tmp: Path) -> None:
    folder = _copy_subject(tmp)
    (folder / "TCGA-DU-7294_t2_bet.nii.gz").write_bytes(b"")


def _text_weights(tmp: Path) -> None:
    (tmp / "weights.pt").write_text("not a checkpoint\n")


def _pickled_weights(tmp: Path) -> None:
    import argparse

    import torch

    torch.save({"state": argparse.Namespace(a=1)}, tmp / "weights.pt")  # a class weights_only refuses


def _datalist(tmp: Path, drop: str | None = None, nan: bool = False) -> None:
    folder = _copy_subject(tmp)
    if nan:
        _nan_subject(tmp / "nan")
        folder = tmp / "nan" / "subject" / SUBJECT.name
    item = {"subject": SUBJECT.name}
    for contrast, tag in (("t1", "t1"), ("t1ce", "t1c"), ("t2", "t2"), ("flair", "fla")):
        if contrast != drop:
            item[contrast] = str(folder / f"TCGA-DU-7294_{tag}_bet.nii.gz")
    (tmp / "datalist.json").write_text(json.dumps({"test": [item], "training": [item], "validation": [item]}))


UNWRITABLE = "/proc/mudiff_unwritable"  # not creatable even by root (these checks often run as root)


def cases() -> list[Case]:
    subj = ["--subject_dirs", "{tmp}/subject/" + SUBJECT.name]
    cli = ["--weights", str(WEIGHTS), *subj, "--out_dir", "{tmp}/out"]
    copy = _copy_subject
    bundle = [*INFERENCE, "--ckpt_path", str(WEIGHTS), "--datalist_file", "{tmp}/datalist.json"]
    bundle += ["--output_dir", "{tmp}/out"]
    values = [  # (CLI option, config key, value, what the line names)
        ("slice_mode", "slice_mode", "volumee", "volumee"),
        ("batch_size", "infer_batch_size", "0", "batch_size"),
        ("reader", "reader", "foo", "foo"),
        ("spatial_size", "spatial_size", "abc", "spatial_size"),
        ("num_slices", "num_slices", "-5", "num_slices"),
        ("seed", "seed", "abc", "seed"),
        ("num_samples", "num_samples", "0", "num_samples"),
    ]
    out = [Case(f"cli --{o} {v}", "cli", [*cli, f"--{o}", v], e, copy) for o, _, v, e in values]
    out += [Case(f"bundle --{k} {v}", "bundle", [*bundle, f"--{k}", v], e, _datalist) for _, k, v, e in values]
    out += [
        Case("cli --device cuda (no GPU)", "cli", [*cli, "--device", "cuda"], "CUDA", copy),
        Case(
            "cli weights missing", "cli", [*subj, "--out_dir", "{tmp}/out", "--weights", "{tmp}/no.pt"], "no.pt", copy
        ),
        Case(
            "cli weights a text file",
            "cli",
            [*subj, "--weights", "{tmp}/weights.pt", "--out_dir", "{tmp}/out"],
            "weights.pt",
            lambda t: (copy(t), _text_weights(t)),
        ),
        Case(
            "cli weights a pickled object",
            "cli",
            [*subj, "--weights", "{tmp}/weights.pt", "--out_dir", "{tmp}/out"],
            "weights.pt",
            lambda t: (copy(t), _pickled_weights(t)),
        ),
        Case(
            "cli T1ce weights asked for FLAIR",
            "cli",
            [*subj, "--weights", str(T1CE_WEIGHTS), "--task", "brats_flair", "--out_dir", "{tmp}/out"],
            "task",
            copy,
        ),
        Case(
            "cli subject folder missing",
            "cli",
            ["--weights", str(WEIGHTS), "--subject_dirs", "{tmp}/nowhere", "--out_dir", "{tmp}/out"],
            "nowhere",
        ),
        Case("cli subject lacks a contrast", "cli", cli, "t2", lambda t: _copy_subject(t, drop="t2")),
        Case("cli NaN voxel", "cli", cli, "NaN", _nan_subject),
        Case("cli inputs on different grids", "cli", cli, "grid", _other_grid),
        Case("cli empty NIfTI file", "cli", cli, "t2_bet.nii.gz", _empty_file),
        Case(
            "cli output folder is a file",
            "cli",
            [*subj, "--weights", str(WEIGHTS), "--out_dir", "{tmp}/file"],
            "file",
            lambda t: (copy(t), (t / "file").write_text("x")),
        ),
        Case(
            "cli output folder not writable",
            "cli",
            [*subj, "--weights", str(WEIGHTS), "--out_dir", UNWRITABLE],
            "mudiff_unwritable",
            copy,
        ),
        Case("cli unknown option", "cli", [*cli, "--num_sample", "2"], "num_sample", copy),
        Case("bundle unknown key --weights", "bundle", [*bundle, "--weights", "{tmp}/x.pt"], "weights", _datalist),
        Case("bundle typo --num_sample", "bundle", [*bundle, "--num_sample", "2"], "num_sample", _datalist),
        Case(
            "bundle weights missing",
            "bundle",
            [
                *INFERENCE,
                "--ckpt_path",
                "{tmp}/no.pt",
                "--datalist_file",
                "{tmp}/datalist.json",
                "--output_dir",
                "{tmp}/out",
            ],
            "no.pt",
            _datalist,
        ),
        Case("bundle datalist lacks a contrast", "bundle", bundle, "t2", lambda t: _datalist(t, drop="t2")),
        Case("bundle NaN voxel", "bundle", bundle, "NaN", lambda t: _datalist(t, nan=True)),
        Case("bundle empty split", "bundle", [*bundle, "--split", "nosuchsplit"], "nosuchsplit", _datalist),
        Case(
            "training typo --epoch",
            "training",
            ["training", "--config_file", "configs/train.yaml", "--epoch", "1", "--ckpt_dir", "{tmp}/out"],
            "epoch",
        ),
        Case(
            "training datalist missing",
            "training",
            [
                "training",
                "--config_file",
                "configs/train.yaml",
                "--datalist_file",
                "{tmp}/none.json",
                "--ckpt_dir",
                "{tmp}/out",
            ],
            "none.json",
        ),
        Case(
            "training checkpoint folder not writable",
            "training",
            [
                "training",
                "--config_file",
                "configs/train.yaml",
                "--ckpt_dir",
                UNWRITABLE + "/ckpt",
                "--epochs",
                "1",
                "--output_dir",
                "{tmp}/out",
            ],
            "mudiff_unwritable",
        ),
        Case(
            "datalist output not writable",
            "datalist",
            ["--data_dir", "sample_data/brats18", "--output", UNWRITABLE + "/d.json"],
            "mudiff_unwritable",
        ),
        Case(
            "datalist folder missing",
            "datalist",
            ["--data_dir", "{tmp}/nowhere", "--output", "{tmp}/out/d.json"],
            "nowhere",
        ),
        Case(
            "evaluate prediction folder missing",
            "evaluate",
            ["--pred_dir", "{tmp}/nowhere", "--ref_dir", "sample_data/brats18", "--out_dir", "{tmp}/out"],
            "nowhere",
        ),
    ]
    return out


COMMANDS = {
    "cli": CLI,
    "bundle": [*BUNDLE],
    "training": [sys.executable, "-m", "monai.bundle", "run"],
    "datalist": [sys.executable, "-m", "scripts", "prepare_datalist"],
    "evaluate": [sys.executable, "-m", "scripts", "evaluate"],
}


def run_case(case: Case, timeout: float) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bad_input_"))
    try:
        if case.setup is not None:
            case.setup(tmp)
        argv = [*COMMANDS[case.entry], *(a.replace("{tmp}", str(tmp)) for a in case.argv)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        start = time.perf_counter()
        try:
            proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            code, stdout, stderr = None, str(exc.stdout or ""), str(exc.stderr or "")
        seconds = time.perf_counter() - start
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else ""
        left = [str(p) for o in case.outputs for p in Path(o.replace("{tmp}", str(tmp))).rglob("*") if p.is_file()]
        checks = {
            "failed": code not in (0, None),
            "no_traceback": "Traceback" not in stdout + stderr,
            "error_line": last.startswith("error: "),
            "names_it": case.expect.lower() in last.lower(),
            "nothing_written": not left,
        }
        return {
            "case": case.name,
            "entry": case.entry,
            "exit": code,
            "seconds": round(seconds, 1),
            "stderr_lines": len(lines),
            "clean": all(checks.values()),
            "checks": checks,
            "line": last[:300],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="eval/bad_inputs.json")
    parser.add_argument("--only", default="", help="comma-separated entries: cli,bundle,training,datalist,evaluate")
    parser.add_argument("--timeout", type=float, default=180.0)
    parser.add_argument("--match", default="", help="only the cases whose name contains this text")
    args = parser.parse_args(argv)
    wanted = {e for e in args.only.split(",") if e}
    rows = []
    for case in cases():
        if (wanted and case.entry not in wanted) or args.match not in case.name:
            continue
        row = run_case(case, args.timeout)
        rows.append(row)
        mark = "clean" if row["clean"] else "NOT clean: " + ", ".join(k for k, v in row["checks"].items() if not v)
        print(
            f"{row['case']:<44} exit {row['exit']!s:>4} {row['seconds']:6.1f}s  {mark}\n    {row['line']}", flush=True
        )
    clean = sum(r["clean"] for r in rows)
    print(f"\n{clean} of {len(rows)} mistakes end in one clean error line")
    for entry in sorted({r["entry"] for r in rows}):
        part = [r for r in rows if r["entry"] == entry]
        print(f"  {entry:<9} {sum(r['clean'] for r in part)} / {len(part)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"clean": clean, "total": len(rows), "cases": rows}, indent=1) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
