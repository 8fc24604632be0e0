"""Whole-volume inference on real MRI (embedded sample): grid, slice modes, uncertainty, precision, seeding, the
bundle path and every bad-input rule. A tiny random MU-Diff keeps each synthesis to about a second."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scripts.commands.synthesize import main as cli_main
from scripts.data import DataError, build_volume_transforms, prepare_subject
from scripts.diffusion import MUDiffSampler
from scripts.inference import InferenceError, VolumeInferer, synthesize_arrays, synthesize_subject
from scripts.inference import writer as writer_module
from scripts.inference.synthesize import run as cli_run
from scripts.networks.checkpoints import CheckpointError
from test_inference_helpers import (
    CROP,
    INFERENCE_CONFIG,
    SAMPLE_DIR,
    crop_subject,
    file_hashes,
    sample_item,
    tiny_network,
    write_overlay,
)

TCGA = SAMPLE_DIR / "tcga_brats_space" / "TCGA-DU-7294"
OPEN_MS = SAMPLE_DIR / "open_ms" / "patient07"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks run fastest single-threaded, and the CI machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("inference")
    weights = root / "model.pt"
    torch.save(tiny_network().state_dict(), weights)
    return {
        "root": root,
        "weights": str(weights),
        "configs": [INFERENCE_CONFIG, write_overlay(root)],
        "crop": crop_subject("TCGA-DU-7294", root / "data", CROP, name="TCGA-crop"),
    }


def _run(setup, out_dir, **kwargs):
    return cli_run(config_file=setup["configs"], weights=setup["weights"], device="cpu", out_dir=str(out_dir), **kwargs)


def _nonempty_slices(volume: np.ndarray, axis: int = 2) -> list[int]:
    other = tuple(a for a in range(3) if a != axis)
    return [int(i) for i in np.flatnonzero(np.any(volume != 0, axis=other))]


# ---------------------------------------------------------------------------------------------------------------
# outputs on the original grid, both slice modes


@pytest.mark.parametrize("folder", [TCGA, OPEN_MS], ids=["tcga_LPS", "open_ms_LAS"])
def test_reference_mode_output_on_input_grid_and_inputs_untouched(setup, tmp_path, folder):
    before = file_hashes(sorted(folder.iterdir()))
    written = _run(setup, tmp_path / "out", subject_dirs=[str(folder)])
    assert file_hashes(sorted(folder.iterdir())) == before  # no input modified
    out = nib.load(written[0]["syn"])
    assert Path(written[0]["syn"]).name == f"{folder.name}_syn_t1ce.nii.gz"
    grid = nib.load(next(p for p in folder.iterdir() if "FLAIR_" in p.name or "_fla_" in p.name))  # first input
    assert out.shape == grid.shape
    np.testing.assert_allclose(out.affine, grid.affine, atol=1e-5)
    assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(grid.affine)
    assert nib.aff2axcodes(grid.affine) == (("L", "P", "S") if folder == TCGA else ("L", "A", "S"))
    assert int(out.header["sform_code"]) == int(grid.header["sform_code"])
    data = np.asarray(out.dataobj, dtype=np.float32)
    assert out.get_data_dtype() == np.float32 and data.min() >= 0.0 and data.max() <= 1.0
    # the 4 middle slices of 80 were synthesized (38..41); every other slice is empty, and the header says so
    assert _nonempty_slices(data) == [38, 39, 40, 41]
    descrip = out.header["descrip"].tobytes().decode()
    assert "slices 38-41 of 80" in descrip and "rest empty" in descrip
    # synthesized voxels lie inside the inputs' brain (non-zero in any input), background is exactly 0
    brain = np.zeros(grid.shape, bool)
    for p in folder.iterdir():
        if any(t in p.name for t in ("FLAIR_", "T2_", "T1_", "_fla_", "_t2_", "_t1_")):
            brain |= np.asarray(nib.load(p).dataobj) != 0
    assert not np.any(data[~brain])
    assert np.count_nonzero(data[:, :, 38:42]) > 0.9 * np.count_nonzero(brain[:, :, 38:42])


def test_volume_mode_fills_every_slice(setup, tmp_path):
    item = setup["crop"]
    written = _run(
        setup, tmp_path / "out", subject_dirs=[str(Path(item["t1"]).parent)], slice_mode="volume", spatial_size="null"
    )
    out = nib.load(written[0]["syn"])
    grid = nib.load(item["flair"])
    assert out.shape == grid.shape == (48, 56, 5)
    np.testing.assert_allclose(out.affine, grid.affine, atol=1e-5)
    data = np.asarray(out.dataobj)
    assert _nonempty_slices(data) == list(range(5))
    descrip = out.header["descrip"].tobytes().decode()
    assert "all 5 slices" in descrip and "empty" not in descrip
    brain = np.zeros(grid.shape, bool)
    for key in ("flair", "t2", "t1"):
        brain |= np.asarray(nib.load(item[key]).dataobj) != 0
    assert 0 < brain.sum() < brain.size  # the crop holds background and brain
    assert not np.any(data[~brain]) and np.all(data[brain] > 0)


# ---------------------------------------------------------------------------------------------------------------
# uncertainty, precision, seeding


def test_uncertainty_map_and_stale_file_removed(setup, tmp_path):
    item = setup["crop"]
    folder = str(Path(item["t1"]).parent)
    written = _run(setup, tmp_path, subject_dirs=[folder], slice_mode="volume", spatial_size="null", num_samples=3)
    assert set(written[0]) == {"syn", "unc"}
    unc = np.asarray(nib.load(written[0]["unc"]).dataobj)
    syn_img = nib.load(written[0]["syn"])
    assert unc.shape == syn_img.shape
    brain = np.asarray(syn_img.dataobj) > 0
    assert unc.min() >= 0.0 and not np.any(unc[~brain])
    assert np.all(unc[brain] > 0)  # N > 1 samples differ everywhere inside the brain
    assert "std" in nib.load(written[0]["unc"]).header["descrip"].tobytes().decode()
    # a later single-sample run must not leave the old map beside the new synthesis
    again = _run(setup, tmp_path, subject_dirs=[folder], slice_mode="volume", spatial_size="null", num_samples=1)
    assert set(again[0]) == {"syn"} and not Path(written[0]["unc"]).exists()


@pytest.fixture(scope="module")
def real_stack():
    transform = build_volume_transforms(
        "brats_t1ce", mode="reference", num_slices=6, spatial_size=32, with_target=False, with_masks=False
    )
    return prepare_subject(sample_item("TCGA-DU-7294"), transform)["image"]


def test_bf16_autocast_on_cpu_close_to_fp32(real_stack):
    net = tiny_network()
    fp32 = VolumeInferer(MUDiffSampler(amp=False), batch_size=3)(real_stack, net).mean
    bf16 = VolumeInferer(MUDiffSampler(amp=True), batch_size=3)(real_stack, net).mean
    assert torch.isfinite(bf16).all() and not torch.equal(fp32, bf16)  # the bf16 path really ran
    diff = (fp32 - bf16).abs()
    assert diff.mean() < 0.02 and diff.max() < 0.2
    assert np.corrcoef(fp32.flatten().numpy(), bf16.flatten().numpy())[0, 1] > 0.99


def test_seeded_output_independent_of_batch_size(real_stack):
    net = tiny_network()
    a = VolumeInferer(batch_size=6, seed=3)(real_stack, net, slice_ids=range(37, 43)).mean
    b = VolumeInferer(batch_size=4, seed=3)(real_stack, net, slice_ids=range(37, 43)).mean
    c = VolumeInferer(batch_size=4, seed=4)(real_stack, net, slice_ids=range(37, 43)).mean
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert (a - c).abs().mean() > 0.05


def test_prefetched_draws_give_the_same_synthesis(real_stack):
    """Drawing the next batch's noise in a background thread (the GPU default) changes nothing in the output,
    with several samples per slice and a ragged last batch."""
    net = tiny_network()
    plain = VolumeInferer(batch_size=4, num_samples=2, seed=5, prefetch=False)
    fast = VolumeInferer(batch_size=4, num_samples=2, seed=5, prefetch=True)
    a, b = plain(real_stack, net, slice_ids=range(37, 43)), fast(real_stack, net, slice_ids=range(37, 43))
    assert torch.equal(a.mean, b.mean) and torch.equal(a.std, b.std)
    assert "prefetch=True" in repr(fast) and VolumeInferer().prefetch is None  # default: decided by the device


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_whole_subject_progress_shows_on_a_terminal_only(real_stack, monkeypatch):
    """A subject takes minutes on a CPU: a terminal gets a slice bar; a log file or a pipe gets nothing."""
    net, inferer = tiny_network(), VolumeInferer(batch_size=2, seed=1)
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    inferer(real_stack[:4], net)
    assert "synthesizing" in terminal.getvalue() and "4/4" in terminal.getvalue()
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    inferer(real_stack[:4], net)
    assert pipe.getvalue() == ""


def test_inferer_runs_the_sampler_with_per_slice_draws(real_stack):
    """Each slice's result is exactly MUDiffSampler on that slice with the draws of its own seeded generator."""
    from scripts.inference.stack import _slice_draws, slice_generator

    net = tiny_network()
    out = VolumeInferer(batch_size=4, seed=7)(real_stack, net, slice_ids=range(37, 43)).mean
    for position, slice_id in ((0, 37), (5, 42)):
        x_t, z, noise = _slice_draws([slice_generator(7, slice_id, 0)], tuple(real_stack.shape[-2:]), 4, net.nz)
        direct = MUDiffSampler()(
            torch.as_tensor(real_stack[position : position + 1]), net, x_T=x_t, z_per_step=z, noise_per_step=noise
        )
        torch.testing.assert_close(out[position : position + 1], direct, atol=1e-5, rtol=0)


def test_in_memory_arrays_match_files(setup):
    """MONAI Label's route (arrays in memory) gives the same volume as the file route."""
    item = setup["crop"]
    net = tiny_network()
    transform = build_volume_transforms(
        "brats_t1ce", mode="volume", spatial_size=None, with_target=False, with_masks=False
    )
    inferer = VolumeInferer(batch_size=4, num_samples=2)
    from_files = synthesize_subject(item, transform, net, inferer, "t1ce")
    flair = nib.load(item["flair"])
    volumes = {k: np.asarray(nib.load(item[k]).dataobj, dtype=np.float64) for k in ("flair", "t2", "t1")}
    from_arrays = synthesize_arrays(volumes, flair.affine, net, inferer, transform, "t1ce", subject="TCGA-crop")
    np.testing.assert_allclose(from_arrays.synthesis, from_files.synthesis, atol=1e-5)
    np.testing.assert_allclose(from_arrays.uncertainty, from_files.uncertainty, atol=1e-5)
    np.testing.assert_allclose(from_arrays.affine, flair.affine, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# the bundle way


def test_bundle_run_matches_cli(setup, tmp_path):
    from monai.bundle import ConfigWorkflow

    datalist = tmp_path / "datalist.json"
    import json

    datalist.write_text(json.dumps({"test": [setup["crop"]]}), encoding="utf-8")
    overrides = {
        "datalist_file": str(datalist),
        "ckpt_path": setup["weights"],
        "output_dir": str(tmp_path / "bundle"),
        "slice_mode": "volume",
        "spatial_size": None,
        "num_samples": 2,
        "device": torch.device("cpu"),
    }
    workflow = ConfigWorkflow(config_file=setup["configs"], workflow_type="infer", **overrides)
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()
    bundle_syn = tmp_path / "bundle" / "TCGA-crop_syn_t1ce.nii.gz"
    assert (tmp_path / "bundle" / "TCGA-crop_unc_t1ce.nii.gz").is_file()
    cli = _run(setup, tmp_path / "cli", datalist=str(datalist), slice_mode="volume", spatial_size="null", num_samples=2)
    np.testing.assert_allclose(
        np.asarray(nib.load(bundle_syn).dataobj), np.asarray(nib.load(cli[0]["syn"]).dataobj), atol=1e-6
    )


# ---------------------------------------------------------------------------------------------------------------
# bad input: clear errors, nothing half-written


def test_weights_of_another_configuration(setup, tmp_path, capsys):
    other = tmp_path / "nf16.pt"
    torch.save(tiny_network(nf=16).state_dict(), other)
    with pytest.raises(CheckpointError) as err:
        cli_run(config_file=setup["configs"], weights=str(other), subject_dirs=[str(TCGA)], out_dir=str(tmp_path))
    message = str(err.value)
    assert str(other) in message and "shape mismatches" in message and "nf=16" in message
    # the command line prints one line, no traceback, exit status 2
    code = cli_main(["--config_file", str(setup["configs"]), "--weights", str(other), "--out_dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.startswith("error: ") and "Traceback" not in captured.err
    assert not list(tmp_path.glob("*.nii.gz"))


def test_weights_of_another_task(setup, tmp_path):
    weights = tmp_path / "model.pt"
    net = tiny_network()
    net.load_state_dict(torch.load(setup["weights"], weights_only=True))
    net.record = {"task": "brats_flair", "spatial_size": 32}  # the record travels inside the file
    torch.save(net.state_dict(), weights)
    with pytest.raises(CheckpointError, match=r"trained for task 'brats_flair'.*inference is set to 'brats_t1ce'"):
        cli_run(
            config_file=setup["configs"],
            weights=str(weights),
            task="brats_t1ce",  # asked for explicitly; without --task the weights' own task is used
            subject_dirs=[str(TCGA)],
            out_dir=str(tmp_path),
        )


def test_unwritable_output_folder(setup, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(InferenceError, match="is not writable.*choose --out_dir"):
        _run(setup, blocker / "out", subject_dirs=[str(TCGA)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_missing_contrast_is_named(setup, tmp_path):
    folder = tmp_path / "TCGA-DU-7294"
    folder.mkdir()
    for p in TCGA.iterdir():
        if "_t1_" not in p.name:
            (folder / p.name).symlink_to(p)
    with pytest.raises(DataError, match=r"no file for input contrast 't1'"):
        _run(setup, tmp_path / "out", subject_dirs=[str(folder)])
    item = {k: v for k, v in sample_item("TCGA-DU-7294").items() if k != "t2"}
    transform = build_volume_transforms("brats_t1ce", spatial_size=32, num_slices=4, with_target=False)
    with pytest.raises(DataError, match=r"no 't2' file"):
        synthesize_subject(item, transform, tiny_network(), VolumeInferer(), "t1ce")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_inputs_on_different_grids(setup, tmp_path):
    item = dict(setup["crop"])
    shifted = crop_subject("TCGA-DU-7294", tmp_path, (slice(1, 49), slice(50, 106), slice(36, 41)), name="shifted")
    item["t2"] = shifted["t2"]
    transform = build_volume_transforms("brats_t1ce", mode="volume", with_target=False, with_masks=False)
    with pytest.raises(DataError, match=r"not on the grid of"):
        synthesize_subject(item, transform, tiny_network(), VolumeInferer(), "t1ce")


def test_output_never_replaces_an_input(setup, tmp_path):
    folder = tmp_path / "S"
    folder.mkdir()
    item = {"subject": "S"}
    for key, name in (("flair", "S_syn_t1ce.nii.gz"), ("t2", "t2.nii.gz"), ("t1", "t1.nii.gz")):
        shutil.copyfile(setup["crop"][key], folder / name)
        item[key] = str(folder / name)
    before = file_hashes(folder.iterdir())
    import json

    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"test": [item]}), encoding="utf-8")
    import scripts.inference.synthesizer as synthesizer_module

    ran = []
    real = synthesizer_module.synthesize_subject
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(synthesizer_module, "synthesize_subject", lambda *a, **k: ran.append(1) or real(*a, **k))
    try:
        with pytest.raises(InferenceError, match=r"is the subject's input 'flair'"):
            _run(setup, folder, datalist=str(datalist), slice_mode="volume", spatial_size="null")
    finally:
        monkeypatch.undo()
    assert ran == []  # refused before any synthesis ran, not after it
    assert file_hashes(folder.iterdir()) == before
    from scripts.inference.bundle import CheckOutputFolder  # the bundle path: at engine start

    with pytest.raises(InferenceError, match=r"is the subject's input 'flair'"):
        CheckOutputFolder(str(folder), [item], "t1ce")(None)


def test_failed_write_leaves_nothing(setup, tmp_path, monkeypatch):
    calls = {"n": 0}
    real_save = nib.save

    def failing_save(img, path):  # the second file (the uncertainty map) fails half-way
        calls["n"] += 1
        real_save(img, path)
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer_module.nib, "save", failing_save)
    out = tmp_path / "out"
    with pytest.raises(InferenceError, match="No space left"):
        _run(
            setup,
            out,
            subject_dirs=[str(Path(setup["crop"]["t1"]).parent)],
            slice_mode="volume",
            spatial_size="null",
            num_samples=2,
        )
    assert calls["n"] == 2 and list(out.iterdir()) == []  # neither the synthesis nor a temporary file
