"""VP schedule, forward pairs and posterior of MU-Diff against the reference (golden tensors) and real MRI.

Measured on CPU (torch 2.13): every schedule table, x_t, x_{t+1} and the posterior sample are bit-identical to
the golden files (max abs error 0.0); the tolerance asserted is 1e-5 x the output's scale.
"""

from __future__ import annotations

import pytest
import torch
from conftest import REPO_ROOT
from scripts.diffusion import VPSchedule, draw_normal, make_generator

REPO = REPO_ROOT

SHARED = REPO.parent / "shared"
GOLDEN = SHARED / "reference" / "golden"
T1C = SHARED / "data" / "tcga_brats_space" / "TCGA-DU-7294" / "TCGA-DU-7294_t1c_bet.nii.gz"

needs_golden = pytest.mark.skipif(not GOLDEN.is_dir(), reason="../shared/reference/golden is absent")
needs_data = pytest.mark.skipif(not T1C.is_file(), reason="../shared/data is absent")


def _golden(name: str) -> dict[str, torch.Tensor]:
    return torch.load(GOLDEN / name, weights_only=True)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


@pytest.fixture(scope="module")
def schedule() -> VPSchedule:
    return VPSchedule()


@pytest.fixture(scope="module")
def real_x0() -> torch.Tensor:
    """Two real axial T1c slices (2, 1, 48, 48) scaled to [-1, 1] with background at -1 (the networks' range)."""
    import nibabel as nib

    vol = torch.from_numpy(nib.load(str(T1C)).get_fdata(dtype="float32"))
    slices = vol[:, :, [70, 85]].permute(2, 0, 1).unsqueeze(1)  # (2, 1, 240, 240)
    slices = torch.nn.functional.interpolate(slices, size=(48, 48), mode="bilinear", align_corners=False)
    slices = slices.clamp_min(0.0)  # interpolation leaves small negatives outside the skull-stripped brain
    return slices / slices.amax(dim=(1, 2, 3), keepdim=True) * 2.0 - 1.0


# ------------------------------------------------------------------------------------------------ schedule
@needs_golden
def test_schedule_tables_match_reference(schedule: VPSchedule) -> None:
    golden = _golden("schedule.pt")
    tables = schedule.tables()
    for name, ref in golden.items():
        ours = tables[name]
        assert ours.dtype == torch.float32 and ours.shape == ref.shape, name
        rel = ((ours.double() - ref.double()).abs() / ref.double().abs().clamp_min(1e-30)).max().item()
        # measured: 0.0 (bit-identical) for every table
        assert rel <= 1e-6, f"{name}: max relative error {rel:.3e} vs golden/schedule.pt"


def test_schedule_values_from_spec(schedule: VPSchedule) -> None:
    """The rounded numbers of spec section 3 (no golden files needed)."""
    expected = {
        "sigmas": [1e-4, 0.691560, 0.921524, 0.977966, 0.993682],
        "a_s": [1.0, 0.722319, 0.388322, 0.208764, 0.112232],
        "a_s_cum": [1.0, 0.722319, 0.280492, 0.058557, 0.006572],
        "sigmas_cum": [0.0, 0.691560, 0.959856, 0.998284, 0.999978],
        "posterior_variance": [0.0, 0.440819, 0.884202, 0.984061],
        "posterior_mean_coef1": [1.0, 0.665778, 0.269191, 0.057822],
        "posterior_mean_coef2": [0.0, 0.201576, 0.193001, 0.111852],
    }
    for name, values in expected.items():
        torch.testing.assert_close(getattr(schedule, name), torch.tensor(values), atol=1.5e-6, rtol=0, msg=name)


def test_schedule_tables_are_consistent(schedule: VPSchedule) -> None:
    """Composing the two forward steps gives the marginal at t+1: what makes (x_t, x_{t+1}) a valid pair."""
    s = schedule
    torch.testing.assert_close(s.a_s_cum[1:], s.a_s_cum[:-1] * s.a_s[1:])
    torch.testing.assert_close(s.a_s[1:] ** 2 * s.sigmas_cum[:-1] ** 2 + s.sigmas[1:] ** 2, s.sigmas_cum[1:] ** 2)
    assert s.sigmas_cum[0] == 0 and s.a_s_cum[0] == 1 and s.posterior_variance[0] == 0


def test_tables_are_buffers_that_move_but_are_not_saved(schedule: VPSchedule) -> None:
    names = {n for n, _ in schedule.named_buffers()}
    assert {"sigmas", "a_s_cum", "posterior_mean_coef1", "posterior_log_variance_clipped"} <= names
    assert schedule.state_dict() == {}
    moved = VPSchedule().to(torch.float64)
    assert moved.sigmas_cum.dtype == torch.float64


def test_schedule_rejects_bad_hyper_parameters() -> None:
    with pytest.raises(ValueError, match="num_timesteps"):
        VPSchedule(num_timesteps=0)
    with pytest.raises(ValueError, match="beta_min < beta_max"):
        VPSchedule(beta_min=20.0, beta_max=0.1)


# ------------------------------------------------------------------------------------------------ forward
@needs_golden
def test_q_sample_pairs_match_reference(schedule: VPSchedule) -> None:
    io = _golden("q_pairs_io.pt")
    x_t, x_tp1 = schedule.q_sample_pairs(io["x0"], io["t"], noise_t=io["noise_x_t"], noise_tp1=io["noise_x_tp1"])
    for name, ours in (("x_t", x_t), ("x_tp1", x_tp1)):
        err, scale = _max_err(ours, io[name]), io[name].abs().max().item()
        assert err <= 1e-5 * scale, f"{name}: max abs error {err:.3e} (measured 0.0)"


@needs_golden
def test_sample_posterior_matches_reference(schedule: VPSchedule) -> None:
    io = _golden("q_pairs_io.pt")
    sample = schedule.sample_posterior(io["posterior_x0"], io["x_tp1"], io["t"], noise=io["posterior_noise"])
    err, scale = _max_err(sample, io["posterior_sample"]), io["posterior_sample"].abs().max().item()
    assert err <= 1e-5 * scale, f"posterior sample: max abs error {err:.3e} (measured 0.0)"


@needs_data
def test_x_t_is_x0_exactly_at_t0(schedule: VPSchedule, real_x0: torch.Tensor) -> None:
    gen = make_generator(3)
    x_t, x_tp1 = schedule.q_sample_pairs(real_x0, torch.zeros(2, dtype=torch.long), generator=gen)
    assert torch.equal(x_t, real_x0)
    assert torch.equal(schedule.q_sample(real_x0, 0, generator=gen), real_x0)
    # x_1 = a_s[1] x0 + sigmas[1] noise still carries the image: its correlation with x0 is
    # a std(x0) / sqrt(a^2 var(x0) + sigma^2) (about 0.6 here), nowhere near 0 or 1
    a, sigma, sd = schedule.a_s[1], schedule.sigmas[1], real_x0.std()
    expected = (a * sd / torch.sqrt(a**2 * sd**2 + sigma**2)).item()
    corr = torch.corrcoef(torch.stack([x_tp1.flatten(), real_x0.flatten()]))[0, 1].item()
    assert abs(corr - expected) < 0.05, (corr, expected)


@needs_data
def test_q_sample_pairs_draws_tp1_noise_first(schedule: VPSchedule, real_x0: torch.Tensor) -> None:
    """Seeded draws follow the reference's order: noise for x_{t+1} first, then noise for x_t."""
    t = torch.tensor([3, 1])
    gen = make_generator(11)
    first = draw_normal(real_x0.shape, device="cpu", generator=gen)
    second = draw_normal(real_x0.shape, device="cpu", generator=gen)
    expected = schedule.q_sample_pairs(real_x0, t, noise_t=second, noise_tp1=first)
    drawn = schedule.q_sample_pairs(real_x0, t, generator=make_generator(11))
    assert torch.equal(drawn[0], expected[0]) and torch.equal(drawn[1], expected[1])


@needs_data
def test_seeded_draws_are_reproducible(schedule: VPSchedule, real_x0: torch.Tensor) -> None:
    t = torch.tensor([0, 3])
    a = schedule.q_sample_pairs(real_x0, t, generator=make_generator(5))
    b = schedule.q_sample_pairs(real_x0, t, generator=make_generator(5))
    c = schedule.q_sample_pairs(real_x0, t, generator=make_generator(6))
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    assert not torch.allclose(a[1], c[1])
    x0_hat = real_x0.flip(-1)
    t1 = torch.tensor([2, 1])
    p1 = schedule.sample_posterior(x0_hat, a[1], t1, generator=make_generator(9))
    p2 = schedule.sample_posterior(x0_hat, a[1], t1, generator=make_generator(9))
    p3 = schedule.sample_posterior(x0_hat, a[1], t1, generator=make_generator(10))
    assert torch.equal(p1, p2) and not torch.allclose(p1, p3)


# ------------------------------------------------------------------------------------------------ posterior
@needs_data
def test_no_posterior_noise_at_t0(schedule: VPSchedule, real_x0: torch.Tensor) -> None:
    x_tp1 = schedule.q_sample(real_x0, 1, generator=make_generator(2))
    x0_hat = real_x0 * 0.9
    t = torch.tensor([0, 2])
    mean = schedule.posterior_mean(x0_hat, x_tp1, t)
    big_noise = torch.full_like(real_x0, 5.0)
    sample = schedule.sample_posterior(x0_hat, x_tp1, t, noise=big_noise)
    assert torch.equal(sample[0], mean[0])  # t == 0: the mean, noise ignored
    assert torch.equal(mean[0], schedule.posterior_mean_coef1[0] * x0_hat[0])
    torch.testing.assert_close(sample[1] - mean[1], schedule.posterior_std[2] * big_noise[1])


def test_posterior_mean_recovers_x_t_from_a_consistent_pair(schedule: VPSchedule) -> None:
    """With the true x0, the posterior mean of x_t given x_{t+1} is an unbiased estimate: averaged over many
    forward pairs its error is ~0 while a single pair's x_t deviates by ~posterior std."""
    x0 = torch.linspace(-1, 1, 64).repeat(512, 1).unsqueeze(1)  # (512, 1, 64)
    t = torch.full((512,), 2, dtype=torch.long)
    x_t, x_tp1 = schedule.q_sample_pairs(x0, t, generator=make_generator(4))
    residual = x_t - schedule.posterior_mean(x0, x_tp1, t)
    assert residual.mean(0).abs().max() < 0.15
    torch.testing.assert_close(residual.std(0).mean(), schedule.posterior_std[2], atol=0.02, rtol=0)


# ------------------------------------------------------------------------------------------------ validation
def test_bad_timesteps_and_shapes_give_clear_errors(schedule: VPSchedule) -> None:
    x0 = torch.zeros(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 3\]"):
        schedule.q_sample_pairs(x0, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        schedule.q_sample_pairs(x0, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="integer tensor"):
        schedule.posterior_mean(x0, x0, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="noise_tp1 must have the image's shape"):
        schedule.q_sample_pairs(x0, torch.tensor([0, 1]), noise_tp1=torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="x_tp1 must have the image's shape"):
        schedule.sample_posterior(x0, torch.zeros(1, 1, 8, 8), torch.tensor([0, 1]))
