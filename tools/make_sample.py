"""Build ``sample_data/``: a compact copy of the real subjects in ``../shared/data`` (reproducible).

    python -m tools.make_sample --source ../shared/data --output sample_data

What it does, per subject:
- keeps the original folder layout and file names (so dataset discovery is exercised on real names);
- axial range: volumes with >= 80 axial slices keep exactly the 80 slices the reference takes from the full
  volume (``start = (D - 80) // 2``), so reference mode on the sample sees the same anatomy as on the source;
  shorter volumes (ISLES22 DWI, 73 slices) keep every slice;
- in-plane: the brain bounding box (non-zero in any image of the slab) plus a 4-voxel margin;
- files on another grid (the ISLES22 FLAIR) are cropped on their own grid to the world-space box of the main
  crop (+2 voxels), so resampling still has everything it needs;
- the affine (sform and qform, with their codes) is shifted by the crop offset: world coordinates are unchanged;
- storage: integer images stay as they are (lossless); float images become int16 with ``scl_slope``: exactly
  lossless when the values lie on a lattice ``k * step`` (ISLES22 FLAIR), otherwise ``slope = max|v| / 32767``
  (relative error <= 1.5e-5 of the range) with ``scl_inter = 0`` so background stays exactly 0 and every non-zero
  voxel stays non-zero; masks become uint8. Files are gzip level 9.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field

import fire
import nibabel as nib
import numpy as np
from scripts.data.errors import DataError
from scripts.data.io_utils import save_nifti, write_json

__all__ = ["SampleSubject", "SAMPLE_SUBJECTS", "crop_box", "quantize", "make_sample"]

logger = logging.getLogger(__name__)
NUM_SLICES = 80
MARGIN = 4
OTHER_GRID_MARGIN = 2


@dataclass(frozen=True)
class SampleSubject:
    """One subject to copy: folder (relative to the source root) and datalist key -> file name."""

    folder: str
    subject: str
    images: dict[str, str]
    masks: dict[str, str]
    extra_files: Sequence[str] = field(default_factory=tuple)
    #: False keeps the whole axial plane: reference mode resizes the whole plane, so subjects scored with a model
    #: trained on full BraTS frames must keep that frame (zeros cost almost nothing once gzipped)
    crop_plane: bool = True


SAMPLE_SUBJECTS: tuple[SampleSubject, ...] = (
    SampleSubject(
        "tcga_brats_space/TCGA-DU-7294",
        "TCGA-DU-7294",
        {k: f"TCGA-DU-7294_{v}_bet.nii.gz" for k, v in (("t1", "t1"), ("t1ce", "t1c"), ("t2", "t2"), ("flair", "fla"))},
        {"lesion": "simple.nii.gz"},
    ),
    SampleSubject(
        "brats2023_naming/BraTS-GLI-00001-000",
        "BraTS-GLI-00001-000",
        {
            k: f"BraTS-GLI-00001-000-{v}.nii.gz"
            for k, v in (("t1", "t1n"), ("t1ce", "t1c"), ("t2", "t2w"), ("flair", "t2f"))
        },
        {"lesion": "BraTS-GLI-00001-000-mask.nii.gz"},
    ),
    *(
        SampleSubject(
            f"open_ms/{p}",
            p,
            {
                k: f"{v}_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
                for k, v in (("t1", "T1"), ("t1ce", "T1POST"), ("t2", "T2"), ("flair", "FLAIR"))
            },
            {"lesion": "GOLD_STANDARD_N4_noneck_reduced_winsor_regtoFLAIR_regtoMNI.nii.gz"},
        )
        for p in ("patient07", "patient19")
    ),
    *(
        SampleSubject(
            f"brats18/{b}",
            b,
            {k: f"{b}_{k}.nii.gz" for k in ("t1", "t1ce", "t2", "flair")},
            {"lesion": f"{b}_seg.nii.gz"},
            crop_plane=False,
        )
        for b in ("Brats18_2013_2_1", "Brats18_2013_20_1")
    ),
    SampleSubject(
        "isles22/sub-strokecase0009",
        "sub-strokecase0009",
        {k: f"sub-strokecase0009_ses-0001_{k}.nii.gz" for k in ("dwi", "adc", "flair")},
        {"lesion": "sub-strokecase0009_ses-0001_msk.nii.gz"},
        extra_files=tuple(f"sub-strokecase0009_ses-0001_{k}.json" for k in ("dwi", "adc", "flair")),
    ),
)
#: Splits of the sample. ``test``: the two BraTS 2018 subjects that the shipped demo weights were never trained or
#: validated on (``scripts/data/splits/brats18_demo.json``), scored by the main job. ``training`` / ``validation``:
#: small real subjects of other kinds, so that ``configs/train.yaml`` runs out of the box and the tests can train
#: for a few iterations (one MS subject and one glioma; the other MS subject validates). ``other``: a further
#: glioma cropped in-plane (its lesion mask is a model output, not an expert label). ``isles22``: the DWI/ADC/FLAIR
#: stroke case, for the ISLES-style custom tasks.
SAMPLE_SPLITS = {
    "training": ["patient07", "BraTS-GLI-00001-000"],
    "validation": ["patient19"],
    "test": ["Brats18_2013_2_1", "Brats18_2013_20_1"],
    "other": ["TCGA-DU-7294"],
    "isles22": ["sub-strokecase0009"],
}


def _same_grid(a: nib.Nifti1Image, b: nib.Nifti1Image, atol: float = 1e-3) -> bool:
    return a.shape[:3] == b.shape[:3] and np.allclose(a.affine, b.affine, atol=atol)


def crop_box(
    arrays: Sequence[np.ndarray], affine: np.ndarray, num_slices: int = NUM_SLICES, crop_plane: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Voxel box ``[lo, hi)`` to keep on the main grid: reference axial window, brain bbox + margin in-plane
    (the whole plane when ``crop_plane`` is False)."""
    shape = np.array(arrays[0].shape[:3])
    axial = int(np.flatnonzero(nib.orientations.io_orientation(affine)[:, 0] == 2)[0])
    lo, hi = np.zeros(3, int), shape.copy()
    depth = shape[axial]
    if depth >= num_slices:
        lo[axial] = (depth - num_slices) // 2
        hi[axial] = lo[axial] + num_slices
    window = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    brain = np.zeros(tuple(hi - lo), bool)
    for arr in arrays:
        brain |= arr[window] != 0
    if not brain.any():
        raise DataError("no non-zero voxel in the kept axial window")
    if not crop_plane:
        return lo, hi
    idx = np.argwhere(brain)
    for ax in range(3):
        if ax == axial:
            continue
        lo[ax], hi[ax] = (
            max(0, lo[ax] + idx[:, ax].min() - MARGIN),
            min(shape[ax], lo[ax] + idx[:, ax].max() + 1 + MARGIN),
        )
    return lo, hi


def _box_on_other_grid(lo: np.ndarray, hi: np.ndarray, main: np.ndarray, other: nib.Nifti1Image) -> tuple:
    """Map the main crop box (world space) onto another grid; returns its own ``[lo, hi)``."""
    corners = np.array(
        [
            [x, y, z]
            for x in (lo[0] - 0.5, hi[0] - 0.5)
            for y in (lo[1] - 0.5, hi[1] - 0.5)
            for z in (lo[2] - 0.5, hi[2] - 0.5)
        ]
    )
    world = nib.affines.apply_affine(main, corners)
    vox = nib.affines.apply_affine(np.linalg.inv(other.affine), world)
    shape = np.array(other.shape[:3])
    olo = np.clip(np.floor(vox.min(0)).astype(int) - OTHER_GRID_MARGIN, 0, shape)
    ohi = np.clip(np.ceil(vox.max(0)).astype(int) + 1 + OTHER_GRID_MARGIN, 0, shape)
    return olo, ohi


def quantize(values: np.ndarray) -> tuple[np.ndarray, float]:
    """Float volume -> (int16 array, slope) with ``values ~= q * slope``; zero and non-zero preserved."""
    v = np.asarray(values, dtype=np.float64)
    nonzero = np.abs(v[v != 0])
    if nonzero.size == 0:
        return np.zeros(v.shape, np.int16), 1.0
    uniq = np.unique(nonzero)
    step = float(np.median(np.diff(uniq))) if uniq.size > 1 else float(uniq[0])
    if step > 0 and nonzero.max() / step < 32767:
        k = v / step
        if np.allclose(k, np.round(k), rtol=0, atol=1e-3):
            return np.round(k).astype(np.int16), step  # values on a lattice: lossless
    slope = float(nonzero.max() / 32767.0)
    q = np.round(v / slope)
    lost = (q == 0) & (v != 0)
    q[lost] = np.sign(v[lost])
    return q.astype(np.int16), slope


def _write_cropped(src: nib.Nifti1Image, lo: np.ndarray, hi: np.ndarray, dst: str, is_mask: bool) -> None:
    window = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    data = np.asanyarray(src.dataobj)[window]
    shift = np.eye(4)
    shift[:3, 3] = lo
    header = src.header.copy()
    slope: float | None = None
    if is_mask:
        out = np.rint(data).astype(np.uint8)
    elif np.issubdtype(data.dtype, np.integer):
        out = data
    else:
        out, slope = quantize(data)
    header.set_data_dtype(out.dtype)
    img = nib.Nifti1Image(out, None, header)
    sform, scode = src.header.get_sform(coded=True)
    qform, qcode = src.header.get_qform(coded=True)
    img.set_sform(src.affine @ shift if sform is None else sform @ shift, int(scode))
    img.set_qform(src.affine @ shift if qform is None else qform @ shift, int(qcode))
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    else:
        img.header.set_slope_inter(np.nan, np.nan)
    save_nifti(dst, img)


def make_sample(
    source: str = "../shared/data", output: str = "sample_data", gzip_level: int = 9, num_slices: int = NUM_SLICES
) -> dict:
    """Copy/crop the sample subjects from ``source`` into ``output`` and write ``output/datalist.json``.

    ``num_slices`` < 80 gives a smaller sample (80 slices -> 31.5 MB) on which reference
    mode takes every slice instead of the published 80-slice window (measured: 32 -> 15.7 MB, 20 -> 10.3 MB).
    """
    if not os.path.isdir(source):
        raise DataError(f"{source}: source data folder not found")
    old_level = nib.openers.Opener.default_compresslevel
    nib.openers.Opener.default_compresslevel = gzip_level
    items: dict[str, dict[str, str]] = {}
    try:
        for subj in SAMPLE_SUBJECTS:
            src_dir, dst_dir = os.path.join(source, subj.folder), os.path.join(output, subj.folder)
            imgs = {k: nib.load(os.path.join(src_dir, f)) for k, f in {**subj.images, **subj.masks}.items()}
            main_key = next(iter(subj.images))
            main = imgs[main_key]
            on_main = [k for k in subj.images if _same_grid(imgs[k], main)]
            arrays = [np.asanyarray(imgs[k].dataobj) for k in on_main]
            lo, hi = crop_box(arrays, main.affine, num_slices, subj.crop_plane)
            item = {"subject": subj.subject}
            for key, fname in {**subj.images, **subj.masks}.items():
                is_mask = key in subj.masks
                box = (lo, hi) if _same_grid(imgs[key], main) else _box_on_other_grid(lo, hi, main.affine, imgs[key])
                if is_mask and not _same_grid(imgs[key], main):
                    raise DataError(f"{fname}: mask is not on the grid of {subj.images[main_key]}")
                _write_cropped(imgs[key], *box, os.path.join(dst_dir, fname), is_mask)
                item[key] = os.path.join(subj.folder, fname)
            for fname in subj.extra_files:
                shutil.copyfile(os.path.join(src_dir, fname), os.path.join(dst_dir, fname))
            items[subj.subject] = item
            logger.info("%s: kept box %s-%s of %s", subj.subject, lo.tolist(), hi.tolist(), main.shape)
        lic = os.path.join(source, "open_ms", "LICENSE.txt")
        if os.path.isfile(lic):
            shutil.copyfile(lic, os.path.join(output, "open_ms", "LICENSE.txt"))
    finally:
        nib.openers.Opener.default_compresslevel = old_level
    datalist = {
        "description": "Embedded real sample (see sample_data/README.md); paths relative to this file",
        "layout": "sample",
        "split_method": "fixed by subject (tools/make_sample.py)",
        **{split: [items[s] for s in ids] for split, ids in SAMPLE_SPLITS.items()},
    }
    write_json(os.path.join(output, "datalist.json"), datalist)
    return datalist


def main(source: str = "../shared/data", output: str = "sample_data", num_slices: int = NUM_SLICES) -> None:
    """CLI: rebuild the embedded sample and print its size."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    make_sample(source, output, num_slices=num_slices)
    total = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(output) for f in fs)
    print(f"{output}: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    fire.Fire(main)
