"""Memory of one training iteration at the published size, per memory switch, each in a fresh process.

Why a process per row: the peak resident set (``ru_maxrss``) only grows, so two variants in one process would
share one peak. Each child builds the published MU-Diff generators and critic (256 x 256, batch 3), takes one
batch of real slices from the embedded sample, runs one critic step (with or without the lazy R1 penalty) and
one generator step, and reports:

- ``step_peak_rss_mb``: the process's peak resident set during the iteration minus its size before it (what the
  iteration itself needs on the CPU: activations, gradients, Adam's first update, allocator slack);
- ``kept_for_backward_mb``: bytes of the tensors autograd keeps between forward and backward (torch's own
  accounting through ``saved_tensors_hooks``), for the larger of the two steps;
- ``state_mb``: weights + gradients + Adam's two moments of both networks (float32);
- ``gpu_estimate_mb``: ``state_mb + kept_for_backward_mb`` x 1.2 (kernel workspaces and the allocator's
  fragmentation), the figure to compare with a 16 GB GPU. It is an estimate from CPU measurements, not a GPU run.

The parent polls each child's resident set and stops it above ``--cap_gb`` (reported as "over the cap"), so a
row that would not fit cannot take the machine down.

    python -m tools.train_memory [--cap_gb 16] [--output eval/train_memory.json] [--threads 2]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
#: variant name -> (activation checkpointing, bf16 autocast)
VARIANTS: dict[str, tuple[bool, bool]] = {
    "plain": (False, False),
    "checkpointing": (True, False),
    "checkpointing+bf16": (True, True),
    "bf16": (False, True),
}


def _rss_mb(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(checkpointing: bool, bf16: bool, r1: bool, image_size: int = 256, batch: int = 3) -> dict[str, Any]:
    """One iteration in this process (run it in a fresh one); see the module docstring for the fields."""
    import torch
    from scripts.data import build_slice_dataset, load_datalist
    from scripts.diffusion.schedule import VPSchedule
    from scripts.networks.critic import TimeConditionedCritic
    from scripts.networks.mudiff import MUDiff
    from scripts.networks.optimize import prepare_for_training
    from scripts.networks.uncertainty import CriticUncertaintyMap
    from scripts.training.modules import GeneratorPair
    from scripts.training.trainer import MUDiffTrainer

    torch.manual_seed(0)
    model = prepare_for_training(MUDiff(image_size=image_size), activation_checkpointing=checkpointing).train()
    critic = prepare_for_training(TimeConditionedCritic(), activation_checkpointing=checkpointing).train()
    g_opt = torch.optim.Adam(model.parameters(), lr=1.6e-4, betas=(0.5, 0.9))
    d_opt = torch.optim.Adam(critic.parameters(), lr=1e-4, betas=(0.5, 0.9))
    trainer = MUDiffTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=[None],
        generator_pair=GeneratorPair(model),
        critic=critic,
        uncertainty=CriticUncertaintyMap(critic.feature_channels),
        schedule=VPSchedule(),
        g_optimizer=g_opt,
        d_optimizer=d_opt,
        nz=model.nz,
        amp=bf16,
    )
    items = load_datalist(str(REPO_ROOT / "sample_data" / "datalist.json"), "training")
    dataset = build_slice_dataset(items, num_slices=batch, spatial_size=image_size, task="brats_t1ce")
    samples = [dataset[i] for i in range(batch)]
    cond = torch.stack([s["image"] for s in samples]).float()
    x0 = torch.stack([s["label"] for s in samples]).float()
    params = sum(p.numel() for p in (*model.parameters(), *critic.parameters()))
    kept: list[int] = []

    def counted(step: Any, *args: Any) -> None:
        total = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            step(*args)
        kept.append(total[0])

    before = _rss_mb()
    start = time.perf_counter()
    counted(trainer.critic_step, cond, x0, r1)
    counted(trainer.generator_step, cond, x0)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    state_mb = params * 4 * 4 / 2**20  # weights, gradients, Adam's exp_avg and exp_avg_sq
    kept_mb = max(kept) / 2**20
    return {
        "checkpointing": checkpointing,
        "bf16": bf16,
        "r1": r1,
        "image_size": image_size,
        "batch": batch,
        "parameters": params,
        "seconds": round(seconds, 1),
        "rss_before_mb": round(before),
        "step_peak_rss_mb": round(peak - before),
        "process_peak_rss_mb": round(peak),
        "kept_for_backward_mb": round(kept_mb),
        "state_mb": round(state_mb),
        "gpu_estimate_mb": round((state_mb + kept_mb) * 1.2),
    }


def _child(variant: str, r1: bool, threads: int, cap_gb: float) -> dict[str, Any]:
    code = (
        "import json, sys, torch; sys.path.insert(0, sys.argv[1]); torch.set_num_threads(int(sys.argv[5]))\n"
        "from tools.train_memory import measure\n"
        "print('RESULT ' + json.dumps(measure(sys.argv[2] == '1', sys.argv[3] == '1', sys.argv[4] == '1')))\n"
    )
    ckpt, bf16 = VARIANTS[variant]
    args = [str(REPO_ROOT), str(int(ckpt)), str(int(bf16)), str(int(r1)), str(threads)]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    peak = 0.0
    while proc.poll() is None:
        try:
            peak = max(peak, _rss_mb(proc.pid))
        except OSError:
            pass
        if peak > cap_gb * 1024:
            proc.kill()
            proc.wait()
            return {"variant": variant, "r1": r1, "over_cap_gb": cap_gb}
        time.sleep(0.2)
    out, err = proc.communicate()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        return {"variant": variant, "r1": r1, "error": (err.strip().splitlines() or ["?"])[-1]}
    return {"variant": variant, **json.loads(lines[-1][len("RESULT ") :])}


def _row(r: dict[str, Any]) -> str:
    if "over_cap_gb" in r or "error" in r:
        note = f"over the {r['over_cap_gb']} GB cap" if "over_cap_gb" in r else f"error: {r['error']}"
        return f"| {r['variant']} | {r['r1']} | {note} | | | | |"
    return (
        f"| {r['variant']} | {r['r1']} | {r['step_peak_rss_mb']} | {r['kept_for_backward_mb']} | "
        f"{r['state_mb']} | {r['gpu_estimate_mb']} | {r['seconds']} |"
    )


def main(
    cap_gb: float = 16.0, output: str = "eval/train_memory.json", threads: int = 2, variants: str = "", r1: str = "both"
) -> None:
    """Measure the variants (default all) with and/or without R1 (``--r1 true|false|both``); print each row as it
    is measured and write the JSON report after each row (a long run keeps what it has)."""
    from scripts.data.io_utils import write_json

    names = [v for v in str(variants).split(",") if v] or list(VARIANTS)
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    r1_values = {"both": (False, True), "true": (True,), "false": (False,)}[str(r1).lower()]
    host = {"cpu_count": os.cpu_count(), "threads": int(threads), "python": sys.version.split()[0]}
    print("| variant | R1 | step peak RSS (MB) | kept for backward (MB) | state (MB) | GPU estimate (MB) | s |")
    print("|---|---|---|---|---|---|---|", flush=True)
    rows: list[dict[str, Any]] = []
    for name in names:
        for with_r1 in r1_values:
            rows.append(_child(name, with_r1, int(threads), float(cap_gb)))
            print(_row(rows[-1]), flush=True)
            write_json(output, {"rows": rows, "host": host, "cap_gb": float(cap_gb)})
    print(f"wrote {output}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
