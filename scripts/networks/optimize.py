"""Speed and memory switches for the MU-Diff networks, applied from a config: channels-last memory format,
torch.compile, and activation checkpointing (training only: recompute each block's activations in the backward pass
instead of keeping them, so a published-size step fits in less memory).

bfloat16 autocast is not here: it is a flag of the code that runs the networks (``MUDiffSampler(amp=...)`` at
inference, the trainer's ``amp`` in training), because the diffusion arithmetic around the
networks must stay float32.

Every switch keeps the module's parameter names, so checkpoints load and save exactly as without it:
``channels_last`` only changes the strides of 4-D weights (``load_state_dict`` copies into them and keeps the
layout), and compilation uses ``nn.Module.compile``, which compiles a module's forward in place instead of
wrapping the module (a wrapper would prefix every state-dict key with ``_orig_mod.``). Compilation is lazy: the
first forward call compiles (minutes for the published networks on a CPU), later calls with the same shapes reuse
the result; a new batch size or image size compiles again.

Config use (configs/inference.yaml)::

    network: "$scripts.networks.optimize.prepare_for_inference(@network_def.to(@device),
              channels_last=@channels_last, compile=@compile, compile_mode=@compile_mode)"
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from scripts.networks.blocks import ResnetBlockAdaGN, SelfAttention2d
from scripts.networks.critic import CriticDownBlock
from scripts.networks.wrappers import unwrap
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "COMPILE_MODES",
    "bf16_is_fast",
    "compile_targets",
    "to_channels_last",
    "compile_networks",
    "enable_activation_checkpointing",
    "prepare_for_inference",
    "prepare_for_training",
]

#: ``torch.compile`` modes. "reduce-overhead" records CUDA graphs on a GPU (the fixed 4-step sampler calls the
#: generators with the same shapes every step, the case CUDA graphs are for); on a CPU it is the default mode.
COMPILE_MODES: tuple[str | None, ...] = (
    None,
    "default",
    "reduce-overhead",
    "max-autotune",
    "max-autotune-no-cudagraphs",
)


#: CPU flags (Linux ``/proc/cpuinfo``) of native bf16 matrix instructions: without them oneDNN emulates bf16 and
#: autocast is slower than float32
BF16_CPU_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")


def _cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str] | None:
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def bf16_is_fast(device: torch.device | str, cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether bf16 autocast speeds the networks up on ``device``: a CUDA device with bf16 support (Ampere and
    later), or a CPU with native bf16 instructions (x86 AVX-512 BF16 / AMX, Arm ``bf16``). Anything else (MPS, an
    unknown CPU) is False, which keeps the exact float32 path. The inference config's ``amp`` default."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    flags = _cpu_flags(cpuinfo)
    if flags is None:
        return False
    return bool(flags & {*BF16_CPU_FLAGS, "bf16"}) and bool(torch.backends.mkldnn.is_available())


def compile_targets(network: nn.Module) -> list[nn.Module]:
    """The sub-modules worth compiling: the two generators of a ``MUDiff`` (so ``predict_x0``, which the sampler
    calls, runs compiled code), otherwise the module itself (critic, U-Net baseline)."""
    net = unwrap(network, owner_of="g1")
    parts = [getattr(net, name) for name in ("g1", "g2") if isinstance(getattr(net, name, None), nn.Module)]
    return parts or [net]


def to_channels_last(network: nn.Module) -> nn.Module:
    """NHWC strides for every 4-D parameter and buffer (in place; returns ``network``).

    Convolutions then produce NHWC activations from NCHW inputs, which suits oneDNN and tensor-core kernels.
    Inputs need no conversion (a 1-channel slice is the same in both layouts).
    """
    if not isinstance(network, nn.Module):
        raise TypeError(f"to_channels_last: expected an nn.Module, got {type(network).__name__}")
    return network.to(memory_format=torch.channels_last)


def _check_arguments(caller: str, network: Any, compile_mode: str | None) -> None:
    """A module and a known compile mode, or an error naming ``caller`` (checked even when compile is off)."""
    if not isinstance(network, nn.Module):
        raise TypeError(f"{caller}: expected an nn.Module, got {type(network).__name__}")
    if compile_mode not in COMPILE_MODES:
        raise ValueError(f"{caller}: compile_mode must be one of {list(COMPILE_MODES)}, got {compile_mode!r}")


def compile_networks(
    network: nn.Module,
    mode: str | None = None,
    backend: str = "inductor",
    dynamic: bool | None = None,
    fullgraph: bool = False,
) -> nn.Module:
    """``torch.compile`` the generators of a ``MUDiff`` (or the module itself) in place; returns ``network``.

    Args:
        network: ``MUDiff``, a critic, or any module (DDP wrappers are looked through).
        mode: one of ``COMPILE_MODES``; "reduce-overhead" uses CUDA graphs on a GPU.
        backend: ``torch.compile`` backend ("inductor"; "aot_eager" checks graph capture without code generation).
        dynamic: ``torch.compile``'s dynamic-shape setting (None: decide after a shape change).
        fullgraph: fail instead of falling back to eager at a graph break.
    """
    _check_arguments("compile_networks", network, mode)
    options: dict[str, Any] = {"backend": backend, "dynamic": dynamic, "fullgraph": fullgraph}
    if mode not in (None, "default"):
        options["mode"] = mode
    for part in compile_targets(network):
        part.compile(**options)
    return network


#: the blocks whose activations dominate a training step's memory: each is recomputed as a whole
CHECKPOINTED_BLOCKS: tuple[type[nn.Module], ...] = (ResnetBlockAdaGN, SelfAttention2d, CriticDownBlock)


def _checkpointed(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    @functools.wraps(forward)
    def run(*args: Any) -> torch.Tensor:
        if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
            # non-reentrant: supports the R1 penalty's gradient of a gradient and DDP; RNG state is replayed
            return checkpoint(forward, *args, use_reentrant=False)
        return forward(*args)

    run._mudiff_checkpointed = True  # type: ignore[attr-defined]
    return run


def enable_activation_checkpointing(network: nn.Module) -> nn.Module:
    """Recompute the activations of every residual, attention and critic block in the backward pass (in place;
    returns ``network``). Parameter names, outputs and gradients stay those of the plain network; without
    gradients (validation, inference) the blocks run as before."""
    if not isinstance(network, nn.Module):
        raise TypeError(f"enable_activation_checkpointing: expected an nn.Module, got {type(network).__name__}")
    for module in network.modules():
        if isinstance(module, CHECKPOINTED_BLOCKS) and not getattr(module.forward, "_mudiff_checkpointed", False):
            module.forward = _checkpointed(module.forward)  # an instance attribute: state_dict keys unchanged
    return network


def prepare_for_inference(
    network: nn.Module,
    channels_last: bool = False,
    compile: bool = False,  # noqa: A002 (the config key's name)
    compile_mode: str | None = None,
    eval_mode: bool = True,
) -> nn.Module:
    """Apply the inference switches to a network already on its device; all off returns it unchanged (but in
    eval mode). Same parameters, same names, same outputs up to floating-point rounding (tests/test_performance.py).

    Args:
        network: ``MUDiff`` (or critic), on its final device.
        channels_last: NHWC memory format (``to_channels_last``).
        compile: ``torch.compile`` the generators (``compile_networks``).
        compile_mode: ``torch.compile`` mode, used when ``compile`` is set ("reduce-overhead": CUDA graphs).
        eval_mode: put the network in eval mode (no dropout), as inference needs.
    """
    _check_arguments("prepare_for_inference", network, compile_mode)
    if eval_mode:
        network.eval()
    if channels_last:
        to_channels_last(network)
    if compile:
        compile_networks(network, mode=compile_mode)
    return network


def prepare_for_training(
    network: nn.Module,
    channels_last: bool = False,
    compile: bool = False,  # noqa: A002 (the config key's name)
    compile_mode: str | None = None,
    activation_checkpointing: bool = False,
) -> nn.Module:
    """``prepare_for_inference`` without the switch to eval mode, for the training config's ``network`` and
    critic, plus ``activation_checkpointing`` (``enable_activation_checkpointing``).

    Compile only the generators here (a ``MUDiff``): the critic's lazy R1 penalty differentiates through a
    gradient (``create_graph=True``), which compiled code does not support.
    """
    if activation_checkpointing:
        enable_activation_checkpointing(network)
    return prepare_for_inference(network, channels_last, compile, compile_mode, eval_mode=False)
