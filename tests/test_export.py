"""Bundle export paths of the MUDiff network: verify_net_in_out, ckpt_export (TorchScript) and ONNX.

Exports run at a small configuration (config keys overridden the way a user would on the CLI) and the exported
models must reproduce the PyTorch outputs, with default and explicit (t, z).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT
from scripts.networks import MUDiff

REPO = REPO_ROOT

CONFIG = REPO / "configs" / "inference.yaml"
META = REPO / "configs" / "metadata.json"
TCGA = REPO.parent / "shared" / "data" / "tcga_brats_space" / "TCGA-DU-7294"
SMALL = {"image_size": 32, "nf": 16, "ch_mult": [1, 2], "num_res_blocks": 1}
# docs/README.md's dynamic-batch ONNX export: `--converter_kwargs` of `python -m monai.bundle onnx_export` (a bare
# `--dynamic_axes` is taken as a config override and silently gives a fixed batch of 1)
DYNAMIC_BATCH = (
    "{'input_names': ['image'], 'output_names': ['pred'], "
    "'dynamic_axes': {'image': {0: 'batch'}, 'pred': {0: 'batch'}}}"
)


def _input_image(size: int = 32) -> torch.Tensor:
    """(1, 4, size, size) in [-1, 1]: a real slice [FLAIR, T2, T1, noisy T1ce] when ../shared is present, else a
    seeded synthetic image (export correctness does not depend on the content)."""
    gen = torch.Generator().manual_seed(0)
    if TCGA.is_dir():
        import nibabel as nib

        chans = [
            np.asarray(nib.load(str(TCGA / f"TCGA-DU-7294_{c}_bet.nii.gz")).dataobj[:, :, 77], dtype=np.float32).T
            for c in ("fla", "t2", "t1", "t1c")
        ]
        x = F.interpolate(torch.from_numpy(np.stack(chans))[None], size=(size, size), mode="area")
        lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
        x = (x - lo) / (hi - lo) * 2 - 1
    else:
        x = torch.rand(1, 4, size, size, generator=gen) * 2 - 1
    x[:, 3:] = 0.5 * x[:, 3:] + 0.8 * torch.randn(1, 1, size, size, generator=gen)  # the noisy target channel
    return x


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory) -> tuple[MUDiff, Path]:
    """A small MUDiff whose weights are perturbed (a fresh one outputs ~0, which would hide export errors)."""
    torch.manual_seed(0)
    model = MUDiff(**{k: tuple(v) if isinstance(v, list) else v for k, v in SMALL.items()}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    torch.save(model.state_dict(), path)
    return model, path


def _assert_matches(ours: torch.Tensor, ref: torch.Tensor, what: str) -> None:
    scale = ref.abs().max().item()
    assert scale > 1e-2, f"{what}: reference output too small to compare meaningfully"
    err = (ours - ref).abs().max().item()
    assert err <= 1e-5 * max(scale, 1.0), f"{what}: max abs error {err:.3e} (scale {scale:.3e})"


@pytest.mark.slow
def test_verify_net_in_out_cli():
    """The documented command, run from the bundle root, passes at the published configuration."""
    cmd = [sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def"]
    cmd += ["--meta_file", "configs/metadata.json", "--config_file", "configs/inference.yaml"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


def test_ckpt_export_torchscript_matches_pytorch(small_checkpoint, tmp_path):
    from monai.bundle import ckpt_export

    model, ckpt = small_checkpoint
    ts_path = tmp_path / "model.ts"
    ckpt_export(
        "network_def",
        filepath=str(ts_path),
        ckpt_file=str(ckpt),
        ckpt_path=str(ckpt),  # the config reads the weights' description from ckpt_path (default models/model.pt)
        meta_file=str(META),
        config_file=str(CONFIG),
        **SMALL,
    )
    scripted = torch.jit.load(str(ts_path))
    image = _input_image()
    t, z = torch.tensor([2]), torch.randn(1, model.nz, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _assert_matches(scripted(image), model(image), "TorchScript, default t/z")
        _assert_matches(scripted(image, t, z), model(image, t, z), "TorchScript, explicit t/z")
        x0_g1, x0_g2 = scripted.predict_x0(image[:, 3:], image[:, :3], t, z)
        ref_g1, ref_g2 = model.predict_x0(image[:, 3:], image[:, :3], t, z)
    _assert_matches(x0_g1, ref_g1, "TorchScript G1")
    _assert_matches(x0_g2, ref_g2, "TorchScript G2")


@pytest.mark.slow
def test_onnx_export_matches_pytorch(small_checkpoint, tmp_path):
    import onnxruntime as ort
    from monai.bundle import onnx_export

    model, ckpt = small_checkpoint
    onnx_path = tmp_path / "model.onnx"
    onnx_export(
        "network_def",
        filepath=str(onnx_path),
        ckpt_file=str(ckpt),
        ckpt_path=str(ckpt),  # the config reads the weights' description from ckpt_path (default models/model.pt)
        meta_file=str(META),
        config_file=str(CONFIG),
        input_shape=[1, 4, 32, 32],
        **SMALL,
    )
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    image = _input_image()
    (out,) = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    with torch.no_grad():
        ref = model(image)
    _assert_matches(torch.from_numpy(out), ref, "ONNX Runtime, default t/z")


def _ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _batch3(image: torch.Tensor) -> torch.Tensor:
    """Three different images from one: the original and two flips."""
    return torch.cat([image, image.flip(-1), image.flip(-2)])


@pytest.mark.slow
def test_onnx_export_dynamic_batch_cli(small_checkpoint, tmp_path):
    """The documented dynamic-batch command; the default t = 0, z = 0 path at batch 1 and 3 is finite and matches
    PyTorch. Regression: the exporter's optimizer drops PixelNorm's ``+ 1e-8`` (onnxscript's ``x + 0`` rule), and
    z = 0 gave 0 / 0 = NaN at every batch size."""
    model, ckpt = small_checkpoint
    onnx_path = tmp_path / "model.onnx"
    cmd = [sys.executable, "-m", "monai.bundle", "onnx_export", "network_def", "--filepath", str(onnx_path)]
    cmd += ["--ckpt_file", str(ckpt), "--ckpt_path", str(ckpt), "--meta_file", str(META), "--config_file", str(CONFIG)]
    cmd += ["--input_shape", "[1, 4, 32, 32]", "--converter_kwargs", DYNAMIC_BATCH]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    session = _ort_session(onnx_path)
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["pred"]
    image = _input_image()
    for batch in (image, _batch3(image)):
        (out,) = session.run(["pred"], {"image": batch.numpy()})
        assert out.shape == (batch.shape[0], 1, 32, 32)
        assert np.isfinite(out).all(), f"ONNX Runtime output at batch {batch.shape[0]} is not finite"
        with torch.no_grad():
            ref = model(batch)
        _assert_matches(torch.from_numpy(out), ref, f"ONNX Runtime dynamic batch {batch.shape[0]}, default t/z")


@pytest.mark.slow
def test_onnx_export_dynamic_batch_explicit_t_z(small_checkpoint, tmp_path):
    """(image, t, z) as graph inputs with a dynamic batch: z = 0 rows and random z rows in one batch."""
    from monai.networks.utils import convert_to_onnx

    model, _ = small_checkpoint
    onnx_path = tmp_path / "model_t_z.onnx"
    image = _input_image()
    t, z = torch.tensor([2]), torch.zeros(1, model.nz)
    axes = {name: {0: "batch"} for name in ("image", "t", "z", "pred")}
    convert_to_onnx(
        model,
        [image, t, z],
        input_names=["image", "t", "z"],
        output_names=["pred"],
        dynamic_axes=axes,
        filename=str(onnx_path),
        use_trace=False,  # as monai.bundle onnx_export
    )
    session = _ort_session(onnx_path)
    z3 = torch.cat([torch.zeros(1, model.nz), torch.randn(2, model.nz, generator=torch.Generator().manual_seed(1))])
    for batch, tb, zb in ((image, t, z), (_batch3(image), torch.tensor([2, 0, 3]), z3)):
        (out,) = session.run(["pred"], {"image": batch.numpy(), "t": tb.numpy(), "z": zb.numpy()})
        assert np.isfinite(out).all(), f"ONNX Runtime output at batch {batch.shape[0]} is not finite"
        with torch.no_grad():
            ref = model(batch, tb, zb)
        _assert_matches(torch.from_numpy(out), ref, f"ONNX Runtime dynamic batch {batch.shape[0]}, explicit t/z")
