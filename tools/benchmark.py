"""Speed, memory and cost benchmark of MU-Diff: the networks, the 4-step sampler, a training step, data preparation.

A tool, not a test. One run times every case (G1, G2, critic, the full 4-step sampler, optionally a training
iteration) for every batch size and every *variant*, a set of optimisation switches, and reports each variant
next to the ``plain`` one (float32, eager, NCHW: our own code with every switch off), measured in the same
process, on the same inputs, with the repeats of all variants interleaved so that load from other processes
spreads over them evenly. Per row: slices/s, milliseconds per 155-slice volume, peak memory, FLOPs per slice,
the roofline fraction (achieved FLOP/s over the device's *measured* matrix-multiply throughput in the variant's
precision), the speed-up over ``plain`` and the largest output difference from ``plain``.

Switches (``SWITCHES``; a variant joins them with "+", e.g. ``bf16+channels_last``):
  bf16           bfloat16 autocast around the networks (the sampler's diffusion arithmetic stays float32)
  channels_last  NHWC weights and activations (``scripts.networks.optimize.to_channels_last``)
  compile        ``torch.compile`` of the generators / critic (``compile_networks``); the first call's time,
                 which includes compilation, is reported separately as ``first_call_s``
  cudagraphs     ``torch.compile(mode="reduce-overhead")``: CUDA graphs for the fixed-shape generator calls
                 (CUDA only)

Usage (from the repository root)::

    python -m tools.benchmark --device cpu --image_size 128 --batch_sizes 2 --cases sample_4step \\
        --variants plain,bf16,channels_last,bf16+channels_last,compile --threads 1 --output bench.json
    python -m tools.benchmark data --subject_dirs ../shared/data/tcga_brats_space/TCGA-DU-7294 --output data.json

Networks use random weights (timing does not depend on them) perturbed by ``perturb`` x N(0, 1), so that no
layer is near zero and output differences between variants mean something; ``--checkpoint`` loads real weights.
"""

from __future__ import annotations

import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from scripts.cli_args import parse_list
from scripts.data.io_utils import write_json
from scripts.diffusion.draws import make_generator
from scripts.diffusion.sampler import MUDiffSampler
from scripts.networks.critic import TimeConditionedCritic
from scripts.networks.mudiff import MUDiff
from scripts.networks.optimize import compile_networks, to_channels_last
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "CASES",
    "SWITCHES",
    "VOLUME_SLICES",
    "BenchContext",
    "Variant",
    "register_case",
    "register_switch",
    "parse_variants",
    "matmul_throughput",
    "run_benchmark",
    "format_table",
    "benchmark_data_prep",
    "format_data_table",
    "main",
    "data_main",
    "cli",
]

#: Axial slices of a BraTS subject (240 x 240 x 155): "ms per volume" is the time for this many slices.
VOLUME_SLICES = 155
PLAIN = "plain"


# ------------------------------------------------------------------------------------------------ switches
@dataclass(frozen=True)
class Switch:
    """An optional optimisation. ``apply_module(module, device)`` returns the optimised module (it may change it
    in place); ``amp`` turns on bfloat16 autocast; ``devices`` are the device types it applies to."""

    name: str
    description: str
    apply_module: Callable[[nn.Module, torch.device], nn.Module] | None = None
    amp: bool = False
    devices: tuple[str, ...] = ("cpu", "cuda")


SWITCHES: dict[str, Switch] = {}


def register_switch(
    name: str,
    description: str,
    apply_module: Callable[[nn.Module, torch.device], nn.Module] | None = None,
    amp: bool = False,
    devices: tuple[str, ...] = ("cpu", "cuda"),
) -> None:
    """Add a switch; a variant applies its module switches in registration order (layout before compilation)."""
    if name == PLAIN or "+" in name:
        raise ValueError(f"benchmark: switch name {name!r} is reserved or contains '+'")
    SWITCHES[name] = Switch(name, description, apply_module, amp, devices)


register_switch("bf16", "bfloat16 autocast around the networks", amp=True)
register_switch("channels_last", "NHWC memory format", lambda m, d: to_channels_last(m))
register_switch("compile", "torch.compile (inductor) of the networks", lambda m, d: compile_networks(m))
register_switch(
    "cudagraphs",
    "torch.compile mode reduce-overhead (CUDA graphs)",
    lambda m, d: compile_networks(m, mode="reduce-overhead"),
    devices=("cuda",),
)


@dataclass(frozen=True)
class Variant:
    """A named set of switches ("plain" = none)."""

    name: str
    switches: tuple[str, ...]

    @property
    def amp(self) -> bool:
        return any(SWITCHES[s].amp for s in self.switches)

    @property
    def dtype(self) -> str:
        return "bf16" if self.amp else "fp32"


def parse_variants(value: Any, device: torch.device) -> list[Variant]:
    """``"plain,bf16,bf16+channels_last"`` -> variants, ``plain`` always first (it is the reference)."""
    names = _as_names(value) or [PLAIN]
    variants: list[Variant] = [Variant(PLAIN, ())]
    for name in names:
        if name == PLAIN:
            continue
        parts = tuple(p.strip() for p in name.split("+") if p.strip())
        unknown = [p for p in parts if p not in SWITCHES]
        if unknown:
            raise ValueError(f"benchmark: unknown switch(es) {unknown} in variant {name!r}; known: {sorted(SWITCHES)}")
        wrong = [p for p in parts if device.type not in SWITCHES[p].devices]
        if wrong:
            raise ValueError(f"benchmark: switch(es) {wrong} of variant {name!r} do not apply to {device.type}")
        ordered = tuple(s for s in SWITCHES if s in parts)  # canonical order: registration order
        if ordered and all(v.switches != ordered for v in variants):
            variants.append(Variant("+".join(ordered), ordered))
    return variants


# ------------------------------------------------------------------------------------------------ context
@dataclass
class BenchContext:
    """What every case needs: device, image size, the plain networks and, per variant, optimised copies."""

    device: torch.device
    image_size: int = 256
    warmup: int = 1
    repeats: int = 3
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    critic_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    perturb: float = 0.02
    checkpoint: str | None = None
    volume_slices: int = VOLUME_SLICES  # stack size of the whole-volume case

    def _perturbed(self, module: nn.Module, offset: int) -> nn.Module:
        if self.perturb:
            gen = make_generator(self.seed + offset, "cpu")
            with torch.no_grad():
                for p in module.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * self.perturb)
        return module

    @cached_property
    def base_model(self) -> MUDiff:
        """The plain MUDiff (float32, CPU, eval); variants deep-copy it."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = MUDiff(image_size=self.image_size, **self.network_kwargs)
        if self.checkpoint:
            from scripts.inference.weights import load_generators

            load_generators(net, self.checkpoint)
        else:
            self._perturbed(net, 10)
        return net.eval()

    @cached_property
    def base_critic(self) -> TimeConditionedCritic:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 1)
            net = TimeConditionedCritic(**self.critic_kwargs)
        return self._perturbed(net, 11).eval()

    @property
    def nz(self) -> int:
        return self.base_model.nz

    def tensor(self, *shape: int) -> torch.Tensor:
        """Uniform random input in [-1, 1] on the device; the same for every variant."""
        gen = make_generator(self.seed + len(shape), "cpu")
        return (torch.rand(shape, generator=gen) * 2.0 - 1.0).to(self.device)

    def timesteps(self, batch: int, value: int = 2) -> torch.Tensor:
        return torch.full((batch,), value, dtype=torch.long, device=self.device)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run_for(self, variant: Variant) -> VariantRun:
        """The variant's networks, built once and shared by all cases and batch sizes (compiled code is reused)."""
        runs = self.__dict__.setdefault("_runs", {})
        if variant.name not in runs:
            runs[variant.name] = VariantRun(self, variant)
        return runs[variant.name]


@dataclass
class VariantRun:
    """One variant's view of the context: its networks (optimised copies, built lazily) and its precision."""

    ctx: BenchContext
    variant: Variant

    def prepare(self, module: nn.Module) -> nn.Module:
        module = copy.deepcopy(module).to(self.ctx.device)
        for name in self.variant.switches:
            apply = SWITCHES[name].apply_module
            if apply is not None:
                module = apply(module, self.ctx.device)
        return module

    @cached_property
    def model(self) -> MUDiff:
        return self.prepare(self.ctx.base_model).eval()

    @cached_property
    def critic(self) -> TimeConditionedCritic:
        return self.prepare(self.ctx.base_critic).eval()

    @property
    def amp(self) -> bool:
        return self.variant.amp

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.ctx.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def sampler(self) -> MUDiffSampler:
        return MUDiffSampler(amp=self.amp, seed=self.ctx.seed)


# ------------------------------------------------------------------------------------------------ cases
@dataclass
class BenchCase:
    """A timed workload: ``build(run, batch)`` returns a zero-argument callable that runs it once and returns its
    output (compared across variants when ``comparable``)."""

    name: str
    description: str
    build: Callable[[VariantRun, int], Callable[[], Any]]
    flops: bool = True  # count FLOPs per slice for this case
    default: bool = True  # part of a run that names no cases
    comparable: bool = True  # outputs of different variants should agree (False for training steps)
    whole_volume: bool = False  # one call processes ctx.volume_slices slices (``batch`` is the slices per network call)

    def slices(self, ctx: BenchContext, batch: int) -> int:
        """Slices one call processes."""
        return ctx.volume_slices if self.whole_volume else batch


CASES: dict[str, BenchCase] = {}


def register_case(
    name: str,
    description: str,
    flops: bool = True,
    default: bool = True,
    comparable: bool = True,
    whole_volume: bool = False,
):
    def decorator(build: Callable[[VariantRun, int], Callable[[], Any]]):
        CASES[name] = BenchCase(name, description, build, flops, default, comparable, whole_volume)
        return build

    return decorator


@register_case("g1_forward", "G1 (contrast-specific generator), one denoising step")
def _g1_forward(run: VariantRun, batch: int) -> Callable[[], Any]:
    ctx, s = run.ctx, run.ctx.image_size
    x, cond, t, z = (
        ctx.tensor(batch, 1, s, s),
        ctx.tensor(batch, 3, s, s),
        ctx.timesteps(batch),
        ctx.tensor(batch, ctx.nz),
    )
    g1 = run.model.g1

    def go() -> Any:
        with torch.no_grad(), run.autocast():
            return g1(x, cond, t, z)

    return go


@register_case("g2_forward", "G2 (contrast-aware generator) given a pseudo target, one denoising step")
def _g2_forward(run: VariantRun, batch: int) -> Callable[[], Any]:
    ctx, s = run.ctx, run.ctx.image_size
    x, cond, t, z = (
        ctx.tensor(batch, 1, s, s),
        ctx.tensor(batch, 3, s, s),
        ctx.timesteps(batch),
        ctx.tensor(batch, ctx.nz),
    )
    pseudo = ctx.tensor(batch, 1, s, s) * 0.5
    g2 = run.model.g2

    def go() -> Any:
        with torch.no_grad(), run.autocast():
            return g2(x, cond, t, z, pseudo)

    return go


@register_case("critic_forward", "critic on a (x_t, x_{t+1}) pair")
def _critic_forward(run: VariantRun, batch: int) -> Callable[[], Any]:
    ctx, s = run.ctx, run.ctx.image_size
    x_t, x_tp1, t = ctx.tensor(batch, 1, s, s), ctx.tensor(batch, 1, s, s) * 0.5, ctx.timesteps(batch)
    critic = run.critic

    def go() -> Any:
        with torch.no_grad(), run.autocast():
            return critic(x_t, x_tp1, t)

    return go


@register_case("sample_4step", "full 4-step sampling (4 x (G1 + G2) + posterior updates), seeded draws")
def _sample(run: VariantRun, batch: int) -> Callable[[], Any]:
    s = run.ctx.image_size
    cond = run.ctx.tensor(batch, 3, s, s)
    sampler, model = run.sampler(), run.model
    return lambda: sampler(cond, model)


@register_case(
    "volume_infer",
    "the bundle's whole-subject path: VolumeInferer over volume_slices slices in batches of `batch`, with its "
    "per-slice seeded draws on the CPU",
    default=False,
    whole_volume=True,
)
def _volume(run: VariantRun, batch: int, prefetch: bool | None = None) -> Callable[[], Any]:
    from scripts.inference.stack import VolumeInferer

    s = run.ctx.image_size
    stack = run.ctx.tensor(run.ctx.volume_slices, 3, s, s).cpu()  # the pipeline hands the inferer a CPU stack
    sampler = MUDiffSampler(amp=run.amp)
    inferer = VolumeInferer(sampler, batch_size=batch, seed=run.ctx.seed, prefetch=prefetch)
    model = run.model
    return lambda: inferer(stack, model).mean


@register_case(
    "volume_infer_serial",
    "volume_infer with the noise of each batch drawn only when it is needed (prefetch off): on a GPU, the "
    "difference to volume_infer is what the background draws save",
    default=False,
    whole_volume=True,
)
def _volume_serial(run: VariantRun, batch: int) -> Callable[[], Any]:
    return _volume(run, batch, prefetch=False)


def _train_step(run: VariantRun, batch: int, apply_r1: bool) -> Callable[[], Any]:
    """A MUDiffTrainer critic step + generator step on random slices (the published optimiser settings)."""
    from scripts.networks.uncertainty import CriticUncertaintyMap
    from scripts.training.modules import GeneratorPair
    from scripts.training.trainer import MUDiffTrainer

    ctx, s = run.ctx, run.ctx.image_size
    model, critic = run.prepare(ctx.base_model).train(), run.prepare(ctx.base_critic).train()
    trainer = MUDiffTrainer(
        device=ctx.device,
        max_epochs=1,
        train_data_loader=[None],
        generator_pair=GeneratorPair(model),
        critic=critic,
        uncertainty=CriticUncertaintyMap(critic.feature_channels).to(ctx.device),
        schedule=run.sampler().schedule.to(ctx.device),
        g_optimizer=torch.optim.Adam(model.parameters(), lr=1.6e-4, betas=(0.5, 0.9)),
        d_optimizer=torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.5, 0.9)),
        nz=model.nz,
        amp=run.amp,
    )
    cond, x0 = ctx.tensor(batch, 3, s, s), ctx.tensor(batch, 1, s, s)

    def go() -> Any:
        trainer.critic_step(cond, x0, apply_r1)
        return trainer.generator_step(cond, x0)

    return go


@register_case(
    "train_step", "one training iteration: critic step + generator step (no R1)", default=False, comparable=False
)
def _train(run: VariantRun, batch: int) -> Callable[[], Any]:
    return _train_step(run, batch, apply_r1=False)


# FlopCounterMode's module hooks cannot run inside torch.autograd.grad (R1), so this case is timed only
@register_case(
    "train_step_r1",
    "one training iteration on a lazy-R1 step (every 10th)",
    flops=False,
    default=False,
    comparable=False,
)
def _train_r1(run: VariantRun, batch: int) -> Callable[[], Any]:
    return _train_step(run, batch, apply_r1=True)


# ------------------------------------------------------------------------------------------------ measuring
def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out:
        return _first_tensor(out[0])
    return None


def _difference(out: Any, ref: Any) -> float | None:
    """Largest |variant - plain| over the first output tensor (None when not comparable)."""
    a, b = _first_tensor(out), _first_tensor(ref)
    if a is None or b is None or a.shape != b.shape:
        return None
    return float((a.detach().double().cpu() - b.detach().double().cpu()).abs().max())


def _flops_per_slice(ctx: BenchContext, case: BenchCase) -> int:
    """FLOPs of one plain run at batch 1 (matmul/conv FLOPs as FlopCounterMode counts them: 2 per multiply-add)."""
    slices = ctx.volume_slices
    ctx.volume_slices = 1  # a whole-volume case counts one slice
    try:
        fn = case.build(VariantRun(ctx, Variant(PLAIN, ())), 1)
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return int(counter.get_total_flops()) // case.slices(ctx, 1)
    finally:
        ctx.volume_slices = slices


def matmul_throughput(device: torch.device, dtype: torch.dtype, size: int | None = None, seconds: float = 1.0) -> float:
    """Measured FLOP/s of a square matrix multiply: the roofline's compute ceiling for this device and precision.

    ``size`` defaults to 8192 on CUDA and 1024 on a CPU; runs for about ``seconds`` after one warm-up.
    """
    n = size or (8192 if device.type == "cuda" else 1024)
    gen = make_generator(0, "cpu")
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    torch.matmul(a, b)
    sync()
    count, start = 0, time.perf_counter()
    best = math.inf
    while count < 3 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - t0)
        count += 1
    return 2.0 * n**3 / best


def _param_counts(ctx: BenchContext) -> dict[str, int]:
    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    return {"g1": count(ctx.base_model.g1), "g2": count(ctx.base_model.g2), "critic": count(ctx.base_critic)}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _process_peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load_average() -> float | None:
    """1-minute load average: on a shared machine, other processes slow the timings down."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _timed(ctx: BenchContext, fn: Callable[[], Any]) -> tuple[float, float | None]:
    """(seconds, peak GPU MB of this call or None)."""
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    ctx.synchronize()
    start = time.perf_counter()
    fn()
    ctx.synchronize()
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(ctx.device) / 2**20 if ctx.device.type == "cuda" else None
    return elapsed, peak


def _measure(ctx: BenchContext, case: BenchCase, batch: int, variants: Sequence[Variant]) -> list[dict[str, Any]]:
    """Time ``case`` at ``batch`` for every variant: warm-up each, then ``repeats`` rounds over all variants."""
    rows: dict[str, dict[str, Any]] = {}
    fns: dict[str, Callable[[], Any]] = {}
    outputs: dict[str, Any] = {}
    for v in variants:
        row: dict[str, Any] = {"case": case.name, "batch_size": batch, "variant": v.name, "switches": list(v.switches)}
        row["dtype"] = v.dtype
        rows[v.name] = row
        try:
            fn = case.build(ctx.run_for(v), batch)
            first, _ = _timed(ctx, fn)  # includes compilation for compiled variants
            for _ in range(max(ctx.warmup - 1, 0)):
                _timed(ctx, fn)
            row["first_call_s"] = first
            fns[v.name] = fn
        except Exception as exc:  # noqa: BLE001 - one failing variant must not lose the others' numbers
            row["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
    times: dict[str, list[float]] = {name: [] for name in fns}
    peaks: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(ctx.repeats):
        for name, fn in fns.items():
            elapsed, peak = _timed(ctx, fn)
            times[name].append(elapsed)
            if peak is not None:
                peaks[name].append(peak)
    if case.comparable:  # every case draws from fixed seeds, so the variants see identical inputs
        for name, fn in fns.items():
            outputs[name] = fn()
    slices = case.slices(ctx, batch)
    for name, ts in times.items():
        row = rows[name]
        median = statistics.median(ts)
        row.update(
            slices_per_call=slices,
            median_s=median,
            min_s=min(ts),
            times_s=ts,
            slices_per_s=slices / median,
            slices_per_s_best=slices / min(ts),
            ms_per_volume=1e3 * median * VOLUME_SLICES / slices,
        )
        if peaks[name]:
            row["peak_gpu_mb"] = max(peaks[name])
        else:
            row["process_peak_rss_mb"] = _process_peak_rss_mb()
        if case.comparable and PLAIN in outputs and name in outputs:
            row["max_abs_diff_vs_plain"] = _difference(outputs[name], outputs[PLAIN])
    return list(rows.values())


def _add_derived(rows: list[dict[str, Any]], flops: dict[str, int], peak_flops: dict[str, float]) -> None:
    """Speed-ups over plain (same case and batch), achieved FLOP/s and roofline fractions."""
    plain = {(r["case"], r["batch_size"]): r for r in rows if r["variant"] == PLAIN and "median_s" in r}
    for r in rows:
        if "median_s" not in r:
            continue
        ref = plain.get((r["case"], r["batch_size"]))
        if ref is not None:
            r["speedup_vs_plain"] = ref["median_s"] / r["median_s"]
            r["speedup_vs_plain_min"] = ref["min_s"] / r["min_s"]
        f = flops.get(r["case"])
        if f:
            r["flops_per_slice"] = f
            r["achieved_flops_per_s"] = f * r["slices_per_s"]
            peak = peak_flops.get(r["dtype"])
            if peak:
                r["roofline_fraction"] = r["achieved_flops_per_s"] / peak


def run_benchmark(
    ctx: BenchContext,
    batch_sizes: Iterable[int],
    cases: Sequence[str],
    variants: Sequence[Variant] | None = None,
    count_flops: bool = True,
    measure_peak: bool = True,
) -> dict[str, Any]:
    """Time every case x batch x variant and collect costs; returns a JSON-able dict (``results``: one row each)."""
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"benchmark: unknown case(s) {unknown}; known: {sorted(CASES)}")
    variants = list(variants) if variants else [Variant(PLAIN, ())]
    if variants[0].name != PLAIN:
        variants = [Variant(PLAIN, ()), *[v for v in variants if v.name != PLAIN]]
    load_start = _load_average()
    peak_flops: dict[str, float] = {}
    if measure_peak:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            if any(v.dtype == name for v in variants):
                peak_flops[name] = matmul_throughput(ctx.device, dtype)
    rows: list[dict[str, Any]] = []
    for name in cases:
        for batch in batch_sizes:
            new = _measure(ctx, CASES[name], batch, variants)
            for r in new:
                status = r.get("error") or f"median {r['median_s'] * 1e3:10.1f} ms"
                print(f"  {name:16s} batch {batch:3d} {r['variant']:28s}: {status}", flush=True)
            rows += new
    flops = {n: _flops_per_slice(ctx, CASES[n]) for n in cases if CASES[n].flops} if count_flops else {}
    _add_derived(rows, flops, peak_flops)
    return {
        "device": str(ctx.device),
        "device_name": _device_name(ctx.device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "image_size": ctx.image_size,
        "volume_slices": VOLUME_SLICES,
        "volume_infer_slices": ctx.volume_slices,
        "warmup": ctx.warmup,
        "repeats": ctx.repeats,
        "perturb": ctx.perturb,
        "checkpoint": ctx.checkpoint,
        "network_kwargs": ctx.network_kwargs,
        "variants": [{"name": v.name, "switches": list(v.switches), "dtype": v.dtype} for v in variants],
        "load_average_1min": {"start": load_start, "end": _load_average()},
        "matmul_peak_flops_per_s": peak_flops,
        "params": _param_counts(ctx),
        "flops_per_slice": flops,
        "results": rows,
    }


def _fmt(value: Any, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def format_table(report: dict[str, Any]) -> str:
    """One markdown table (a row per case x batch x variant), preceded by the run's settings."""
    peak = report.get("matmul_peak_flops_per_s") or {}
    peaks = ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s" for k, v in peak.items()) or "not measured"
    lines = [
        f"device {report['device']} ({report['device_name']}), threads {report['threads']}, torch {report['torch']}, "
        f"image {report['image_size']}x{report['image_size']}, warmup {report['warmup']}, repeats {report['repeats']}, "
        f"load average {report['load_average_1min']}, measured matmul peak: {peaks}",
        "",
        "| case | batch | variant | dtype | median ms | min ms | slices/s | ms per volume | peak MB | GFLOP/slice "
        "| roofline | speed-up (median) | speed-up (min) | max abs diff vs plain | first call s |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        case = r["case"] + (
            f" ({r['slices_per_call']} slices)" if r.get("slices_per_call", r["batch_size"]) != r["batch_size"] else ""
        )
        if "error" in r:
            lines.append(f"| {case} | {r['batch_size']} | {r['variant']} | {r['dtype']} | failed: {r['error']} |")
            continue
        mem = r.get("peak_gpu_mb", r.get("process_peak_rss_mb"))
        flops = r.get("flops_per_slice")
        lines.append(
            f"| {case} | {r['batch_size']} | {r['variant']} | {r['dtype']} | {r['median_s'] * 1e3:.1f} "
            f"| {r['min_s'] * 1e3:.1f} | {r['slices_per_s']:.3f} | {r['ms_per_volume']:.0f} | {_fmt(mem, '.0f')} "
            f"| {_fmt(flops / 1e9 if flops else None, '.2f')} | {_fmt(r.get('roofline_fraction'), '.3f')} "
            f"| {_fmt(r.get('speedup_vs_plain'), '.2f')} | {_fmt(r.get('speedup_vs_plain_min'), '.2f')} "
            f"| {_fmt(r.get('max_abs_diff_vs_plain'), '.2e')} | {_fmt(r.get('first_call_s'), '.1f')} |"
        )
    params = report["params"]
    lines.append("")
    lines.append(
        f"parameters: G1 {params['g1']:,}, G2 {params['g2']:,}, critic {params['critic']:,}; "
        + ", ".join(f"{k} {v / 1e9:.2f} GFLOP/slice" for k, v in report["flops_per_slice"].items())
    )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ data prep
def _data_items(subject_dirs: Any, datalist: str | None, split: str, task: str) -> list[dict[str, Any]]:
    from scripts.data import load_datalist, resolve_task
    from scripts.inference.synthesize import items_from_folders

    t = resolve_task(task)
    if datalist:
        return [dict(it) for it in load_datalist(datalist, split)]
    folders = _as_names(subject_dirs)
    if not folders:
        raise ValueError("benchmark data: give --subject_dirs (folders of one subject each) or --datalist")
    return items_from_folders(folders, list(t.contrasts))


def benchmark_data_prep(
    items: Sequence[dict[str, Any]],
    task: str = "brats_t1ce",
    modes: Sequence[str] = ("reference", "volume"),
    targets: Sequence[bool] = (True, False),
    repeats: int = 3,
    core: int | None = 0,
    gpu_slices_per_s: float = float(VOLUME_SLICES),
) -> dict[str, Any]:
    """Time ``prepare_subject`` per subject on ONE CPU core (torch 1 thread, process pinned to ``core``).

    Per (mode, with target): wall and CPU seconds per subject (the first call separately: it includes imports and
    cold caches), slices produced, and an ESTIMATE of the DataLoader workers that keep a GPU fed at
    ``gpu_slices_per_s`` (a target, not a measurement): ``ceil(seconds per slice x gpu_slices_per_s)``.
    """
    pinned = core is not None and hasattr(os, "sched_setaffinity")
    affinity, threads = (os.sched_getaffinity(0) if pinned else None), torch.get_num_threads()
    if pinned:
        os.sched_setaffinity(0, {int(core)})
    torch.set_num_threads(1)
    try:
        return _data_prep_report(items, task, modes, targets, repeats, core, gpu_slices_per_s)
    finally:
        torch.set_num_threads(threads)
        if pinned:
            os.sched_setaffinity(0, affinity)


def _data_prep_report(
    items: Sequence[dict[str, Any]],
    task: str,
    modes: Sequence[str],
    targets: Sequence[bool],
    repeats: int,
    core: int | None,
    gpu_slices_per_s: float,
) -> dict[str, Any]:
    from scripts.data.pipeline import SliceDataset, build_volume_transforms, prepare_subject

    load_start = _load_average()
    rows = []
    for mode in modes:
        for with_target in targets:
            transform = build_volume_transforms(
                task, mode=mode, spatial_size=256 if mode == "reference" else None, with_target=with_target
            )
            for item in items:
                subject = str(item.get("subject"))
                wall, cpu, first = [], [], None
                slices = 0
                for k in range(int(repeats) + 1):
                    c0, w0 = time.process_time(), time.perf_counter()
                    out = prepare_subject(item, transform)
                    w, c = time.perf_counter() - w0, time.process_time() - c0
                    slices = int(out["image"].shape[0])
                    if k == 0:
                        first = w
                    else:
                        wall.append(w)
                        cpu.append(c)
                    del out
                per_slice = statistics.median(wall) / max(slices, 1)
                rows.append(
                    {
                        "subject": subject,
                        "mode": mode,
                        "with_target": with_target,
                        "slices": slices,
                        "first_call_s": first,
                        "wall_median_s": statistics.median(wall),
                        "wall_min_s": min(wall),
                        "cpu_median_s": statistics.median(cpu),
                        "cpu_min_s": min(cpu),
                        "wall_s": wall,
                        "cpu_s": cpu,
                        "workers_estimate": max(1, math.ceil(per_slice * gpu_slices_per_s)),
                    }
                )
                print(f"  {subject} {mode:9s} target={with_target!s:5s}: median {rows[-1]['wall_median_s']:.3f} s")
    items_rows = []
    for mode in modes:  # training reads prepared (cached) subjects slice by slice: the per-item cost
        dataset = SliceDataset(
            items, build_volume_transforms(task, mode=mode, spatial_size=256 if mode == "reference" else None)
        )
        for index in range(len(items)):
            dataset.subject_stacks(index)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:200].tolist()
        start = time.perf_counter()
        for i in order:
            dataset[i]
        per_item = (time.perf_counter() - start) / len(order)
        items_rows.append(
            {
                "mode": mode,
                "items_timed": len(order),
                "seconds_per_item": per_item,
                "workers_estimate": max(1, math.ceil(per_item * gpu_slices_per_s)),
            }
        )
        print(f"  cached SliceDataset {mode:9s}: {per_item * 1e3:.3f} ms per slice item")
    return {
        "what": "prepare_subject on one CPU core",
        "cached_slice_items": items_rows,
        "cpu": _device_name(torch.device("cpu")),
        "core": core,
        "torch_threads": 1,
        "torch": torch.__version__,
        "repeats": int(repeats),
        "task": task,
        "gpu_slices_per_s_assumed": gpu_slices_per_s,
        "load_average_1min": {"start": load_start, "end": _load_average()},
        "results": rows,
    }


def format_data_table(report: dict[str, Any]) -> str:
    lines = [
        f"{report['what']} (core {report['core']}, {report['cpu']}), torch threads {report['torch_threads']}, "
        f"repeats {report['repeats']}, load average {report['load_average_1min']}; workers = ESTIMATE for a GPU "
        f"consuming {report['gpu_slices_per_s_assumed']:g} slices/s",
        "",
        "| subject | mode | with target | slices | wall median s | wall min s | CPU median s | CPU min s "
        "| first call s | workers (estimate) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['subject']} | {r['mode']} | {r['with_target']} | {r['slices']} | {r['wall_median_s']:.3f} "
            f"| {r['wall_min_s']:.3f} | {r['cpu_median_s']:.3f} | {r['cpu_min_s']:.3f} | {r['first_call_s']:.3f} "
            f"| {r['workers_estimate']} |"
        )
    for r in report.get("cached_slice_items", []):
        lines.append(
            f"\ncached SliceDataset ({r['mode']}, training): {r['seconds_per_item'] * 1e3:.3f} ms per slice item; "
            f"workers (estimate) {r['workers_estimate']}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI
def _as_ints(value: Any, name: str) -> list[int]:
    items = parse_list(value if isinstance(value, str | list | tuple) else [value], name)
    try:
        ints = [int(v) for v in items]
    except (TypeError, ValueError):
        raise ValueError(f"benchmark: {name} must be integers like 1,8; got {value!r}") from None
    if not ints or min(ints) < 1:
        raise ValueError(f"benchmark: {name} must be positive integers, got {value!r}")
    return ints


def _as_names(value: Any) -> list[str]:
    return parse_list(value, "names")


def main(
    device: str = "cpu",
    batch_sizes: Any = (1, 8),
    image_size: int = 256,
    warmup: int = 1,
    repeats: int = 3,
    output: str = "benchmark.json",
    cases: Any = None,
    variants: Any = "plain,bf16,channels_last,bf16+channels_last",
    threads: int | None = None,
    flops: bool = True,
    peak: bool = True,
    seed: int = 0,
    checkpoint: str | None = None,
    network: str | None = None,
    critic: str | None = None,
    volume_slices: int = VOLUME_SLICES,
) -> None:
    """Run the network benchmark, print one table and write the JSON report atomically to ``output``.

    Args:
        device: "cpu" or "cuda" (or "cuda:N").
        batch_sizes: slices per call, e.g. 1,8.
        image_size: slice size (the published model works at 256).
        warmup: untimed calls per variant before timing (the first one's time is reported as first_call_s).
        repeats: timed rounds; each round runs every variant once.
        output: JSON report path.
        cases: comma-separated registered cases (default: the inference cases; the training iteration is
            ``train_step`` / ``train_step_r1``, e.g. ``--cases train_step --batch_sizes 3``).
        variants: comma-separated variants, each "+"-joined switches (see SWITCHES); plain is always added.
        threads: torch CPU threads (default: torch's choice; use 1 on a shared CPU for stable numbers).
        flops: also count FLOPs per slice (one extra plain batch-1 run per case).
        peak: measure the device's matmul throughput (the roofline's ceiling) in fp32 and/or bf16.
        seed: seed of the random weights, inputs and sampler draws.
        checkpoint: optional MU-Diff weights to load instead of random ones (must match the network settings).
        network: optional JSON of MUDiff keyword arguments (e.g. '{"nf": 32}'); default: published configuration.
        critic: optional JSON of TimeConditionedCritic keyword arguments for the training cases (the demo recipe:
            '{"ngf": 8, "num_blocks": 5}'); default: published configuration.
        volume_slices: stack size of the ``volume_infer`` case (a BraTS subject: 155).
    """
    if str(device).split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"benchmark: device must be cpu or cuda, got {device!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("benchmark: device 'cuda' requested but CUDA is not available on this machine")
    if threads is not None:
        torch.set_num_threads(int(threads))
    if int(repeats) < 1 or int(warmup) < 1:
        raise ValueError("benchmark: need repeats >= 1 and warmup >= 1 (the first call may compile)")
    network_kwargs = json.loads(network) if isinstance(network, str) else dict(network or {})
    critic_kwargs = json.loads(critic) if isinstance(critic, str) else dict(critic or {})
    ctx = BenchContext(
        device=dev,
        image_size=int(image_size),
        warmup=int(warmup),
        repeats=int(repeats),
        seed=int(seed),
        checkpoint=checkpoint,
        network_kwargs=network_kwargs,
        critic_kwargs=critic_kwargs,
        volume_slices=int(volume_slices),
    )
    default_cases = [name for name, case in CASES.items() if case.default]
    report = run_benchmark(
        ctx,
        _as_ints(batch_sizes, "batch_sizes"),
        _as_names(cases) or default_cases,
        parse_variants(variants, dev),
        bool(flops),
        bool(peak),
    )
    print(format_table(report))
    print(f"wrote {write_json(output, report)}")


def data_main(
    subject_dirs: Any = None,
    datalist: str | None = None,
    split: str = "test",
    task: str = "brats_t1ce",
    modes: Any = "reference,volume",
    repeats: int = 3,
    core: int = 0,
    gpu_slices_per_s: float = float(VOLUME_SLICES),
    output: str = "benchmark_data.json",
) -> None:
    """Data-preparation benchmark (``python -m tools.benchmark data ...``): one table + JSON at ``output``.

    Args:
        subject_dirs: comma-separated subject folders (contrasts found by name, as the synthesis CLI does).
        datalist, split: or a datalist JSON and its split.
        task: which contrasts are inputs and target.
        modes: slice modes to time ("reference", "volume").
        repeats: timed calls per subject (after one untimed first call).
        core: CPU core to pin the process to.
        gpu_slices_per_s: GPU consumption rate assumed by the worker estimate (the 1 s/volume target: 155).
        output: JSON report path.
    """
    items = _data_items(subject_dirs, datalist, split, task)
    report = benchmark_data_prep(
        items, task, _as_names(modes), repeats=int(repeats), core=core, gpu_slices_per_s=gpu_slices_per_s
    )
    print(format_data_table(report))
    print(f"wrote {write_json(output, report)}")


def cli(argv: Sequence[str] | None = None) -> int:
    """Command line: ``data ...`` runs the data benchmark, anything else the network benchmark; a bad argument
    or a missing device is one ``error:`` line and exit status 2."""
    import fire

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["data"]:
            fire.Fire(data_main, command=args[1:])
        else:
            fire.Fire(main, command=args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
