"""Speed switches and speed-ups give the plain path's results; the benchmark tool runs and reports what it promises.

- Data preparation: the vectorised reference resize and the blockwise normalization are bit-for-bit the
  straightforward implementations (skimage per slice; the reference formula in float64).
- Networks (tiny configuration, weights perturbed by 0.02 N(0, 1) so no layer is near zero, real MRI slices from
  the embedded sample as conditioning): channels_last and the in-place inference updates give the plain float32
  result (channels_last within 1e-5 x the output scale: only the convolution summation order changes; in-place
  exactly); bf16 autocast stays within a documented tolerance of float32 (max |diff| <= 0.05 and mean |diff| <= 0.01
  on outputs in [-1, 1] after the 4-step sampler; measured 4.6e-3 and 7e-4); torch.compile keeps parameter names
  and, traced by dynamo + AOT autograd ("aot_eager" backend: the inductor backend needs minutes to compile even
  this tiny network; its own output difference is reported by the benchmark), gives the plain result.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, sample_item
from scripts.data.pipeline import build_volume_transforms, prepare_subject
from scripts.data.slicing import _resize_reference, _resize_stack_reference
from scripts.data.transforms import reference_normalize
from scripts.diffusion.sampler import MUDiffSampler
from scripts.networks.fir import FIRUpsample2d
from scripts.networks.mudiff import MUDiff
from scripts.networks.optimize import compile_networks, prepare_for_inference, prepare_for_training
from skimage.transform import resize
from tools.benchmark import (
    CASES,
    BenchContext,
    Variant,
    VariantRun,
    _train_step,
    benchmark_data_prep,
    format_data_table,
    format_table,
    parse_variants,
    run_benchmark,
)

TINY = {"image_size": 32, "nf": 16, "ch_mult": (1, 2), "num_res_blocks": 1, "nz": 8, "z_emb_dim": 32, "n_mlp": 1}
BF16_MAX_ABS, BF16_MEAN_ABS = 0.05, 0.01


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a loaded 2-core machine two threads wait for each other (10-100 x slower small ops)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fresh_dynamo():
    """A clean torch.compile cache before and after: code compiled by another test would add guards and recompiles."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def real_stacks() -> dict:
    """The embedded TCGA subject through the reference pipeline (3 inputs + target, 80 slices at 256 x 256)."""
    return prepare_subject(sample_item("TCGA-DU-7294"), build_volume_transforms("brats_t1ce", mode="reference"))


@pytest.fixture(scope="module")
def cond(real_stacks) -> torch.Tensor:
    """Two real conditioning slices (2, 3, 32, 32) in [-1, 1], area-downsampled from the middle of the stack."""
    image = torch.from_numpy(np.asarray(real_stacks["image"][38:42:2], dtype=np.float32))
    return torch.nn.functional.interpolate(image, size=(32, 32), mode="area").clamp(-1, 1)


@pytest.fixture(scope="module")
def model() -> MUDiff:
    torch.manual_seed(0)
    net = MUDiff(**TINY).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return net


def _step_inputs(cond: torch.Tensor, nz: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(cond.shape[0], 1, *cond.shape[2:], generator=gen)
    return x, cond, torch.tensor([3, 1]), torch.randn(cond.shape[0], nz, generator=gen)


def _sample(net: torch.nn.Module, cond: torch.Tensor, amp: bool = False) -> torch.Tensor:
    return MUDiffSampler(amp=amp, seed=5)(cond, net)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max())


# ---------------------------------------------------------------------------------------------------- data prep
def _per_slice(vol: np.ndarray, indices, out_hw, is_mask: bool) -> np.ndarray:
    return np.stack([_resize_reference(vol[:, :, z], out_hw, is_mask) for z in indices])


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_vectorised_reference_resize_is_bit_identical(dtype):
    rng = np.random.default_rng(0)
    vol = np.zeros((40, 52, 6), dtype=dtype)
    vol[5:33, 9:45] = rng.random((28, 36, 6))  # brain with background border
    vol[:, :, 2] = rng.random((40, 52)) + 0.5  # a slice without background (clip to its own range)
    vol[:, :, 3] = 0.0  # an empty slice
    vol[10:20, 10:20, 4] = -rng.random((10, 10))  # negative interpolation residue
    mask = (vol > 0.3).astype(dtype)
    for out_hw in [(64, 48), (52, 40), (61, 47), (57, 80)]:  # up-sampling, identity and odd factors
        for indices in ([0, 1, 2, 3, 4, 5], [5, 0, 3]):
            for arr, is_mask in ((vol, False), (mask, True)):
                ours = _resize_stack_reference(arr, indices, out_hw, is_mask)
                ref = _per_slice(arr, indices, out_hw, is_mask)
                assert ours.dtype == ref.dtype and ours.shape == ref.shape
                assert np.array_equal(ours, ref), f"{out_hw} {indices} mask={is_mask}"
    # down-sampling needs skimage's Gaussian anti-aliasing: the per-slice reference runs, with the same result
    assert np.array_equal(
        _resize_stack_reference(vol, [0, 2], (32, 30), False), _per_slice(vol, [0, 2], (32, 30), False)
    )


def test_vectorised_resize_on_real_volume_matches_skimage(real_stacks):
    import nibabel as nib

    path = sample_item("TCGA-DU-7294")["t1"]
    vol = np.asarray(nib.load(path).get_fdata())
    vol = vol / vol.max()
    indices = [20, 40, 41, 79]
    ours = _resize_stack_reference(vol, indices, (256, 256), False)
    ref = np.stack([resize(vol[:, :, z], (256, 256), order=1, mode="constant", anti_aliasing=True).T for z in indices])
    assert np.array_equal(ours, ref)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16])
@pytest.mark.parametrize("order", ["C", "F"])
def test_blockwise_normalization_is_the_reference_formula(dtype, order):
    rng = np.random.default_rng(1)
    vol = np.asarray(rng.standard_normal((33, 41, 29)) * 300 + 120, dtype=dtype, order=order)
    before = vol.copy()
    v = vol.astype(np.float64)
    p_lo, p_hi = np.percentile(v[v > 0], [1.0, 99.0])
    clipped = np.clip(v, p_lo, p_hi)
    expected = (clipped - clipped.min()) / (clipped.max() - clipped.min())

    out, lo, hi = reference_normalize(vol)
    assert out.dtype == np.float64 and np.array_equal(out, expected) and (lo, hi) == (p_lo, p_hi)
    out32, _, _ = reference_normalize(vol, dtype=np.float32)
    assert out32.dtype == np.float32 and np.array_equal(out32, expected.astype(np.float32))
    assert np.array_equal(vol, before)  # input untouched


# ---------------------------------------------------------------------------------------------------- networks
def test_channels_last_gives_the_plain_result_and_keeps_weights_loadable(model, cond):
    fast = prepare_for_inference(copy.deepcopy(model), channels_last=True)
    inputs = _step_inputs(cond, model.nz)
    assert fast.g1.unet.out_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert list(fast.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        for a, b in zip(fast.predict_x0(*inputs), model.predict_x0(*inputs), strict=True):
            assert _rel_err(a, b) <= 1e-5
    assert _rel_err(_sample(fast, cond), _sample(model, cond)) <= 1e-5
    fast.load_state_dict(model.state_dict())  # checkpoints load into the NHWC weights and keep the layout
    assert fast.g1.unet.out_conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_in_place_inference_updates_are_exact(model, cond):
    inputs = _step_inputs(cond, model.nz)
    with torch.no_grad():
        fast = model.predict_x0(*inputs)
    with torch.enable_grad():
        plain = model.predict_x0(*inputs)  # autograd on: the out-of-place path
    for a, b in zip(fast, plain, strict=True):
        assert torch.equal(a, b.detach())


def test_bf16_autocast_within_tolerance_of_float32(model, cond):
    fp32 = _sample(model, cond)
    bf16 = _sample(model, cond, amp=True)
    diff = (bf16 - fp32).abs()
    assert bf16.dtype == torch.float32  # the sampler's arithmetic stays float32
    assert 0 < float(diff.max()) <= BF16_MAX_ABS, float(diff.max())  # > 0: bf16 really ran
    assert float(diff.mean()) <= BF16_MEAN_ABS
    # CPU autocast runs the FIR up-sampling in float32: the exact float32 result, not a bf16 rounding of it
    up, x = FIRUpsample2d(3), cond.to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = up(x)
    assert fast.dtype == torch.float32 and torch.equal(fast, up(x.float()))


@pytest.mark.slow
def test_compile_keeps_parameter_names_and_gives_the_plain_result(model, cond, fresh_dynamo):
    compiled = compile_networks(copy.deepcopy(model), backend="aot_eager")
    inputs = _step_inputs(cond, model.nz)
    assert list(compiled.state_dict()) == list(model.state_dict())
    with torch.no_grad():
        for a, b in zip(compiled.predict_x0(*inputs), model.predict_x0(*inputs), strict=True):
            assert _rel_err(a, b) <= 1e-5
    trainable = prepare_for_training(copy.deepcopy(model).train(), channels_last=True)
    assert trainable.training
    with pytest.raises(ValueError, match="compile_mode must be one of"):
        prepare_for_inference(copy.deepcopy(model), compile=True, compile_mode="fastest")


def _inference_network(**switches):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO_ROOT / "configs" / "inference.yaml"))
    parser["bundle_root"] = str(REPO_ROOT)
    for key, value in {**TINY, "ch_mult": [1, 2], "device": "$torch.device('cpu')", **switches}.items():
        parser[key] = value
    return parser, parser.get_parsed_content("network")


def test_inference_config_switches_reach_the_network():
    from scripts.networks.optimize import bf16_is_fast

    parser, default = _inference_network()
    fast = bf16_is_fast("cpu")  # the default: bf16 + channels_last where bf16 is native, float32 elsewhere
    assert parser.get_parsed_content("amp") is fast and parser.get_parsed_content("channels_last") is fast
    assert parser.get_parsed_content("sampler").amp is fast
    assert default.g1.unet.out_conv.weight.is_contiguous(memory_format=torch.channels_last) is fast
    parser, plain = _inference_network(amp=False)  # one key away: the exact float32 path
    assert parser.get_parsed_content("channels_last") is False and parser.get_parsed_content("sampler").amp is False
    assert parser["compile"] is False
    assert not plain.training and not plain.g1.unet.out_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert parser.get_parsed_content("dataloader").num_workers == 0
    parser, fast = _inference_network(channels_last=True, compile=True, compile_mode="reduce-overhead", num_workers=2)
    assert fast.g1.unet.out_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.g1._compiled_call_impl is not None and fast.g2._compiled_call_impl is not None  # compiled lazily
    assert parser.get_parsed_content("dataloader").num_workers == 2


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n", True),
        ("flags\t\t: fpu sse avx2 avx512f avx512bw\n", False),  # AVX-512 without bf16: emulated, slower than fp32
        ("Features\t: fp asimd bf16 i8mm\n", True),  # Arm (Graviton 3, Neoverse V1)
        (None, False),  # no /proc/cpuinfo (macOS, Windows): stay exact
    ],
)
def test_bf16_is_fast_reads_the_cpu_flags(tmp_path, flags, expected):
    from scripts.networks.optimize import bf16_is_fast

    cpuinfo = tmp_path / "cpuinfo"
    if flags is not None:
        cpuinfo.write_text("processor\t: 0\n" + flags, encoding="utf-8")
    assert bf16_is_fast("cpu", cpuinfo=str(cpuinfo)) is (expected and torch.backends.mkldnn.is_available())
    assert bf16_is_fast("meta", cpuinfo=str(cpuinfo)) is False


def _training_config(**switches):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO_ROOT / "configs" / c) for c in ("train.yaml", "train_demo.yaml")])
    parser["bundle_root"] = str(REPO_ROOT)
    for key, value in {**TINY, "ch_mult": [1, 2], "critic_blocks": 3, "device": "$torch.device('cpu')"}.items():
        parser[key] = value
    for key, value in switches.items():
        parser[key] = value
    return parser


def test_training_config_switches_reach_networks_and_loaders():
    parser = _training_config()
    assert (parser["channels_last"], parser["compile"]) == (False, False)  # plain by default
    assert parser.get_parsed_content("pin_memory") is torch.cuda.is_available()
    net, critic = parser.get_parsed_content("network"), parser.get_parsed_content("critic")
    assert net.training and not net.g1.unet.out_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert net.g1._compiled_call_impl is None
    parser = _training_config(channels_last=True, compile=True, pin_memory=True, use_ema=True)
    net, critic = parser.get_parsed_content("network"), parser.get_parsed_content("critic")
    assert net.training and net.g1.unet.out_conv.weight.is_contiguous(memory_format=torch.channels_last)
    conv4d = [w for w in critic.parameters() if w.ndim == 4]
    assert conv4d and all(w.is_contiguous(memory_format=torch.channels_last) for w in conv4d)
    assert net.g1._compiled_call_impl is not None and net.g2._compiled_call_impl is not None  # compiled lazily
    assert critic._compiled_call_impl is None  # R1 differentiates through the critic's gradient: never compiled
    assert parser.get_parsed_content("ema").eval_network is not net  # the EMA copy of a compiled network builds
    assert parser.get_parsed_content("train#dataloader").pin_memory
    assert parser.get_parsed_content("validate#dataloader").pin_memory


# ---------------------------------------------------------------------------------------------------- benchmark
@pytest.mark.slow
def test_benchmark_reports_variants_against_plain_in_one_run(tmp_path):
    tiny = {k: v for k, v in TINY.items() if k != "image_size"}
    ctx = BenchContext(torch.device("cpu"), image_size=32, warmup=1, repeats=1, network_kwargs=tiny, volume_slices=3)
    variants = parse_variants("bf16,channels_last", torch.device("cpu"))
    cases = ("g1_forward", "sample_4step", "volume_infer")
    report = run_benchmark(ctx, [2], list(cases), variants)
    rows = {(r["case"], r["variant"]): r for r in report["results"]}
    assert set(rows) == {(c, v) for c in cases for v in ("plain", "bf16", "channels_last")}
    for (case, variant), r in rows.items():
        slices = 3 if case == "volume_infer" else 2  # the whole-volume case runs 3 slices in calls of 2
        assert r["slices_per_call"] == slices and r["slices_per_s"] == pytest.approx(slices / r["median_s"])
        assert r["ms_per_volume"] == pytest.approx(1e3 * r["median_s"] * 155 / slices)
        assert r["flops_per_slice"] == report["flops_per_slice"][case] > 0
        assert 0 < r["roofline_fraction"] and r["dtype"] == ("bf16" if variant == "bf16" else "fp32")
    assert rows[("sample_4step", "plain")]["speedup_vs_plain"] == 1.0
    assert rows[("sample_4step", "plain")]["max_abs_diff_vs_plain"] == 0.0
    assert rows[("sample_4step", "channels_last")]["max_abs_diff_vs_plain"] <= 1e-5
    assert rows[("volume_infer", "channels_last")]["max_abs_diff_vs_plain"] <= 1e-5
    assert 0 < rows[("sample_4step", "bf16")]["max_abs_diff_vs_plain"] <= BF16_MAX_ABS
    assert set(report["matmul_peak_flops_per_s"]) == {"fp32", "bf16"}
    json.dumps(report)
    table = format_table(report)
    assert "| sample_4step | 2 | bf16 | bf16 |" in table and "roofline" in table
    with pytest.raises(ValueError, match="unknown switch"):
        parse_variants("bf16+turbo", torch.device("cpu"))
    with pytest.raises(ValueError, match="do not apply to cpu"):
        parse_variants("cudagraphs", torch.device("cpu"))
    assert {"g1_forward", "g2_forward", "critic_forward", "train_step", "train_step_r1"} <= set(CASES)


def test_data_benchmark_times_real_subject():
    before = torch.get_num_threads()
    report = benchmark_data_prep([sample_item("TCGA-DU-7294")], modes=["volume"], targets=[False], repeats=1, core=None)
    (row,) = report["results"]
    assert row["slices"] == 80 and row["wall_median_s"] > 0 and row["cpu_median_s"] > 0 and row["workers_estimate"] >= 1
    assert torch.get_num_threads() == before  # the one-thread setting is undone
    assert "workers (estimate)" in format_data_table(report)


@pytest.mark.slow
def test_training_switches_give_the_plain_losses(fresh_dynamo):
    """A critic step with R1 and a generator step with channels_last + compiled generators (aot_eager) give the
    plain losses: the switches a training config would use (``prepare_for_training``) leave training unchanged."""
    tiny = {k: v for k, v in TINY.items() if k != "image_size"}
    ctx = BenchContext(torch.device("cpu"), image_size=64, network_kwargs=tiny, critic_kwargs={"ngf": 16})
    losses = []
    for fast in (False, True):
        run = VariantRun(ctx, Variant("plain", ()))
        if fast:
            run.prepare = lambda m: (  # type: ignore[method-assign]
                compile_networks(prepare_for_training(copy.deepcopy(m), channels_last=True), backend="aot_eager")
                if isinstance(m, MUDiff)
                else prepare_for_training(copy.deepcopy(m), channels_last=True)
            )
        torch.manual_seed(0)
        out = _train_step(run, 2, apply_r1=True)()  # critic step with R1, then generator step: its losses
        losses.append({k: float(v) for k, v in out.items() if k.startswith("g_")})
    assert losses[0].keys() == losses[1].keys() and "g_loss" in losses[0]
    for key, value in losses[0].items():
        assert losses[1][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_benchmark_cli_bad_arguments_are_one_line(capsys):
    from tools.benchmark import cli

    assert cli(["--warmup", "0"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: benchmark: need repeats >= 1 and warmup >= 1 (the first call may compile)"
    )
    assert cli(["--device", "tpu"]) == 2
    assert "device must be cpu or cuda" in capsys.readouterr().err
    assert cli(["data"]) == 2
    assert "--subject_dirs" in capsys.readouterr().err


def test_precision_study_rule_separates_a_seed_sized_shift_from_rounding():
    """tools.precision_study's equivalence rule: a path passes when its paired interval lies within the seed noise."""
    from tools.precision_study import METRICS, paired_statistics, verdicts

    rng = np.random.default_rng(0)
    noise = paired_statistics(rng.normal(0.0, 1.0, 400))  # seed b - seed a: interval about +-0.1
    assert noise["low"] < 0 < noise["high"] and noise["p"] > 0.01
    tiny = paired_statistics(0.01 + rng.normal(0.0, 0.01, 400))  # systematic but small (bf16-like)
    assert tiny["p"] < 0.01 and tiny["low"] > 0  # a paired test detects it ...
    shifted = paired_statistics(0.5 + rng.normal(0.0, 1.0, 400))
    result = {
        "paths": {"fp32": {}, "small": {m: {"vs_fp32": tiny} for m in METRICS}},
        "seed_vs_seed": dict.fromkeys(METRICS, noise),
    }
    assert verdicts(result) == {"small": True}  # ... but it is far inside the seed noise
    result["paths"]["small"][METRICS[0]] = {"vs_fp32": shifted}
    assert verdicts(result) == {"small": False}
