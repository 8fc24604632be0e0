"""Copy-input baseline: the contrast is chosen on reference subjects only, then applied to another subject.

Measured scores (subject-level brain-masked float SSIM, 80 middle slices, each contrast vs the target):
- TCGA-DU-7294, target T1: T1ce 0.695, FLAIR 0.378, T2 -0.250 -> T1ce.
- open_ms patient07, target T2: FLAIR 0.129, T1ce -0.248, T1 -0.272 -> FLAIR; on patient19 FLAIR is also the best
  (-0.077 vs -0.416 / -0.410), so the choice made on patient07 transfers.
- (Not asserted, for the docs: for a FLAIR target patient07 picks T2 (0.129) while patient19 would pick T1 (0.261),
  which is why the choice must come from reference subjects rather than from the test subject.)
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from conftest import REPO_ROOT
from scripts.commands.choose_copy import choose_copy
from scripts.evaluation.copy_baseline import CopySelection, copy_prediction, select_copy_contrast
from scripts.evaluation.matching import load_volume
from scripts.evaluation.metrics import middle_slices, percentile_normalize, volume_float_metrics

REPO = REPO_ROOT

DATA = REPO.parent / "shared" / "data"
TCGA = DATA / "tcga_brats_space" / "TCGA-DU-7294"
OPEN_MS = DATA / "open_ms"
needs_data = pytest.mark.skipif(not TCGA.is_dir(), reason="../shared/data is absent")

TCGA_FILES = {"t1": "t1", "t1ce": "t1c", "t2": "t2", "flair": "fla"}
OPEN_MS_FILES = {"t1": "T1", "t1ce": "T1POST", "t2": "T2", "flair": "FLAIR"}


def _tcga() -> dict[str, np.ndarray]:
    return {k: load_volume(TCGA / f"TCGA-DU-7294_{v}_bet.nii.gz")[0] for k, v in TCGA_FILES.items()}


def _open_ms(patient: str) -> dict[str, np.ndarray]:
    name = "{}_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
    return {k: load_volume(OPEN_MS / patient / name.format(v))[0] for k, v in OPEN_MS_FILES.items()}


@needs_data
def test_t1_target_copies_t1ce_on_tcga():
    selection = select_copy_contrast([_tcga()], "t1", ["t1ce", "t2", "flair"])
    assert isinstance(selection, CopySelection) and selection.contrast == "t1ce"
    assert selection.scores["t1ce"] == pytest.approx(0.695, abs=0.001)
    assert selection.scores["flair"] == pytest.approx(0.378, abs=0.001)
    assert selection.scores["t2"] == pytest.approx(-0.250, abs=0.001)


@needs_data
def test_choice_made_on_one_subject_applies_to_another():
    reference, test_subject = _open_ms("patient07"), _open_ms("patient19")
    candidates = ["t1", "t1ce", "flair"]
    selection = select_copy_contrast([reference], "t2", candidates)
    assert selection.contrast == "flair"
    assert selection.scores["flair"] == pytest.approx(0.129, abs=0.001)
    # Apply to the test subject without its target...
    inputs = {c: test_subject[c] for c in candidates}
    prediction = copy_prediction(inputs, selection)
    np.testing.assert_array_equal(prediction, percentile_normalize(test_subject["flair"]))
    assert prediction.min() == 0.0 and prediction.max() == 1.0
    # ...and check afterwards that it is indeed the best input on that subject too.
    target = percentile_normalize(test_subject["t2"])
    brain, slices = test_subject["t2"] != 0, middle_slices(target.shape[2], 80)
    scores = {
        c: volume_float_metrics(percentile_normalize(test_subject[c]), target, brain, None, slices)[1][
            "float_brain_ssim"
        ]
        for c in candidates
    }
    assert max(scores, key=scores.get) == "flair"
    assert scores["flair"] == pytest.approx(-0.077, abs=0.001)


@needs_data
def test_folder_selection_matches_files_by_contrast(tmp_path):
    """Two subject folders written from cropped real volumes; aliases (t1c, fla) are resolved by the file rule."""
    for subject, box in (("subjA", np.s_[40:200, 30:210, 60:90]), ("subjB", np.s_[40:200, 30:210, 90:120])):
        folder = tmp_path / subject
        folder.mkdir()
        for tag in TCGA_FILES.values():
            image = nib.load(str(TCGA / f"TCGA-DU-7294_{tag}_bet.nii.gz")).slicer[box]
            nib.save(image, str(folder / f"{subject}_{tag}_bet.nii.gz"))
    out = choose_copy(str(tmp_path), "t1", "t1ce,t2,flair", num_slices=None)
    assert out["contrast"] == "t1ce"
    assert out["scores"]["t1ce"] > out["scores"]["flair"] > out["scores"]["t2"]


def test_bad_selection_inputs():
    volume = np.ones((12, 12, 12), np.float32)
    with pytest.raises(ValueError, match="at least one reference subject"):
        select_copy_contrast([], "t1", ["t2"])
    with pytest.raises(KeyError, match="no volume for \\['flair'\\]"):
        select_copy_contrast([{"t1": volume, "t2": volume}], "t1", ["t2", "flair"])
    with pytest.raises(KeyError, match="needs the input contrast 't1ce'"):
        copy_prediction({"t2": volume}, "t1ce")
