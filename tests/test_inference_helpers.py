"""Helpers (no tests here) shared by the inference tests: a tiny MU-Diff with non-trivial random weights, its
config overlay, and small real subjects cropped from the embedded sample (so whole-volume runs take a second)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from scripts.networks.critic import TimeConditionedCritic
from scripts.networks.mudiff import MUDiff

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO_ROOT / "sample_data"
INFERENCE_CONFIG = str(REPO_ROOT / "configs" / "inference.yaml")
#: a corner of the TCGA brain (left edge: background and brain), 5 axial slices
CROP = (slice(0, 48), slice(50, 106), slice(36, 41))

#: network + data keys of the tiny test configuration (a config overlay on configs/inference.yaml)
TINY = {
    "image_size": 32,
    "spatial_size": 32,
    "num_slices": 4,
    "nf": 8,
    "ch_mult": [1, 2],
    "num_res_blocks": 1,
    "n_mlp": 1,
    "z_emb_dim": 32,
    "nz": 16,
    "ngf": 8,
    "critic_blocks": 3,
    "infer_batch_size": 4,
}
TINY_NET = {k: TINY[k] for k in ("image_size", "nf", "ch_mult", "num_res_blocks", "n_mlp", "z_emb_dim", "nz")}


def tiny_network(seed: int = 0, **overrides) -> MUDiff:
    """A tiny MUDiff whose weights are all random (the default init zeroes output layers, which would make every
    synthesis constant and every standard deviation zero)."""
    torch.manual_seed(seed)
    net = MUDiff(**{**TINY_NET, **overrides}).eval()
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 1.0 / p[0].numel() ** 0.5)
    return net


def tiny_critic(seed: int = 0) -> TimeConditionedCritic:
    torch.manual_seed(seed)
    return TimeConditionedCritic(ngf=TINY["ngf"], num_blocks=TINY["critic_blocks"]).eval()


def write_overlay(folder: Path, **extra) -> str:
    """The tiny configuration as a YAML overlay file (JSON is valid YAML)."""
    path = folder / "tiny.yaml"
    path.write_text(json.dumps({**TINY, **extra}), encoding="utf-8")
    return str(path)


def sample_item(subject: str) -> dict[str, str]:
    content = json.loads((SAMPLE_DIR / "datalist.json").read_text(encoding="utf-8"))
    for items in content.values():
        if isinstance(items, list):
            for item in items:
                if isinstance(item, dict) and item.get("subject") == subject:
                    return {k: (v if k == "subject" else str(SAMPLE_DIR / v)) for k, v in item.items()}
    raise KeyError(subject)


def crop_subject(subject: str, folder: Path, box: tuple[slice, slice, slice], name: str | None = None) -> dict:
    """Crop every file of a sample subject to ``box`` (voxel indices; the affine follows) into ``folder/<name>``;
    returns the new datalist item. The data stay real MRI, just smaller."""
    item = sample_item(subject)
    sid = name or subject
    out = folder / sid
    out.mkdir(parents=True, exist_ok=True)
    new = {"subject": sid}
    for key, path in item.items():
        if key == "subject":
            continue
        img = nib.load(path)
        cropped = img.slicer[box]
        data = np.asarray(cropped.dataobj)
        target = out / f"{sid}_{key}.nii.gz"
        new_img = nib.Nifti1Image(data, cropped.affine, cropped.header)
        nib.save(new_img, str(target))
        new[key] = str(target)
    return new


def file_hashes(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}
