"""Weight files for inference: accepted layouts, task records, clear refusals, the critic attention map, and the
network configuration that inference reads from the weights."""

from __future__ import annotations

import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from scripts.inference import load_generators, weights
from scripts.inference.stack import build_attention_critic
from scripts.inference.synthesize import load_config
from scripts.inference.synthesize import run as cli_run
from scripts.inference.weights import RESUME_FORMAT, CriticCheckpoint, training_record
from scripts.networks.checkpoints import CheckpointError
from scripts.networks.described import EXTRA_STATE_KEY
from scripts.networks.mudiff import MUDiff
from scripts.networks.uncertainty import CriticUncertaintyMap
from test_inference_helpers import (
    CROP,
    INFERENCE_CONFIG,
    REPO_ROOT,
    crop_subject,
    tiny_critic,
    tiny_network,
    write_overlay,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _resume_payload(net, critic=None, uncertainty=None, task="brats_t1ce"):
    objects = {"network": net.state_dict()}
    if critic is not None:
        objects["critic"] = critic.state_dict()
    if uncertainty is not None:
        objects["uncertainty"] = uncertainty.state_dict()
    return {"format": RESUME_FORMAT, "fingerprint": {"task": task, "spatial_size": 32}, "objects": objects}


def test_accepted_layouts_load_the_same_weights(tmp_path):
    source = tiny_network(seed=1)
    expected = source.state_dict()
    layouts = {
        "plain.pt": expected,
        "wrapped.pt": {"model": expected},
        "ddp.pt": {f"module.{k}": v for k, v in expected.items()},
        "resume.pt": _resume_payload(source),
    }
    for name, obj in layouts.items():
        folder = tmp_path / name.split(".")[0]
        folder.mkdir()
        torch.save(obj, folder / name)
        target = tiny_network(seed=2)
        load_generators(target, folder / name, task="brats_t1ce")
        for key, value in target.state_dict().items():
            same = torch.equal(value, expected[key]) if isinstance(value, torch.Tensor) else value == expected[key]
            assert same, (name, key)


def test_task_record_from_training_resume_checkpoint(tmp_path):
    net = tiny_network()
    torch.save(net.state_dict(), tmp_path / "model.pt")
    torch.save(_resume_payload(net, task="brats_flair"), tmp_path / "resume.pt")
    assert training_record(tmp_path / "model.pt")["task"] == "brats_flair"
    with pytest.raises(CheckpointError, match=r"trained for task 'brats_flair'.*resume\.pt"):
        load_generators(tiny_network(), tmp_path / "model.pt", task="brats_t1ce")
    load_generators(tiny_network(), tmp_path / "model.pt", task="t1ce,t1,t2->flair")  # same task, spelled out
    # weights that carry their own record are judged by it, not by a resume.pt that happens to lie beside them
    described = tiny_network()
    described.record = {"task": "brats_t1ce", "spatial_size": 64}
    torch.save(described.state_dict(), tmp_path / "model.pt")
    load_generators(tiny_network(), tmp_path / "model.pt", task="brats_t1ce")


def test_unusable_files_are_refused_clearly(tmp_path):
    with pytest.raises(CheckpointError, match=r"not found; train a model"):
        load_generators(tiny_network(), tmp_path / "absent.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"text\.pt cannot be read as a weights-only torch file"):
        load_generators(tiny_network(), tmp_path / "text.pt")
    torch.save({"epoch": 3}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt: expected a MU-Diff state dict"):
        load_generators(tiny_network(), tmp_path / "other.pt")
    torch.save({"conv.weight": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match=r"foreign\.pt: the weights do not fit.*missing keys.*unexpected keys"):
        load_generators(tiny_network(), tmp_path / "foreign.pt")


@pytest.fixture(scope="module")
def attention_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention")
    net = tiny_network()
    torch.save(net.state_dict(), root / "model.pt")
    uncertainty = CriticUncertaintyMap(in_channels=8 * 8, seed=5)
    torch.save(_resume_payload(net, tiny_critic(), uncertainty), root / "resume.pt")
    crop = crop_subject("TCGA-DU-7294", root / "data", CROP, name="TCGA-crop")
    return root, crop


def _run_with_attention(setup, tmp_path: Path, critic: Path) -> list[dict]:
    """The CLI on the crop in volume mode with the attention map asked for, reading the critic from ``critic``."""
    root, crop = setup
    return cli_run(
        config_file=[INFERENCE_CONFIG, write_overlay(tmp_path)],
        weights=str(root / "model.pt"),
        critic=str(critic),
        attention=True,
        subject_dirs=[str(Path(crop["t1"]).parent)],
        slice_mode="volume",
        spatial_size="null",
        out_dir=str(tmp_path / "out"),
        device="cpu",
    )


def test_attention_map_from_resume_checkpoint(attention_setup, tmp_path):
    written = _run_with_attention(attention_setup, tmp_path, attention_setup[0] / "resume.pt")
    att_path = Path(written[0]["att"])
    assert att_path.parent.name == "attention" and att_path.name == "TCGA-crop_att_t1ce.nii.gz"
    att = np.asarray(nib.load(att_path).dataobj)
    syn = np.asarray(nib.load(written[0]["syn"]).dataobj)
    assert att.shape == syn.shape and 0.0 <= att.min() and att.max() <= 1.0
    assert np.all(att[syn > 0] > 0) and not np.any(att[syn == 0])  # sigmoid map inside the brain only


def test_attention_critic_takes_the_checkpoint_projection(attention_setup):
    root, _ = attention_setup
    uncertainty = CriticUncertaintyMap(in_channels=8 * 8, seed=0)
    critic = build_attention_critic(True, tiny_critic(seed=9), uncertainty, str(root / "resume.pt"))
    saved = torch.load(root / "resume.pt", weights_only=True)["objects"]
    assert torch.equal(critic.uncertainty.weight, saved["uncertainty"]["weight"])
    state = critic.critic.state_dict()
    assert all(torch.equal(v, saved["critic"][k]) for k, v in state.items() if isinstance(v, torch.Tensor))
    assert state[EXTRA_STATE_KEY] == saved["critic"][EXTRA_STATE_KEY]  # the critic's description came along
    assert build_attention_critic(False, tiny_critic(), uncertainty, str(root / "resume.pt")) is None


def _settings(path: str | None) -> dict:
    return CriticCheckpoint.read(path).settings()


def test_the_attention_critic_is_built_as_its_checkpoint_describes_it(attention_setup, tmp_path, monkeypatch):
    """The critic's configuration travels in its weights (as the generators' does in model.pt), so inference needs
    no ngf / critic_blocks of its own; a file without a description keeps the defaults (then set the keys)."""
    root, _ = attention_setup
    tiny = {"ngf": 8, "t_emb_dim": 256, "critic_blocks": 3}
    assert _settings(str(root / "resume.pt")) == tiny
    state = tiny_critic().state_dict()
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp_critic.pt")
    assert _settings(str(tmp_path / "ddp_critic.pt")) == tiny
    del state[EXTRA_STATE_KEY]
    torch.save(state, tmp_path / "old_critic.pt")
    assert _settings(str(tmp_path / "old_critic.pt")) == {"ngf": 64, "t_emb_dim": 256, "critic_blocks": 6}
    assert _settings(None) == _settings(str(tmp_path / "absent.pt")) == _settings(str(tmp_path / "old_critic.pt"))
    reads = []
    read = weights.read_checkpoint
    monkeypatch.setattr(
        weights, "read_checkpoint", lambda path, what="weights": reads.append(str(path)) or read(path, what)
    )
    parser = load_config([INFERENCE_CONFIG], {"save_attention": True, "critic_ckpt": str(root / "resume.pt")})
    built = parser.get_parsed_content("critic_def")
    assert (built.config["ngf"], built.config["num_blocks"]) == (8, 3)
    attention = parser.get_parsed_content("attention_critic")
    saved = torch.load(root / "resume.pt", weights_only=True)["objects"]["critic"]
    assert all(torch.equal(v, saved[k]) for k, v in attention.critic.state_dict().items() if torch.is_tensor(v))
    assert reads.count(str(root / "resume.pt")) == 1  # read once, for the critic's configuration and its weights


def test_attention_skipped_clearly_without_critic(attention_setup, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        written = _run_with_attention(attention_setup, tmp_path, tmp_path / "no_resume.pt")
    assert set(written[0]) == {"syn"} and not (tmp_path / "out" / "attention").exists()
    assert "attention map skipped" in caplog.text and "no_resume.pt not found" in caplog.text


def _load(name: str) -> dict:
    return yaml.safe_load((REPO_ROOT / "configs" / name).read_text(encoding="utf-8"))


def test_inference_network_follows_the_weights_record(tmp_path):
    """Weights that carry their record build their own network, schedule and slicing in configs/inference.yaml (so
    the shipped demo weights and anything trained here need no overlay); weights without one get the published
    configuration, whose one home is MUDiff's and VPSchedule's defaults, and train.yaml's default recipe builds it."""
    from monai.bundle import ConfigParser

    def parsed(weights, config=INFERENCE_CONFIG):
        parser = ConfigParser()
        parser.read_config(config)
        parser.update({"bundle_root": str(REPO_ROOT), "ckpt_path": str(weights), "device": "$torch.device('cpu')"})
        return parser

    record = {"task": "brats_flair", "slice_mode": "reference", "num_slices": 8, "spatial_size": 32}
    schedule = {"num_timesteps": 2, "beta_min": 0.2, "beta_max": 10.0}  # trained with another schedule
    net = tiny_network()
    net.record = {**record, **schedule}
    torch.save(net.state_dict(), tmp_path / "described.pt")
    parser = parsed(tmp_path / "described.pt")
    built = parser.get_parsed_content("network_def")
    assert built.config == net.config and parser.get_parsed_content("target") == "flair"
    assert {k: parser.get_parsed_content(k) for k in record} == record
    assert parser.get_parsed_content("schedule").num_timesteps == 2
    assert {k: parser.get_parsed_content(k) for k in schedule} == schedule

    torch.save({k: v for k, v in net.state_dict().items() if k != "_extra_state"}, tmp_path / "plain.pt")
    published = parsed(tmp_path / "plain.pt").get_parsed_content("network_def").config
    assert published == MUDiff.default_config() and published["nf"] == 64 and published["ch_mult"] == [1, 2, 4]
    assert parsed(tmp_path / "plain.pt").get_parsed_content("schedule").num_timesteps == 4
    train = parsed(tmp_path / "plain.pt", str(REPO_ROOT / "configs" / "train.yaml"))
    assert train.get_parsed_content("network_def").config == published
    trained_record = train.get_parsed_content("weights_record")
    assert {k: trained_record[k] for k in schedule} == {"num_timesteps": 4, "beta_min": 0.1, "beta_max": 20.0}


def test_converted_published_layout_runs_end_to_end(tmp_path):
    """The reference code's checkpoints (golden, published key layout with `module.` prefix) -> convert_weights ->
    whole-subject synthesis with the critic attention map, on the subject's grid."""
    golden = REPO_ROOT.parent / "shared" / "reference" / "golden"
    if not golden.is_dir():
        pytest.skip(f"{golden} not available (../shared is optional outside the development machine)")
    from scripts.convert_weights import convert_critic, convert_published

    net = {"image_size": 64, "nf": 64, "ch_mult": [1, 2], "num_res_blocks": 1}
    convert_published(golden / "g1_state.pt", golden / "g2_state.pt", tmp_path / "model.pt", verbose=False, **net)
    convert_critic(golden / "d_state.pt", tmp_path / "critic.pt", verbose=False, ngf=16)
    overlay = write_overlay(
        tmp_path,
        **net,
        nz=100,
        z_emb_dim=256,
        n_mlp=3,
        ngf=16,
        critic_blocks=6,
        spatial_size=64,
        num_slices=2,
        infer_batch_size=2,
    )
    written = cli_run(
        config_file=[INFERENCE_CONFIG, overlay],
        weights=str(tmp_path / "model.pt"),
        critic=str(tmp_path / "critic.pt"),
        attention=True,
        subject_dirs=[str(REPO_ROOT / "sample_data" / "tcga_brats_space" / "TCGA-DU-7294")],
        out_dir=str(tmp_path / "out"),
        device="cpu",
    )
    flair = nib.load(REPO_ROOT / "sample_data" / "tcga_brats_space" / "TCGA-DU-7294" / "TCGA-DU-7294_fla_bet.nii.gz")
    for kind in ("syn", "att"):
        img = nib.load(written[0][kind])
        assert img.shape == flair.shape and np.allclose(img.affine, flair.affine, atol=1e-5)
        data = np.asarray(img.dataobj)
        assert [z for z in range(data.shape[2]) if data[:, :, z].any()] == [39, 40]
