"""Report PNGs and result tables on real MRI (TCGA-DU-7294; the largest lesion area is on axial slice 113)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import REPO_ROOT
from PIL import Image
from scripts.evaluation.evaluate import evaluate_methods
from scripts.evaluation.matching import load_volume
from scripts.evaluation.metrics import percentile_normalize
from scripts.evaluation.report import figure_size_px, pick_report_slices, render_subject_figure
from scripts.evaluation.tables import atomic_write_many, format_table, write_results

REPO = REPO_ROOT

TCGA = REPO.parent / "shared" / "data" / "tcga_brats_space" / "TCGA-DU-7294"
needs_data = pytest.mark.skipif(not TCGA.is_dir(), reason="../shared/data is absent")


@pytest.fixture(scope="module")
def volumes():
    out = {k: load_volume(TCGA / f"TCGA-DU-7294_{v}_bet.nii.gz")[0] for k, v in {"t1": "t1", "t1ce": "t1c"}.items()}
    out["lesion"] = load_volume(TCGA / "simple.nii.gz")[0] > 0
    return out


@needs_data
def test_slice_choice(volumes):
    assert pick_report_slices(volumes["lesion"], None) == [113]
    assert pick_report_slices(volumes["lesion"], None, count=3) == [113, 114, 115]  # areas 937, 937, 929
    brain = volumes["t1"] != 0  # brain spans z = 9..139 -> middle 74
    assert pick_report_slices(None, brain) == [74]
    assert pick_report_slices(np.zeros_like(brain), brain) == [74]  # empty lesion: fall back to the brain


@needs_data
def test_png_has_expected_size_and_content(volumes, tmp_path):
    t1, t1ce = percentile_normalize(volumes["t1"]), percentile_normalize(volumes["t1ce"])
    inputs = {"t1ce": t1ce, "t2": t1ce, "flair": t1ce}
    path = tmp_path / "subject.png"
    size = render_subject_figure(
        path, inputs, t1ce, t1, lesion=volumes["lesion"], uncertainty=np.abs(t1ce - t1), title="copy | TCGA-DU-7294"
    )
    assert size == figure_size_px(7, 1) == (1540, 290)
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (1540, 290)
        pixels = np.asarray(png.convert("RGB"))
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    assert red.sum() > 500  # the lesion outline is drawn
    assert pixels.std() > 30  # images, not a blank canvas
    two_rows = render_subject_figure(tmp_path / "rows.png", inputs, t1ce, t1, slices=[60, 80])
    assert two_rows == figure_size_px(6, 2) == (1320, 530)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.png", "subject.png"]  # no temp files left


def test_png_bad_input(tmp_path):
    a = np.zeros((20, 20, 5), np.float32)
    with pytest.raises(ValueError, match="input t2 has shape"):
        render_subject_figure(tmp_path / "x.png", {"t2": np.zeros((20, 20, 4))}, a, a, slices=[0])
    assert list(tmp_path.iterdir()) == []  # nothing written for a bad input
    made = render_subject_figure(tmp_path / "new" / "x.png", {"t2": a}, a, a, slices=[0])
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["x.png"] and min(made) > 0


@needs_data
def test_tables_for_several_methods(volumes, tmp_path):
    """Arrays in, rows/summary out: a second method is just more rows; CSV and JSON round-trip."""
    crop = np.s_[100:170, 100:180, 100:124]
    ref = volumes["t1"][crop]
    lesion = volumes["lesion"][crop]
    noisy = ref + np.random.default_rng(0).normal(0, 20, ref.shape).astype(np.float32) * (ref != 0)
    result = evaluate_methods(
        {"copy_t1ce": {"s1": volumes["t1ce"][crop]}, "noisy_t1": {"s1": noisy}},
        {"s1": ref},
        lesion_masks={"s1": lesion},
        contrast="t1",
        num_slices=12,  # 3D SSIM needs a slab of at least 11 slices (its 11-wide window)
    )
    assert len(result.slice_rows) == 24 and len(result.subject_rows) == 2
    stats = result.summary["noisy_t1"]["t1"]["slice_level"]["paper_brain_psnr"]
    values = [r["paper_brain_psnr"] for r in result.slice_rows if r["method"] == "noisy_t1"]
    assert stats["mean"] == pytest.approx(np.nanmean(values)) and stats["std"] == pytest.approx(np.nanstd(values))
    text = result.tables()
    assert "copy_t1ce" in text and "noisy_t1" in text and "±" in text and "ssim3d_lesion" in text
    paths = write_results(tmp_path, result.slice_rows, result.subject_rows, result.summary)
    with open(paths["per_slice"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 24 and float(rows[0]["paper_brain_psnr"]) == result.slice_rows[0]["paper_brain_psnr"]
    summary = json.loads(paths["summary"].read_text())
    assert summary["results"]["noisy_t1"]["t1"]["subject_level"]["ssim3d_lesion"]["n"] == 1


def test_format_table_and_atomic_writes(tmp_path):
    summary = {"m": {"t1": {"slice_level": {"psnr": {"mean": 20.0, "std": 1.5, "n": 3}}}}}
    assert "20.000 ± 1.500" in format_table(summary, ["psnr", "ssim"]) and " - " in format_table(summary, ["ssim"])
    target = tmp_path / "a.txt"
    target.write_text("old")

    with pytest.raises(TypeError):
        atomic_write_many({target: b"new", tmp_path / "b.txt": 123})  # second payload is not bytes
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    atomic_write_many({target: b"new"})
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
