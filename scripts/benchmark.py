"""Speed and cost benchmark of the MU-Diff networks and the 4-step sampler (a tool, not a test).

Measures, at the published network configuration (random weights: timing does not depend on them):
  - forward time of G1, G2 and the critic, and full 4-step sampling throughput, per batch size;
  - parameter counts and FLOPs per slice (``torch.utils.flop_counter.FlopCounterMode``) of G1, G2, the critic
    and one full sample.

Timed cases live in a registry (``CASES``, filled with ``@register_case``) and optional optimisations in another
(``SWITCHES``, ``@register_switch``), so later work adds e.g. a training-iteration case or a compile switch
without touching the runner. Inputs are random tensors in [-1, 1]: kernels take the same time whatever the pixels.

Usage (from the repository root)::

    python -m scripts.benchmark --device cpu --dtype fp32 --batch_sizes 1,8 --image_size 256 \
        --warmup 1 --repeats 3 --output benchmark.json
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from scripts.diffusion.draws import make_generator
from scripts.diffusion.sampler import MUDiffSampler
from scripts.networks.critic import TimeConditionedCritic
from scripts.networks.mudiff import MUDiff

__all__ = ["CASES", "SWITCHES", "BenchContext", "register_case", "register_switch", "run_benchmark", "main"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# ------------------------------------------------------------------------------------------------ context
@dataclass
class BenchContext:
    """What every case needs: device, precision, image size and the (lazily built) networks."""

    device: torch.device
    dtype: str = "fp32"
    image_size: int = 256
    warmup: int = 1
    repeats: int = 3
    switches: Sequence[str] = ()
    network_kwargs: dict[str, Any] = field(default_factory=dict)
    critic_kwargs: dict[str, Any] = field(default_factory=dict)
    seed: int = 0

    @cached_property
    def model(self) -> MUDiff:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = MUDiff(image_size=self.image_size, **self.network_kwargs)
        return self.prepare(net.eval().to(self.device))

    @cached_property
    def critic(self) -> TimeConditionedCritic:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 1)
            net = TimeConditionedCritic(**self.critic_kwargs)
        return self.prepare(net.eval().to(self.device))

    @property
    def nz(self) -> int:
        return self.model.nz

    def prepare(self, module: nn.Module) -> nn.Module:
        """Apply the selected optimisation switches to a network."""
        for name in self.switches:
            module = SWITCHES[name].apply_module(module)
        return module

    def tensor(self, *shape: int, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
        """Uniform random input on the device, with the switches' memory format for 4-D tensors."""
        gen = make_generator(self.seed, "cpu")
        x = (torch.rand(shape, generator=gen) * (high - low) + low).to(self.device)
        for name in self.switches:
            x = SWITCHES[name].apply_tensor(x)
        return x

    def timesteps(self, batch: int, value: int = 2) -> torch.Tensor:
        return torch.full((batch,), value, dtype=torch.long, device=self.device)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == "bf16")

    def sampler(self) -> MUDiffSampler:
        return MUDiffSampler(amp=self.dtype == "bf16", seed=self.seed)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# ------------------------------------------------------------------------------------------------ registries
@dataclass
class BenchCase:
    """A timed workload: ``build(ctx, batch)`` returns a zero-argument callable that runs it once."""

    name: str
    description: str
    build: Callable[[BenchContext, int], Callable[[], Any]]
    flops: bool = True  # count FLOPs per slice for this case
    default: bool = True  # part of a run that names no cases


@dataclass
class Switch:
    """An optional optimisation applied to networks and input tensors (off unless named on the command line)."""

    name: str
    description: str
    apply_module: Callable[[nn.Module], nn.Module]
    apply_tensor: Callable[[torch.Tensor], torch.Tensor]


CASES: dict[str, BenchCase] = {}
SWITCHES: dict[str, Switch] = {}


def register_case(name: str, description: str, flops: bool = True, default: bool = True):
    def decorator(build: Callable[[BenchContext, int], Callable[[], Any]]):
        CASES[name] = BenchCase(name, description, build, flops, default)
        return build

    return decorator


def register_switch(name: str, description: str, apply_module, apply_tensor) -> None:
    SWITCHES[name] = Switch(name, description, apply_module, apply_tensor)


def _channels_last_tensor(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x


register_switch(
    "channels_last",
    "NHWC memory format for networks and 4-D inputs",
    lambda m: m.to(memory_format=torch.channels_last),
    _channels_last_tensor,
)


@register_case("g1_forward", "G1 (contrast-specific generator), one denoising step")
def _g1_forward(ctx: BenchContext, batch: int) -> Callable[[], Any]:
    s = ctx.image_size
    x, cond, t, z = (
        ctx.tensor(batch, 1, s, s),
        ctx.tensor(batch, 3, s, s),
        ctx.timesteps(batch),
        ctx.tensor(batch, ctx.nz),
    )
    g1 = ctx.model.g1

    def run() -> Any:
        with torch.no_grad(), ctx.autocast():
            return g1(x, cond, t, z)

    return run


@register_case("g2_forward", "G2 (contrast-aware generator) given a pseudo target, one denoising step")
def _g2_forward(ctx: BenchContext, batch: int) -> Callable[[], Any]:
    s = ctx.image_size
    x, cond, t, z = (
        ctx.tensor(batch, 1, s, s),
        ctx.tensor(batch, 3, s, s),
        ctx.timesteps(batch),
        ctx.tensor(batch, ctx.nz),
    )
    pseudo = ctx.tensor(batch, 1, s, s)
    g2 = ctx.model.g2

    def run() -> Any:
        with torch.no_grad(), ctx.autocast():
            return g2(x, cond, t, z, pseudo)

    return run


@register_case("critic_forward", "critic on a (x_t, x_{t+1}) pair")
def _critic_forward(ctx: BenchContext, batch: int) -> Callable[[], Any]:
    s = ctx.image_size
    x_t, x_tp1, t = ctx.tensor(batch, 1, s, s), ctx.tensor(batch, 1, s, s), ctx.timesteps(batch)
    critic = ctx.critic

    def run() -> Any:
        with torch.no_grad(), ctx.autocast():
            return critic(x_t, x_tp1, t)

    return run


@register_case("sample_4step", "full 4-step sampling (4 x (G1 + G2) + posterior updates)")
def _sample(ctx: BenchContext, batch: int) -> Callable[[], Any]:
    s = ctx.image_size
    cond = ctx.tensor(batch, 3, s, s)
    sampler, model = ctx.sampler(), ctx.model
    return lambda: sampler(cond, model)


def _train_step(ctx: BenchContext, batch: int, apply_r1: bool) -> Callable[[], Any]:
    """A MUDiffTrainer critic step + generator step on random slices (the published optimiser settings)."""
    from scripts.networks.uncertainty import CriticUncertaintyMap
    from scripts.training.modules import GeneratorPair
    from scripts.training.trainer import MUDiffTrainer

    s = ctx.image_size
    model, critic = ctx.model.train(), ctx.critic.train()
    trainer = MUDiffTrainer(
        device=ctx.device,
        max_epochs=1,
        train_data_loader=[None],
        generator_pair=GeneratorPair(model),
        critic=critic,
        uncertainty=CriticUncertaintyMap(critic.feature_channels).to(ctx.device),
        schedule=ctx.sampler().schedule.to(ctx.device),
        g_optimizer=torch.optim.Adam(model.parameters(), lr=1.6e-4, betas=(0.5, 0.9)),
        d_optimizer=torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.5, 0.9)),
        nz=model.nz,
        mixed_precision=ctx.dtype == "bf16",
    )
    cond, x0 = ctx.tensor(batch, 3, s, s), ctx.tensor(batch, 1, s, s)

    def run() -> Any:
        trainer.critic_step(cond, x0, apply_r1)
        return trainer.generator_step(cond, x0)

    return run


@register_case("train_step", "one training iteration: critic step + generator step (no R1)", default=False)
def _train(ctx: BenchContext, batch: int) -> Callable[[], Any]:
    return _train_step(ctx, batch, apply_r1=False)


# FlopCounterMode's module hooks cannot run inside torch.autograd.grad (R1), so this case is timed only
@register_case("train_step_r1", "one training iteration on a lazy-R1 step (every 10th)", flops=False, default=False)
def _train_r1(ctx: BenchContext, batch: int) -> Callable[[], Any]:
    return _train_step(ctx, batch, apply_r1=True)


# ------------------------------------------------------------------------------------------------ measuring
def _time_case(ctx: BenchContext, fn: Callable[[], Any]) -> list[float]:
    for _ in range(ctx.warmup):
        fn()
    ctx.synchronize()
    times = []
    for _ in range(ctx.repeats):
        start = time.perf_counter()
        fn()
        ctx.synchronize()
        times.append(time.perf_counter() - start)
    return times


def _flops_per_slice(ctx: BenchContext, case: BenchCase) -> int:
    """FLOPs of one run at batch 1 (matmul/conv FLOPs as FlopCounterMode counts them: 2 per multiply-add)."""
    fn = case.build(ctx, 1)
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def _param_counts(ctx: BenchContext) -> dict[str, int]:
    def count(m: nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    return {"g1": count(ctx.model.g1), "g2": count(ctx.model.g2), "critic": count(ctx.critic)}


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


def _peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak memory of the case: allocated GPU memory on CUDA; on CPU the process's peak RSS so far (it never
    resets, so on CPU it is an upper bound that includes every earlier case)."""
    if device.type == "cuda":
        return {"peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    import resource

    return {"process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _load_average() -> float | None:
    """1-minute load average: on a shared machine, other processes slow the timings down."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def run_benchmark(
    ctx: BenchContext, batch_sizes: Iterable[int], cases: Sequence[str], count_flops: bool = True
) -> dict[str, Any]:
    """Time every case at every batch size (median of ``ctx.repeats``) and collect costs; returns a JSON-able dict."""
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"benchmark: unknown case(s) {unknown}; known: {sorted(CASES)}")
    load_start = _load_average()
    results: list[dict[str, Any]] = []
    for name in cases:
        for batch in batch_sizes:
            if ctx.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(ctx.device)
            times = _time_case(ctx, CASES[name].build(ctx, batch))
            median = statistics.median(times)
            peak = _peak_memory_mb(ctx.device)
            results.append(
                {
                    "case": name,
                    "batch_size": batch,
                    "median_s": median,
                    "min_s": min(times),
                    "times_s": times,
                    "slices_per_s": batch / median,
                    **peak,
                }
            )
            print(f"  {name:16s} batch {batch:3d}: median {median * 1e3:10.1f} ms", flush=True)
    flops = {name: _flops_per_slice(ctx, CASES[name]) for name in cases if CASES[name].flops} if count_flops else {}
    return {
        "device": str(ctx.device),
        "device_name": _device_name(ctx.device),
        "dtype": ctx.dtype,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "image_size": ctx.image_size,
        "warmup": ctx.warmup,
        "repeats": ctx.repeats,
        "switches": list(ctx.switches),
        "load_average_1min": {"start": load_start, "end": _load_average()},
        "params": _param_counts(ctx),
        "flops_per_slice": flops,
        "results": results,
    }


def format_table(report: dict[str, Any]) -> str:
    """Markdown table of the timings, then the cost table."""
    lines = [
        f"device {report['device']} ({report['device_name']}), dtype {report['dtype']}, threads {report['threads']}, "
        f"image {report['image_size']}x{report['image_size']}, warmup {report['warmup']}, "
        f"repeats {report['repeats']}, switches {report['switches'] or 'none'}, "
        f"load average {report['load_average_1min']}",
        "",
        "| case | batch | median ms | min ms | slices/s (median) | peak memory MB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        peak = r.get("peak_gpu_mb", r.get("process_peak_rss_mb"))
        lines.append(
            f"| {r['case']} | {r['batch_size']} | {r['median_s'] * 1e3:.1f} | {r['min_s'] * 1e3:.1f} "
            f"| {r['slices_per_s']:.3f} | {peak:.0f} |"
        )
    lines += ["", "| network / case | parameters | GFLOPs per slice |", "|---|---:|---:|"]
    params = report["params"]
    flops = report["flops_per_slice"]
    rows = [("g1", "g1_forward"), ("g2", "g2_forward"), ("critic", "critic_forward")]
    rows += [(None, c) for c in ("sample_4step", "train_step", "train_step_r1")]
    for pname, cname in rows:
        p = f"{params[pname]:,}" if pname else "-"
        f = f"{flops[cname] / 1e9:.2f}" if cname in flops else "-"
        lines.append(f"| {pname or cname} | {p} | {f} |")
    return "\n".join(lines)


def write_json_atomic(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write JSON to a temp file in the target folder, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _as_ints(value: Any, name: str) -> list[int]:
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list | tuple) else [value]
    try:
        ints = [int(v) for v in items]
    except (TypeError, ValueError):
        raise ValueError(f"benchmark: {name} must be integers like 1,8; got {value!r}") from None
    if not ints or min(ints) < 1:
        raise ValueError(f"benchmark: {name} must be positive integers, got {value!r}")
    return ints


def _as_names(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


def main(
    device: str = "cpu",
    dtype: str = "fp32",
    batch_sizes: Any = (1, 8),
    image_size: int = 256,
    warmup: int = 1,
    repeats: int = 3,
    output: str = "benchmark.json",
    cases: Any = None,
    switches: Any = None,
    threads: int | None = None,
    flops: bool = True,
    seed: int = 0,
) -> None:
    """Run the benchmark, print a table and write the JSON report atomically to ``output``.

    Args:
        device: "cpu" or "cuda" (or "cuda:N").
        dtype: "fp32", or "bf16" (bfloat16 autocast around the networks).
        batch_sizes: e.g. 1,8.
        image_size: slice size (the published model works at 256).
        warmup: untimed runs before timing each case.
        repeats: timed runs; the median is reported.
        output: JSON report path.
        cases: comma-separated registered cases (default: the inference cases; the training iteration is
            ``train_step`` / ``train_step_r1``, e.g. ``--cases train_step,train_step_r1 --batch_sizes 3``).
        switches: comma-separated optimisation switches to apply (default: none).
        threads: torch CPU threads (default: torch's choice).
        flops: also count FLOPs per slice (one extra batch-1 run per case).
        seed: seed of the random weights and inputs.
    """
    if dtype not in DTYPES:
        raise ValueError(f"benchmark: dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("benchmark: device 'cuda' requested but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"benchmark: device must be cpu or cuda, got {device!r}")
    if threads is not None:
        torch.set_num_threads(int(threads))
    chosen_switches = _as_names(switches)
    bad = [s for s in chosen_switches if s not in SWITCHES]
    if bad:
        raise ValueError(f"benchmark: unknown switch(es) {bad}; known: {sorted(SWITCHES)}")
    if int(repeats) < 1 or int(warmup) < 0:
        raise ValueError("benchmark: need repeats >= 1 and warmup >= 0")
    ctx = BenchContext(
        device=dev,
        dtype=dtype,
        image_size=int(image_size),
        warmup=int(warmup),
        repeats=int(repeats),
        switches=tuple(chosen_switches),
        seed=int(seed),
    )
    default_cases = [name for name, case in CASES.items() if case.default]
    report = run_benchmark(ctx, _as_ints(batch_sizes, "batch_sizes"), _as_names(cases) or default_cases, bool(flops))
    print(format_table(report))
    print(f"wrote {write_json_atomic(report, output)}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
