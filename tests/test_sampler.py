"""MUDiffSampler: the 4-step two-generator reverse process.

The golden case replays the reference's recorded draws through the real networks (converted from
golden/g1_state.pt, g2_state.pt); the others use small stand-in networks to pin down the sampler's own logic
(averaging, draw order, seeding, DDP unwrap, validation, evaluator wiring) on real MRI slices.
"""

from __future__ import annotations

import pytest
import torch
from conftest import REPO_ROOT
from scripts.diffusion import MUDiffSampler, SamplerOutput, VPSchedule, draw_normal, make_generator
from torch import nn

REPO = REPO_ROOT

SHARED = REPO.parent / "shared"
GOLDEN = SHARED / "reference" / "golden"
CASE = SHARED / "data" / "tcga_brats_space" / "TCGA-DU-7294"

needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason="../shared/reference/golden is absent")
needs_data = pytest.mark.skipif(not CASE.is_dir(), reason="../shared/data is absent")

NZ = 4


class TinyMUDiff(nn.Module):
    """Stand-in for MUDiff with the same interface: G2 sees G1's estimate, both use t and the shared z."""

    nz = NZ

    def __init__(self) -> None:
        super().__init__()
        self.g1 = nn.Conv2d(4, 1, 3, padding=1)
        self.g2 = nn.Conv2d(5, 1, 3, padding=1)
        self.z_proj = nn.Linear(NZ, 1)
        self.calls: list[dict[str, torch.Tensor]] = []

    def predict_x0(self, x_tp1, cond, t, z):
        self.calls.append({"x_tp1": x_tp1.clone(), "t": t.clone(), "z": z.clone()})
        bias = self.z_proj(z)[:, :, None, None] + 0.1 * t.to(x_tp1.dtype)[:, None, None, None]
        x0_g1 = torch.tanh(self.g1(torch.cat([cond, x_tp1], 1)) + bias)
        x0_g2 = torch.tanh(self.g2(torch.cat([cond, x_tp1, x0_g1], 1)) + bias)
        return x0_g1, x0_g2

    def forward(self, image, t, z):
        x0_g1, x0_g2 = self.predict_x0(image[:, -1:], image[:, :-1], t, z)
        return (x0_g1 + x0_g2) / 2


class ConstantPair(nn.Module):
    """Generators that ignore their inputs: the sampler's output must be the average of the two constants."""

    nz = NZ

    def __init__(self, v1: float, v2: float) -> None:
        super().__init__()
        self.v1, self.v2 = v1, v2
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the module a device

    def predict_x0(self, x_tp1, cond, t, z):
        return torch.full_like(x_tp1, self.v1), torch.full_like(x_tp1, self.v2)


class Wrapper(nn.Module):
    """DDP-like wrapper: the real network sits in ``.module`` and the wrapper has no predict_x0."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


class ForwardOnly(nn.Module):
    """Like a TorchScript export of MUDiff.forward: only forward(image, t, z) -> averaged x0 and ``nz``."""

    def __init__(self, net: TinyMUDiff) -> None:
        super().__init__()
        self.net, self.nz = net, net.nz

    def forward(self, image, t, z):
        return self.net(image, t, z)


@pytest.fixture(scope="module")
def cond() -> torch.Tensor:
    """Real conditioning slices (2, 3, 32, 32): T1, T2, FLAIR of one glioma case at two axial levels, [-1, 1]."""
    if not CASE.is_dir():
        pytest.skip("../shared/data is absent")
    import nibabel as nib

    chans = []
    for name in ("t1", "t2", "fla"):
        vol = torch.from_numpy(nib.load(str(CASE / f"TCGA-DU-7294_{name}_bet.nii.gz")).get_fdata(dtype="float32"))
        sl = vol[:, :, [70, 85]].permute(2, 0, 1).unsqueeze(1).clamp_min(0.0)
        sl = nn.functional.interpolate(sl, size=(32, 32), mode="bilinear", align_corners=False)
        chans.append(sl / sl.amax(dim=(1, 2, 3), keepdim=True) * 2.0 - 1.0)
    return torch.cat(chans, 1)


@pytest.fixture()
def tiny() -> TinyMUDiff:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return TinyMUDiff().eval()


def _manual_sampler(net, cond, x_init, zs, noises, schedule):
    """The reverse process written out step by step from spec section 3 (independent of the sampler's code)."""
    x = x_init
    for k, i in enumerate([3, 2, 1, 0]):
        t = torch.full((cond.shape[0],), i, dtype=torch.long)
        a, b = net.predict_x0(x, cond, t, zs[k])
        c1, c2 = schedule.posterior_mean_coef1[i], schedule.posterior_mean_coef2[i]
        mean = 0.5 * ((c1 * a + c2 * x) + (c1 * b + c2 * x))
        x = mean + (schedule.posterior_std[i] * noises[k] if i > 0 else 0.0)
    return x


# ------------------------------------------------------------------------------------------------ golden
def _real_mudiff_from_golden() -> nn.Module:
    """MUDiff at the golden configuration with the reference weights, loaded through the project's converter."""
    from scripts.convert_weights import load_generators_from_reference

    g1 = torch.load(GOLDEN / "g1_state.pt", weights_only=True)
    g2 = torch.load(GOLDEN / "g2_state.pt", weights_only=True)
    golden_config = {"image_size": 64, "nf": 64, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (16,)}
    return load_generators_from_reference(g1, g2, **golden_config).eval()


@needs_golden
def test_sampler_matches_reference_with_recorded_draws() -> None:
    io = torch.load(GOLDEN / "sampler_io.pt", weights_only=True)
    net = _real_mudiff_from_golden()
    cond = torch.cat([io["c1"], io["c2"], io["c3"]], 1)
    out = MUDiffSampler()(cond, net, x_T=io["x_T"], z_per_step=io["z_per_step"], noise_per_step=io["noise_per_step"])
    err = (out - io["output"]).abs().max().item()
    # measured on CPU: max abs error 1.09e-6 at output scale 0.69 (the reference's own replay: 8.6e-7)
    assert err <= 1e-5 * io["output"].abs().max().item(), f"max abs error {err:.3e} vs golden/sampler_io.pt"
    # bf16 autocast around the real generators stays close (measured: max 8.9e-3, mean 1.7e-3)
    low = MUDiffSampler(amp=True)(
        cond, net, x_T=io["x_T"], z_per_step=io["z_per_step"], noise_per_step=io["noise_per_step"]
    )
    assert low.dtype == torch.float32 and (low - io["output"]).abs().max() < 0.05


# ------------------------------------------------------------------------------------------------ logic
def test_output_is_average_of_the_two_generators(cond: torch.Tensor) -> None:
    sampler = MUDiffSampler(seed=0)
    out = sampler(cond, ConstantPair(0.6, -0.2))
    assert out.shape == (2, 1, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, torch.full_like(out, 0.2), atol=1e-6, rtol=0)
    # saturated generators stay in range (the reference's coef1[0] = 1 + 1.2e-7 would exceed 1 by that much)
    assert MUDiffSampler(seed=0)(cond, ConstantPair(1.0, 1.0)).max() <= 1.0


def test_recursion_and_replayed_draws(cond: torch.Tensor, tiny: TinyMUDiff) -> None:
    schedule = VPSchedule()
    gen = make_generator(7)
    x_init = draw_normal((2, 1, 32, 32), device="cpu", generator=gen)
    zs = draw_normal((4, 2, NZ), device="cpu", generator=gen)
    noises = draw_normal((4, 2, 1, 32, 32), device="cpu", generator=gen)
    out = MUDiffSampler(clip_output=False)(cond, tiny, x_T=x_init, z_per_step=zs, noise_per_step=noises)
    calls = tiny.calls
    assert [c["t"].tolist() for c in calls] == [[3, 3], [2, 2], [1, 1], [0, 0]]
    assert all(torch.equal(c["z"], zs[k]) for k, c in enumerate(calls))
    assert torch.equal(calls[0]["x_tp1"], x_init)
    tiny.calls.clear()
    expected = _manual_sampler(tiny, cond, x_init, zs, noises, schedule)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_generator_draw_order_matches_replay(cond: torch.Tensor, tiny: TinyMUDiff) -> None:
    """x_T, then per step z and (after the networks) the noise, the t = 0 noise included."""
    drawn = MUDiffSampler()(cond, tiny, generator=make_generator(21))
    gen = make_generator(21)
    x_init = draw_normal((2, 1, 32, 32), device="cpu", generator=gen)
    zs, noises = [], []
    for _ in range(4):
        zs.append(draw_normal((2, NZ), device="cpu", generator=gen))
        noises.append(draw_normal((2, 1, 32, 32), device="cpu", generator=gen))
    replay = MUDiffSampler()(cond, tiny, x_T=x_init, z_per_step=torch.stack(zs), noise_per_step=torch.stack(noises))
    assert torch.equal(drawn, replay)


def test_seeding(cond: torch.Tensor, tiny: TinyMUDiff) -> None:
    sampler = MUDiffSampler()
    a = sampler(cond, tiny, generator=make_generator(1))
    b = sampler(cond, tiny, generator=make_generator(1))
    c = sampler(cond, tiny, generator=make_generator(2))
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-3
    seeded = MUDiffSampler(seed=1)
    assert torch.equal(seeded(cond, tiny), seeded(cond, tiny))
    assert torch.equal(seeded(cond, tiny), a)


def test_return_x0_gives_last_step_estimates(cond: torch.Tensor, tiny: TinyMUDiff) -> None:
    res = MUDiffSampler(clip_output=False)(cond, tiny, generator=make_generator(3), return_x0=True)
    assert isinstance(res, SamplerOutput)
    sample, x0_g1, x0_g2 = res
    assert x0_g1.shape == x0_g2.shape == (2, 1, 32, 32)
    assert not torch.allclose(x0_g1, x0_g2)
    coef = VPSchedule().posterior_mean_coef1[0]
    torch.testing.assert_close(sample, 0.5 * (coef * x0_g1 + coef * x0_g2), atol=1e-6, rtol=0)


def test_unwraps_ddp_style_wrapper(cond: torch.Tensor, tiny: TinyMUDiff) -> None:
    direct = MUDiffSampler(seed=4)(cond, tiny)
    wrapped = MUDiffSampler(seed=4)(cond, Wrapper(tiny))
    assert torch.equal(direct, wrapped)


def test_forward_only_network_gives_the_same_samples(cond: torch.Tensor, tiny: TinyMUDiff) -> None:
    """The posterior mean is linear in x0, so sampling with the averaged forward() equals the pairwise path."""
    pair = MUDiffSampler(seed=5)(cond, tiny)
    fwd = MUDiffSampler(seed=5)(cond, ForwardOnly(tiny))
    torch.testing.assert_close(fwd, pair, atol=1e-6, rtol=0)
    with pytest.raises(TypeError, match="predict_x0"):
        MUDiffSampler()(cond, ForwardOnly(tiny), return_x0=True)


def test_sample_statistics(cond: torch.Tensor, tiny: TinyMUDiff) -> None:
    sampler = MUDiffSampler()
    stats = sampler.sample_statistics(cond, tiny, 3, generator=make_generator(8))
    gen = make_generator(8)
    samples = torch.stack([sampler(cond, tiny, generator=gen) for _ in range(3)])
    torch.testing.assert_close(stats.mean, samples.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(stats.std, samples.std(0), atol=1e-6, rtol=0)
    assert stats.num_samples == 3 and stats.std.max() > 0
    one = sampler.sample_statistics(cond, tiny, 1, generator=make_generator(8))
    assert torch.equal(one.std, torch.zeros_like(one.std)) and torch.equal(one.mean, samples[0])
    # num_samples in the constructor makes __call__ return the mean (for evaluator configs)
    mean = MUDiffSampler(num_samples=3)(cond, tiny, generator=make_generator(8))
    torch.testing.assert_close(mean, stats.mean, atol=0, rtol=0)
    with pytest.raises(ValueError, match="num_samples=1"):
        MUDiffSampler(num_samples=3)(cond, tiny, return_x0=True)


def test_bf16_autocast_stays_close_and_float32(cond: torch.Tensor, tiny: TinyMUDiff) -> None:
    ref = MUDiffSampler(seed=6)(cond, tiny)
    low = MUDiffSampler(seed=6, amp=True)(cond, tiny)
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 0.05


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_with_a_cpu_generator(cond: torch.Tensor, tiny: TinyMUDiff) -> None:
    cpu = MUDiffSampler()(cond, tiny, generator=make_generator(9))
    gpu = MUDiffSampler()(cond.cuda(), tiny.cuda(), generator=make_generator(9))
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


# ------------------------------------------------------------------------------------------------ validation
def test_input_validation(tiny: TinyMUDiff) -> None:
    sampler = MUDiffSampler()
    with pytest.raises(ValueError, match="4-D"):
        sampler(torch.zeros(3, 16, 16), tiny)
    with pytest.raises(ValueError, match="must have 3 channels"):
        sampler(torch.zeros(1, 4, 16, 16), tiny)
    with pytest.raises(TypeError, match="floating-point"):
        sampler(torch.zeros(1, 3, 16, 16, dtype=torch.long), tiny)
    with pytest.raises(ValueError, match=r"x_T must have shape \(1, 1, 16, 16\)"):
        sampler(torch.zeros(1, 3, 16, 16), tiny, x_T=torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"z_per_step must have shape \(4, 1, 4\)"):
        sampler(torch.zeros(1, 3, 16, 16), tiny, z_per_step=torch.zeros(3, 1, 4))
    with pytest.raises(AttributeError, match="nz"):
        sampler(torch.zeros(1, 3, 16, 16), nn.Conv2d(4, 1, 1))
    with pytest.raises(TypeError, match="VPSchedule"):
        MUDiffSampler(schedule="vp")


# ------------------------------------------------------------------------------------------------ wiring
def test_usable_from_a_bundle_config_and_supervised_evaluator(cond: torch.Tensor, tiny: TinyMUDiff) -> None:
    from monai.bundle import ConfigParser
    from monai.engines import SupervisedEvaluator

    parser = ConfigParser({"inferer": {"_target_": "scripts.diffusion.sampler.MUDiffSampler", "seed": 0}})
    inferer = parser.get_parsed_content("inferer")
    assert isinstance(inferer, MUDiffSampler)
    batches = [{"image": cond, "label": cond[:, :1]}]
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"), val_data_loader=batches, network=tiny, inferer=inferer, decollate=False
    )
    evaluator.run()
    pred = evaluator.state.output["pred"]
    assert pred.shape == (2, 1, 32, 32) and pred.abs().max() <= 1.0
    assert torch.equal(pred, MUDiffSampler(seed=0)(cond, tiny))
