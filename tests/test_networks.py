"""MU-Diff networks: parity with the reference code (golden tensors), parameter counts, and behaviours.

Parity is measured against tensors computed by the authors' code (../shared/reference/golden, config "small":
image 64, nf 64, ch_mult [1, 2], num_res_blocks 1, critic ngf 16), loaded through our weight converter.
Tolerance: max |ours - reference| <= 1e-5 x max |reference|. Measured on CPU float32 (torch 2.13):
G1 1.3e-6 (scale 0.70), G2 1.4e-6 (scale 0.88), critic logit 1.2e-7 (0.60), critic features 9.5e-7 (0.73),
uncertainty map 0, FIR down 0, FIR up 2.4e-7, FIR strided conv 0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT
from scripts.convert_weights import convert_critic, load_generators_from_reference
from scripts.networks import (
    ContrastAwareGenerator,
    ContrastSpecificGenerator,
    CriticUncertaintyMap,
    MUDiff,
    TimeConditionedCritic,
)
from scripts.networks.fir import FIRConvDownsample2d, FIRDownsample2d, FIRUpsample2d

REPO = REPO_ROOT

SHARED = REPO.parent / "shared"
GOLDEN = SHARED / "reference" / "golden"
TCGA = SHARED / "data" / "tcga_brats_space" / "TCGA-DU-7294"
needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason="golden reference tensors (../shared) not available")
needs_data = pytest.mark.skipif(not TCGA.is_dir(), reason="real MRI (../shared/data) not available")

GOLDEN_CFG = {"image_size": 64, "nf": 64, "ch_mult": (1, 2), "num_res_blocks": 1}
TINY_CFG = {"image_size": 32, "nf": 16, "ch_mult": (1, 2), "num_res_blocks": 1, "nz": 8, "z_emb_dim": 32, "n_mlp": 1}


def _golden(name: str) -> dict[str, torch.Tensor]:
    return torch.load(GOLDEN / name, map_location="cpu", weights_only=True)


def _assert_close(ours: torch.Tensor, ref: torch.Tensor, what: str) -> float:
    assert ours.shape == ref.shape, f"{what}: shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    err = (ours.double() - ref.double()).abs().max().item()
    scale = ref.abs().max().item()
    assert err <= 1e-5 * scale, f"{what}: max abs error {err:.3e} > 1e-5 x scale {scale:.3e}"
    return err


def _real_slices(size: int = 64) -> torch.Tensor:
    """One axial slice (z = 77) of a real glioma case, [FLAIR, T2, T1, T1ce], each min-max scaled to [-1, 1]."""
    import nibabel as nib

    chans = []
    for contrast in ("fla", "t2", "t1", "t1c"):
        img = nib.load(str(TCGA / f"TCGA-DU-7294_{contrast}_bet.nii.gz"))
        chans.append(np.asarray(img.dataobj[:, :, 77], dtype=np.float32).T)  # axial slice, then H<->W as training
    x = F.interpolate(torch.from_numpy(np.stack(chans))[None], size=(size, size), mode="area")
    lo, hi = x.amin(dim=(2, 3), keepdim=True), x.amax(dim=(2, 3), keepdim=True)
    return (x - lo) / (hi - lo) * 2 - 1


@pytest.fixture(scope="module")
def golden_mudiff() -> MUDiff:
    return load_generators_from_reference(_golden("g1_state.pt"), _golden("g2_state.pt"), **GOLDEN_CFG).eval()


@pytest.fixture(scope="module")
def golden_critic() -> TimeConditionedCritic:
    critic = TimeConditionedCritic(ngf=16)
    critic.load_state_dict(convert_critic(GOLDEN / "d_state.pt", ngf=16), strict=True)
    return critic.eval()


# ---------------------------------------------------------------------------------------------- parity


@needs_golden
def test_fir_ops_match_reference():
    """FIR down (2.0e0 x, measured err 0), up (2.4e-7) and strided conv with FIR pre-filter (0)."""
    io = _golden("fir_io.pt")
    x = io["x"]
    _assert_close(FIRDownsample2d(3)(x), io["down"], "FIR down")
    _assert_close(FIRUpsample2d(3)(x), io["up"], "FIR up")
    conv = FIRConvDownsample2d(3, 5)
    with torch.no_grad():
        conv.conv.weight.copy_(io["conv_down_weight"])
        conv.conv.bias.copy_(io["conv_down_bias"])
        _assert_close(conv(x), io["conv_down"], "FIR conv down")


@needs_golden
def test_generators_match_reference(golden_mudiff):
    """G1 (measured 1.3e-6) and G2 (1.4e-6, given the reference's G1 output as pseudo target) vs the reference."""
    io = _golden("g_io.pt")
    cond = torch.cat([io["c1"], io["c2"], io["c3"]], dim=1)
    with torch.no_grad():
        x0_g1 = golden_mudiff.g1(io["x_tp1"], cond, io["t"], io["z"])
        x0_g2 = golden_mudiff.g2(io["x_tp1"], cond, io["t"], io["z"], io["g1_out"])
    _assert_close(x0_g1, io["g1_out"], "G1")
    _assert_close(x0_g2, io["g2_out"], "G2")


@needs_golden
def test_critic_and_uncertainty_map_match_reference(golden_critic):
    """Critic logit (measured 1.2e-7), mid-level features (9.5e-7) and the uncertainty map (0)."""
    io = _golden("d_io.pt")
    with torch.no_grad():
        logit, features = golden_critic(io["x_t"], io["x_tp1"], io["t"])
    _assert_close(logit, io["logit"].reshape(-1), "critic logit")
    _assert_close(features, io["mid_feat"], "critic features")
    umap = CriticUncertaintyMap(in_channels=features.shape[1])
    with torch.no_grad():
        umap.weight.copy_(io["att_weight"])
        umap.bias.copy_(io["att_bias"])
        _assert_close(umap(io["mid_feat"], (64, 64)), io["uncertainty_map"], "uncertainty map")


# ------------------------------------------------------------------------------------ parameter counts


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_published_config():
    with torch.device("meta"):
        assert _count(ContrastSpecificGenerator()) == 20_472_065
        assert _count(ContrastAwareGenerator()) == 21_399_681
        assert _count(TimeConditionedCritic()) == 27_736_705
        assert _count(MUDiff()) == 20_472_065 + 21_399_681


def test_parameter_counts_golden_config():
    with torch.device("meta"):
        assert _count(ContrastSpecificGenerator(**GOLDEN_CFG)) == 4_882_881
        assert _count(ContrastAwareGenerator(**GOLDEN_CFG)) == 5_810_497
        assert _count(TimeConditionedCritic(ngf=16)) == 1_994_785


def test_style_projection_follows_widths():
    """The reference's hard-coded Linear(64, 256) is derived from nf and z_emb_dim."""
    gen = ContrastAwareGenerator(**TINY_CFG)
    assert tuple(gen.stem.style_encoder.fc.weight.shape) == (TINY_CFG["z_emb_dim"], TINY_CFG["nf"])
    with torch.device("meta"):
        assert tuple(ContrastAwareGenerator().stem.style_encoder.fc.weight.shape) == (256, 64)


# ---------------------------------------------------------------------------------------------- behaviour


@needs_data
def test_fir_resampling_does_not_shift_real_images():
    """Down- then up-sampling a real slice keeps its intensity centroid and total mass (no pixel offset,
    the SynDiff 'translated output' concern); the down-sampled grid sits at the half-pixel position 2i + 0.5."""
    x = (_real_slices(64) + 1) / 2  # [0, 1], background 0 so zero padding adds nothing
    down = FIRDownsample2d(4)(x)
    back = FIRUpsample2d(4)(down)

    def centroid(img: torch.Tensor) -> torch.Tensor:
        ys, xs = torch.meshgrid(
            torch.arange(img.shape[-2], dtype=torch.float64),
            torch.arange(img.shape[-1], dtype=torch.float64),
            indexing="ij",
        )
        w = img.double()
        return torch.stack([(w * ys).sum((-2, -1)), (w * xs).sum((-2, -1))], -1) / w.sum((-2, -1))[..., None]

    c_in, c_back, c_down = centroid(x), centroid(back), centroid(down)
    assert torch.allclose(c_back, c_in, atol=1e-3), f"centroid moved: {c_in} -> {c_back}"
    assert torch.allclose(2 * c_down + 0.5, c_in, atol=1e-3)
    assert torch.allclose(back.sum((-2, -1)), x.sum((-2, -1)), rtol=1e-5)


@needs_golden
@needs_data
def test_generators_on_real_slices_batch_independent_and_conditioned(golden_mudiff):
    """On real MRI: outputs are in [-1, 1], a sample's result does not depend on its batch neighbours, and both
    the latent z and the timestep t change the prediction (the conditioning is wired)."""
    real = _real_slices(64)
    cond, target = real[:, :3], real[:, 3:]
    x_tp1 = 0.3 * target + 0.9 * torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    z = torch.randn(1, 100, generator=torch.Generator().manual_seed(1))
    # batch: [reference sample, other contrasts (flipped), same with -z, same with t = 2]
    batch_cond = torch.cat([cond, cond.flip(-1), cond, cond])
    batch_t = torch.tensor([1, 1, 1, 2])
    batch_z = torch.cat([z, z, -z, z])
    with torch.no_grad():
        batch = golden_mudiff.predict_x0(x_tp1.expand(4, -1, -1, -1), batch_cond, batch_t, batch_z)
        single = golden_mudiff.predict_x0(x_tp1, cond, batch_t[:1], z)
    for k, name in enumerate(("G1", "G2")):
        out = batch[k]
        assert out.abs().max() <= 1.0
        assert torch.allclose(out[:1], single[k], atol=1e-5), f"{name}: batch neighbours changed a sample's output"
        assert (out[1] - out[0]).abs().max() > 1e-3, f"{name}: conditioning contrasts have no effect"
        assert (out[2] - out[0]).abs().max() > 1e-3, f"{name}: latent z has no effect"
        assert (out[3] - out[0]).abs().max() > 1e-3, f"{name}: timestep t has no effect"


def test_fresh_generator_outputs_near_zero_and_g2_trains_g1():
    """A fresh generator predicts ~0 (near-zero head init, as the reference); G2's loss reaches G1's parameters
    because the pseudo target is not detached."""
    torch.manual_seed(0)
    model = MUDiff(**TINY_CFG)
    x_tp1, cond = torch.randn(2, 1, 32, 32), torch.rand(2, 3, 32, 32) * 2 - 1
    t, z = torch.tensor([0, 3]), torch.randn(2, TINY_CFG["nz"])
    x0_g1, x0_g2 = model.predict_x0(x_tp1, cond, t, z)
    assert x0_g1.shape == x0_g2.shape == (2, 1, 32, 32)
    assert x0_g1.abs().max() < 1e-3 and x0_g2.abs().max() < 1e-3
    x0_g2.square().sum().backward()
    g1_grads = [p.grad for p in model.g1.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    assert g1_grads, "no gradient from G2's output reached G1"


def test_mudiff_forward_defaults_and_bad_input():
    model = MUDiff(**TINY_CFG).eval()
    image = torch.rand(2, 4, 32, 32) * 2 - 1
    with torch.no_grad():
        out = model(image)
        x0_g1, x0_g2 = model.predict_x0(
            image[:, 3:], image[:, :3], torch.zeros(2, dtype=torch.long), torch.zeros(2, TINY_CFG["nz"])
        )
    assert out.shape == (2, 1, 32, 32)
    assert torch.allclose(out, (x0_g1 + x0_g2) / 2)
    with pytest.raises(ValueError, match=r"expects image \(B, 4, H, W\)"):
        model(torch.zeros(1, 3, 32, 32))


def test_critic_shapes_and_minibatch_divisibility():
    critic = TimeConditionedCritic(ngf=4)
    x = torch.randn(3, 1, 64, 64)
    logit, features = critic(x, x, torch.tensor([0, 1, 2]))
    assert logit.shape == (3,) and features.shape == (3, 32, 8, 8)
    x5 = torch.randn(5, 1, 64, 64)
    with pytest.raises(ValueError, match="batch size 5 must be divisible by the group size"):
        critic(x5, x5, torch.zeros(5, dtype=torch.long))


def test_uncertainty_map_frozen_seeded_or_trainable():
    frozen = CriticUncertaintyMap(32)
    assert list(frozen.parameters()) == [], "the default projection must not be trainable (reference behaviour)"
    assert set(frozen.state_dict()) == {"weight", "bias"}, "the frozen projection is saved with the checkpoint"
    assert torch.equal(frozen.weight, CriticUncertaintyMap(32, seed=0).weight)
    assert not torch.equal(frozen.weight, CriticUncertaintyMap(32, seed=1).weight)
    bound = (3.0 / ((32 + 1) / 2)) ** 0.5
    assert frozen.weight.abs().max() <= bound and frozen.bias.abs().max() == 0
    features = torch.randn(2, 32, 4, 4)
    m = frozen(features, (32, 32))
    assert m.shape == (2, 1, 32, 32) and m.min() > 0 and m.max() < 1
    trainable = CriticUncertaintyMap(32, trainable=True)
    assert {n for n, _ in trainable.named_parameters()} == {"weight", "bias"}
    trainable(features, (32, 32)).sum().backward()
    assert trainable.weight.grad is not None and trainable.weight.grad.abs().sum() > 0
