"""U-Net regression baseline: the bundle training config, learning, whole-subject synthesis and bad input.

Everything runs on the embedded real sample at 32x32 with a 3-level U-Net, sharing one prepared-slice cache.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, SAMPLE_DATALIST, sample_item
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.utils import set_determinism
from scripts.baselines.synthesize import output_path, synthesize_datalist, unet_synthesizer
from scripts.baselines.unet import CheckpointError, RegressionUNet, load_unet, read_state_dict
from scripts.commands.synthesize_unet import main as synthesize_main
from scripts.data import build_slice_dataset, build_volume_transforms
from scripts.inference.errors import InferenceError

CONFIG = str(REPO_ROOT / "configs" / "train_unet.yaml")
DEMO = str(REPO_ROOT / "configs" / "train_unet_demo.yaml")
NET = {"channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}
DATA = {"task": "brats_t1ce", "slice_mode": "reference", "num_slices": 16, "spatial_size": 32}
TEST_SUBJECT = "Brats18_2013_2_1"  # an embedded held-out BraTS subject (test split)


def _overrides(tmp: Path, cache: Path, epochs: int) -> dict:
    return {
        "bundle_root": str(REPO_ROOT),
        "ckpt_dir": str(tmp / "ckpt"),
        "output_dir": str(tmp / "eval"),
        "cache_dir": str(cache),
        "num_slices": DATA["num_slices"],
        "spatial_size": DATA["spatial_size"],
        "unet_channels": NET["channels"],
        "unet_strides": NET["strides"],
        "num_res_units": NET["num_res_units"],
        "batch_size": 4,
        "val_batch_size": 16,
        "lr": 3.0e-3,
        "epochs": epochs,
    }


def _net_kwargs() -> dict:
    return {"in_channels": 3, "out_channels": 1, **NET}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("unet_slice_cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache) -> dict:
    """Train through the bundle config (ConfigWorkflow, the `run` id) for a few tiny epochs."""
    tmp = tmp_path_factory.mktemp("unet_trained")
    workflow = ConfigWorkflow(config_file=CONFIG, logging_file=False, **_overrides(tmp, cache, epochs=12))
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return {"dir": tmp, "ckpt": tmp / "ckpt" / "model.pt"}


def _validation_l1(net: torch.nn.Module, cache: Path) -> float:
    ds = build_slice_dataset(
        str(SAMPLE_DATALIST),
        "validation",
        cache_dir=str(cache),
        mode="reference",
        **{k: DATA[k] for k in ("task", "num_slices", "spatial_size")},
    )
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    y = torch.stack([ds[i]["label"] for i in range(len(ds))])
    with torch.no_grad():
        return float((net.eval()(x) - y).abs().mean())


def _sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---- training --------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_bundle_cli_trains_one_epoch_and_writes_a_plain_state_dict(tmp_path, cache, trained):
    """`python -m monai.bundle run training` as documented; 1 epoch gives the same weights as the workflow's 1st."""
    args = []
    for k, v in _overrides(tmp_path, cache, epochs=1).items():
        args += [f"--{k}", str(v)]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", CONFIG, *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val_psnr" in proc.stderr + proc.stdout
    state = read_state_dict(tmp_path / "ckpt" / "model.pt")
    assert all(k.startswith("unet.") for k in state if k != "_extra_state")
    record = state["_extra_state"]["record"]  # the weights say what they were trained for
    assert record == {"task": "brats_t1ce", "slice_mode": "reference", "num_slices": 16, "spatial_size": 32}
    net = load_unet(tmp_path / "ckpt" / "model.pt", **_net_kwargs())
    assert not net.training
    assert list(state) == list(RegressionUNet(**_net_kwargs()).state_dict())
    # deterministic: a second 1-epoch run in this process (same seed) gives bit-identical weights
    again = tmp_path / "again"
    wf = ConfigWorkflow(config_file=CONFIG, logging_file=False, **_overrides(again, cache, epochs=1))
    wf.initialize()
    wf.run()
    wf.finalize()
    other = read_state_dict(again / "ckpt" / "model.pt")
    assert all(torch.equal(state[k], other[k]) for k in state if k != "_extra_state")


def _train(folder: Path, cache: Path, epochs: int) -> dict:
    """``epochs`` epochs of a 3-epoch schedule: ``epochs=1`` is a run stopped after its first epoch."""
    settings = {**_overrides(folder, cache, epochs=epochs), "cosine_epochs": 3}
    workflow = ConfigWorkflow(config_file=CONFIG, logging_file=False, **settings)
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return torch.load(folder / "ckpt" / "resume.pt", weights_only=True)["objects"]


def test_an_interrupted_training_resumes_to_the_uninterrupted_weights_and_best_model(tmp_path, cache):
    """Stopped after epoch 1 and run again: the same weights, optimizer state and best-model record as a straight
    run (the best validation metric travels in resume.pt, so a resumed epoch cannot overwrite a better model)."""
    straight = _train(tmp_path / "straight", cache, epochs=3)
    _train(tmp_path / "resumed", cache, epochs=1)
    resumed = _train(tmp_path / "resumed", cache, epochs=3)
    epochs = [run["trainer"]["iteration"] // run["trainer"]["epoch_length"] for run in (straight, resumed)]
    assert epochs == [3, 3]
    weights = [k for k in straight["network"] if k != "_extra_state"]
    assert all(torch.equal(straight["network"][k], resumed["network"][k]) for k in weights)
    assert straight["validation"] == resumed["validation"] and straight["validation"]["best_metric_epoch"] >= 1
    a, b = (read_state_dict(tmp_path / run / "ckpt" / "model.pt") for run in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a if k != "_extra_state")


def test_trained_unet_beats_an_untrained_one_on_validation_l1(trained, cache):
    set_determinism(seed=1024)  # the config's seed: the same initial weights training started from
    untrained = RegressionUNet(**_net_kwargs())
    set_determinism(seed=None)
    net = load_unet(trained["ckpt"], **_net_kwargs())
    before, after = _validation_l1(untrained, cache), _validation_l1(net, cache)
    print(f"validation L1 untrained {before:.4f} trained {after:.4f}")
    assert after < 0.75 * before, (before, after)
    assert any(p.suffix == "" or "events" in p.name for p in (trained["dir"] / "eval").iterdir())  # TensorBoard


def test_demo_overlay_selects_the_same_slices_as_the_mudiff_demo():
    """The baseline must see exactly MU-Diff's slices: same data keys, same values, full and demo configs."""
    keys = ("task", "slice_mode", "num_slices", "spatial_size", "reader", "datalist_file")
    for mudiff, unet in (
        (["train.yaml"], ["train_unet.yaml"]),
        (["train.yaml", "train_demo.yaml"], ["train_unet.yaml", "train_unet_demo.yaml"]),
    ):
        parsed = []
        for files in (mudiff, unet):
            parser = ConfigParser()
            parser.read_config([str(REPO_ROOT / "configs" / f) for f in files])
            parsed.append({k: parser.get_parsed_content(k) for k in keys})
        assert parsed[0] == parsed[1], (mudiff, unet)
    parser = ConfigParser()
    parser.read_config([CONFIG, DEMO])
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, RegressionUNet)
    assert parser.get_parsed_content("spatial_size") % net.size_divisor == 0


# ---- synthesis ---------------------------------------------------------------------------------------------------
def test_synthesis_writes_the_subject_on_its_original_grid_without_touching_inputs(tmp_path, trained):
    item = sample_item(TEST_SUBJECT)
    before = {k: _sha(v) for k, v in item.items() if k != "subject"}
    out_dir = tmp_path / "pred"
    paths = synthesize_datalist(
        trained["ckpt"],
        SAMPLE_DATALIST,
        out_dir,
        split="test",
        network_kwargs=_net_kwargs(),
        batch_size=5,
        subjects=[TEST_SUBJECT],
        **DATA,
    )
    assert paths == [out_dir / f"{TEST_SUBJECT}_syn_t1ce.nii.gz"]
    assert sorted(os.listdir(out_dir)) == [paths[0].name]  # no temporary file left behind
    pred, ref = nib.load(paths[0]), nib.load(item["t1ce"])
    assert pred.shape == ref.shape
    np.testing.assert_allclose(pred.affine, ref.affine, atol=1e-5)
    assert int(pred.header["sform_code"]) == int(ref.header["sform_code"])
    vol = np.asarray(pred.dataobj)
    assert vol.dtype == np.float32 and vol.min() >= 0.0 and vol.max() <= 1.0
    brain = np.asarray(ref.dataobj) > 0
    assert vol[brain].mean() > 0.1 and vol[~brain].mean() < 0.02  # a brain-shaped synthesis, dark background
    assert {k: _sha(v) for k, v in item.items() if k != "subject"} == before

    from scripts.evaluation.matching import list_predictions

    assert [(p.subject, p.contrast) for p in list_predictions(out_dir)] == [(TEST_SUBJECT, "t1ce")]


def test_synthesis_cli_reads_the_training_config(tmp_path, trained, capsys):
    argv = ["--config_file", CONFIG, "--output_dir", str(tmp_path), "--checkpoint", str(trained["ckpt"])]
    argv += ["--split", "test", "--subjects", TEST_SUBJECT, "--bundle_root", str(REPO_ROOT), "--num_slices", "16"]
    argv += ["--spatial_size", "32"]
    argv += ["--unet_channels", "[8,16,32]", "--unet_strides", "[2,2]", "--num_res_units", "1"]
    assert synthesize_main(argv) == 0
    written = tmp_path / f"{TEST_SUBJECT}_syn_t1ce.nii.gz"
    assert str(written) in capsys.readouterr().out
    assert nib.load(written).shape == nib.load(sample_item(TEST_SUBJECT)["flair"]).shape


def test_synthesis_refuses_to_overwrite_an_input(tmp_path, trained):
    item = sample_item(TEST_SUBJECT)
    clash = tmp_path / f"{TEST_SUBJECT}_syn_t1ce.nii.gz"
    clash.write_bytes(Path(item["t2"]).read_bytes())
    item["t2"] = str(clash)
    digest = _sha(clash)
    transform = build_volume_transforms(task="brats_t1ce", num_slices=16, spatial_size=32, with_target=False)
    net = load_unet(trained["ckpt"], **_net_kwargs())
    with pytest.raises(InferenceError, match="is the subject's input 't2'"):
        list(unet_synthesizer(net, transform, "t1ce").run([item], tmp_path, "cpu"))
    assert _sha(clash) == digest
    with pytest.raises(InferenceError, match="cannot be used in a file name"):
        output_path(tmp_path, "../escape", "t1ce")


# ---- bad checkpoints ---------------------------------------------------------------------------------------------
def test_missing_checkpoint_is_named(tmp_path, capsys):
    missing = tmp_path / "nope" / "model.pt"
    with pytest.raises(CheckpointError, match=str(missing)):
        load_unet(missing, **_net_kwargs())
    argv = ["--config_file", CONFIG, "--output_dir", str(tmp_path / "out"), "--checkpoint", str(missing)]
    assert synthesize_main(argv) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    other = tmp_path / "wide.pt"
    torch.save(RegressionUNet(channels=[8, 16, 32, 64], strides=[2, 2, 2], num_res_units=1).state_dict(), other)
    with pytest.raises(CheckpointError, match=r"wide\.pt: the weights do not fit the configured RegressionUNet.*keys"):
        load_unet(other, **_net_kwargs())
    narrow = tmp_path / "narrow.pt"
    torch.save(RegressionUNet(channels=[4, 8, 16], strides=[2, 2], num_res_units=1).state_dict(), narrow)
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_unet(narrow, **_net_kwargs())
    mudiff = tmp_path / "mudiff.pt"
    torch.save({"g1.conv.weight": torch.zeros(2, 2), "g2.conv.weight": torch.zeros(2, 2)}, mudiff)
    with pytest.raises(CheckpointError, match="MU-Diff generator checkpoint"):
        load_unet(mudiff, **_net_kwargs())
    resume = tmp_path / "resume.pt"
    torch.save({"network": {"w": torch.zeros(1)}, "epoch": 3}, resume)
    with pytest.raises(CheckpointError, match=r"resume\.pt: expected the U-Net weights .* got a dict with keys"):
        load_unet(resume, **_net_kwargs())
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"U-Net checkpoint file .*garbage\.pt cannot be read"):
        load_unet(garbage, **_net_kwargs())


def test_network_rejects_inputs_it_cannot_handle():
    net = RegressionUNet(**_net_kwargs())
    with pytest.raises(ValueError, match=r"expects \(B, 3, H, W\)"):
        net(torch.zeros(1, 4, 32, 32))
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.zeros(1, 3, 30, 32))
    out = net(torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    assert out.shape == (2, 1, 32, 32) and out.abs().max() <= 1.0
