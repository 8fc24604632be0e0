"""Published-weights converter: key/shape layout, round trips, the CLI on the golden checkpoints, error paths."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from scripts.commands.convert_weights import main
from scripts.convert_weights import (
    WeightConversionError,
    convert_critic,
    convert_published,
    convert_to_reference,
    generator_key_mapping,
    ours_to_reference,
    reference_to_ours,
)
from scripts.networks import MUDiff, TimeConditionedCritic
from scripts.networks.checkpoints import CheckpointError

REPO = REPO_ROOT

SHARED = REPO.parent / "shared"
KEYS_TXT = SHARED / "reference" / "state_dict_keys.txt"
GOLDEN = SHARED / "reference" / "golden"
needs_keys = pytest.mark.skipif(not KEYS_TXT.is_file(), reason="reference key list (../shared) not available")
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason="golden reference tensors (../shared) not available")
GOLDEN_CLI = ["--image_size", "64", "--ch_mult", "[1,2]", "--num_res_blocks", "1"]
GOLDEN_CFG = {"image_size": 64, "ch_mult": (1, 2), "num_res_blocks": 1}


def _reference_sections() -> dict[str, dict[str, tuple[int, ...]]]:
    """Parse state_dict_keys.txt into {section name: {key: shape}} (sections gen_diffusive_1/2, disc_diffusive_2)."""
    sections: dict[str, dict[str, tuple[int, ...]]] = {}
    current = None
    for line in KEYS_TXT.read_text().splitlines():
        if line.startswith("## "):
            current = line[3:].split()[0]
            sections[current] = {}
        elif current and line.strip() and not line.startswith("#"):
            key, shape = line.split("\t")
            sections[current][key] = tuple(int(v) for v in re.findall(r"\d+", shape))
    return sections


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_keys
def test_published_layout_converts_and_loads_strictly():
    """Tensors named and shaped exactly as the published checkpoints (with the DDP 'module.' prefix) convert to
    a state dict that loads strictly into the default MUDiff; the inverse reproduces the published key list.
    (File reading/writing is covered by the CLI test on the golden checkpoints.)"""
    sections = _reference_sections()
    with torch.device("meta"):  # structure and shapes only; the converted tensors are assigned below
        model = MUDiff()
    state = {}
    for name, gen, index in (("g1", model.g1, 1), ("g2", model.g2, 2)):
        shapes = sections[f"gen_diffusive_{index}"]
        ref = {f"module.{k}": torch.zeros(s) for k, s in shapes.items()}
        ours = reference_to_ours(ref, gen, f"gen_diffusive_{index}")
        state.update({f"{name}.{k}": v for k, v in ours.items()})
        back = ours_to_reference(ours, gen, prefix="module.")
        assert {k: tuple(v.shape) for k, v in back.items()} == {f"module.{k}": s for k, s in shapes.items()}
    model.load_state_dict(state, strict=True, assign=True)
    assert sum(v.numel() for k, v in state.items() if k.startswith("g1.")) == 20_472_065
    assert sum(v.numel() for k, v in state.items() if k.startswith("g2.")) == 21_399_681


@needs_keys
def test_published_critic_layout_converts():
    shapes = _reference_sections()["disc_diffusive_2"]
    critic = TimeConditionedCritic()
    state = reference_to_ours({k: torch.zeros(s) for k, s in shapes.items()}, critic)
    critic.load_state_dict(state, strict=True)
    back = ours_to_reference(critic.state_dict(), critic)
    assert {k: tuple(v.shape) for k, v in back.items()} == shapes


@pytest.mark.slow
@needs_golden
def test_cli_converts_golden_checkpoints_and_reproduces_reference(tmp_path):
    """The documented CLI converts the golden (reference-saved) checkpoints; the written model.pt loads strictly
    and reproduces the reference outputs; the input files are left untouched."""
    before = {name: _sha(GOLDEN / name) for name in ("g1_state.pt", "g2_state.pt")}
    out = tmp_path / "model.pt"
    cmd = [sys.executable, "-m", "scripts", "convert_weights", "published", "--g1", str(GOLDEN / "g1_state.pt")]
    cmd += ["--g2", str(GOLDEN / "g2_state.pt"), "--out", str(out), *GOLDEN_CLI]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "G1 4,882,881 parameters" in result.stdout and "G2 5,810,497 parameters" in result.stdout
    assert str(out) in result.stdout
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"], "temporary files left behind"
    assert {name: _sha(GOLDEN / name) for name in before} == before

    model = MUDiff(**GOLDEN_CFG).eval()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    io = torch.load(GOLDEN / "g_io.pt", weights_only=True)
    with torch.no_grad():
        x0_g1 = model.g1(io["x_tp1"], torch.cat([io["c1"], io["c2"], io["c3"]], 1), io["t"], io["z"])
    assert (x0_g1 - io["g1_out"]).abs().max() <= 1e-5 * io["g1_out"].abs().max()

    g1_back, g2_back = convert_to_reference(out, tmp_path / "reference", verbose=False, **GOLDEN_CFG)
    for back, name in ((g1_back, "g1_state.pt"), (g2_back, "g2_state.pt")):
        original = torch.load(GOLDEN / name, weights_only=True)
        restored = torch.load(back, weights_only=True)
        assert restored.keys() == original.keys() and all(torch.equal(restored[k], original[k]) for k in original)


@needs_golden
def test_converted_weights_record_their_task_and_refuse_another(tmp_path):
    """--task writes the task into the file: inference follows it and refuses another; the round trip still works."""
    from scripts.inference.weights import inference_settings, load_generators

    out = tmp_path / "published_t1ce.pt"
    convert_published(
        GOLDEN / "g1_state.pt", GOLDEN / "g2_state.pt", out, verbose=False, task="brats_t1ce", **GOLDEN_CFG
    )
    settings = inference_settings(out)
    assert settings["task"] == "brats_t1ce" and settings["spatial_size"] == 64 and settings["nf"] == 64
    with pytest.raises(CheckpointError, match=r"trained for task 'brats_t1ce'.*'brats_flair'"):
        load_generators(MUDiff(**GOLDEN_CFG), out, task="brats_flair")
    g1_back, _ = convert_to_reference(out, tmp_path / "reference", verbose=False, **GOLDEN_CFG)
    original = torch.load(GOLDEN / "g1_state.pt", weights_only=True)
    assert all(torch.equal(torch.load(g1_back, weights_only=True)[k], original[k]) for k in original)
    with pytest.raises(WeightConversionError, match="--task: unknown task 'brats_t3'"):
        convert_published(GOLDEN / "g1_state.pt", GOLDEN / "g2_state.pt", out, verbose=False, task="brats_t3")


@needs_golden
def test_critic_cli_and_transposed_attention(tmp_path, capsys):
    """The critic subcommand writes a state dict that loads strictly; attention projections (stored as NIN
    W (in, out) in the reference) are the only transposed tensors."""
    out = tmp_path / "critic.pt"
    assert main(["critic", "--src", str(GOLDEN / "d_state.pt"), "--out", str(out), "--ngf", "16"]) == 0
    assert "critic 1,994,785 parameters" in capsys.readouterr().out
    TimeConditionedCritic(ngf=16).load_state_dict(torch.load(out, weights_only=True), strict=True)
    with torch.device("meta"):
        gen = MUDiff(**GOLDEN_CFG).g2
    transposed = [m for m in generator_key_mapping(gen) if m.transpose]
    assert transposed and all(m.reference.endswith(".W") and ".NIN_" in m.reference for m in transposed)


# -------------------------------------------------------------------------------------------- error paths


@pytest.fixture(scope="module")
def small_reference() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """A tiny G1 and its state dict under reference names."""
    gen = MUDiff(image_size=32, nf=16, ch_mult=(1, 2), num_res_blocks=1).g1
    return gen, ours_to_reference(gen.state_dict(), gen, prefix="module.")


def test_wrong_state_dict_lists_missing_unexpected_and_shape_errors(small_reference):
    gen, ref = small_reference
    bad = dict(ref)
    del bad["module.all_modules.6.Conv_0.weight"]
    bad["module.all_modules.99.extra.weight"] = torch.zeros(3)
    bad["module.z_transform.1.weight"] = torch.zeros(5, 5)
    with pytest.raises(WeightConversionError) as info:
        reference_to_ours(bad, gen, "G1 checkpoint x.pth")
    msg = str(info.value)
    assert msg.startswith("G1 checkpoint x.pth does not match")
    assert "1 missing keys: ['all_modules.6.Conv_0.weight']" in msg
    assert "1 unexpected keys: ['all_modules.99.extra.weight']" in msg
    assert "z_transform.1.weight: checkpoint (5, 5) vs network (256, 100)" in msg


def test_each_error_kind_alone(small_reference):
    gen, ref = small_reference
    missing = {k: v for k, v in ref.items() if not k.endswith("all_modules.0.bias")}
    with pytest.raises(WeightConversionError, match=r"missing keys: \['all_modules\.0\.bias'\]"):
        reference_to_ours(missing, gen)
    extra = {**ref, "module.surprise": torch.zeros(1)}
    with pytest.raises(WeightConversionError, match=r"unexpected keys: \['surprise'\]"):
        reference_to_ours(extra, gen)
    shape = {**ref, "module.all_modules.1.weight": torch.zeros(3, 3)}
    with pytest.raises(
        WeightConversionError, match=r"shape mismatches: \['all_modules\.1\.weight: checkpoint \(3, 3\)"
    ):
        reference_to_ours(shape, gen)


@needs_golden
def test_swapped_or_misconfigured_checkpoints_fail_clearly(tmp_path, capsys):
    out = tmp_path / "model.pt"
    with pytest.raises(WeightConversionError, match="looks like a G2") as info:
        convert_published(GOLDEN / "g2_state.pt", GOLDEN / "g1_state.pt", out, verbose=False, **GOLDEN_CFG)
    assert "G1 checkpoint" in str(info.value) and "g2_state.pt" in str(info.value)
    with pytest.raises(WeightConversionError, match="missing key"):  # published config given, golden file is small
        convert_published(GOLDEN / "g1_state.pt", GOLDEN / "g2_state.pt", out, verbose=False)
    with pytest.raises(WeightConversionError, match="critic"):
        convert_critic(GOLDEN / "g1_state.pt", ngf=16)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    argv = ["published", "--g1", str(GOLDEN / "g2_state.pt"), "--g2", str(GOLDEN / "g1_state.pt")]
    assert main([*argv, "--out", str(out), *GOLDEN_CLI]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: G1 checkpoint") and "looks like a G2" in err
    assert "Traceback" not in err and not out.exists()


def test_unreadable_inputs_and_options(tmp_path):
    with pytest.raises(CheckpointError, match=r"G1 checkpoint file .*nope1\.pth not found"):
        convert_published(tmp_path / "nope1.pth", tmp_path / "nope2.pth", tmp_path / "m.pt", verbose=False)
    not_a_state = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_state)
    with pytest.raises(CheckpointError, match="expected a dict of tensors"):
        convert_critic(not_a_state)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match="cannot be read as a weights-only torch file"):
        convert_critic(garbage)
    with pytest.raises(WeightConversionError, match=r"unknown model option\(s\) \['nff'\]"):
        convert_published(not_a_state, not_a_state, tmp_path / "m.pt", nff=64)
    assert not (tmp_path / "m.pt").exists()
    assert set(os.listdir(tmp_path)) == {"list.pth", "garbage.pth"}, "nothing may be written on failure"
