r"""Convert the published MU-Diff checkpoints (reference parameter names) to this bundle's ``models/model.pt``.

The reference generators keep their layers in one ``all_modules`` list consumed by a running index, so a
published name such as ``all_modules.37.Conv_1.weight`` only makes sense for one configuration. The mapping
here is derived by walking our (named, nested) modules in the reference's construction order, so it follows
``ch_mult``, ``num_res_blocks``, ``attn_resolutions`` and the number of contrasts instead of a fixed table.
Every conversion is strict: missing keys, unexpected keys and shape mismatches are all reported together.

Python::

    from scripts.convert_weights import convert_published
    convert_published("gen_diffusive_1.pth", "gen_diffusive_2.pth", "models/model.pt")

Command line: ``python -m scripts convert_weights published|to_reference|critic ...`` (``scripts.commands``).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from scripts.data import DataError, resolve_task
from scripts.networks import checkpoints
from scripts.networks.blocks import ResnetBlockAdaGN, SelfAttention2d
from scripts.networks.checkpoints import CheckpointError, atomic_torch_save, mismatch_report
from scripts.networks.critic import TimeConditionedCritic
from scripts.networks.described import EXTRA_STATE_KEY
from scripts.networks.fir import FIRConvDownsample2d
from scripts.networks.generators import NCSNppGenerator
from scripts.networks.mudiff import MUDiff
from scripts.networks.stems import ContrastAwareStem, ModulatedConvEncoder
from torch import nn

__all__ = [
    "WeightConversionError",
    "KeyMapping",
    "generator_key_mapping",
    "critic_key_mapping",
    "reference_to_ours",
    "ours_to_reference",
    "load_state_dict_file",
    "convert_published",
    "convert_to_reference",
    "convert_critic",
    "load_generators_from_reference",
    "save_state_dict",
]

REFERENCE_PREFIX = "module."
_MAX_LISTED = 25


class WeightConversionError(CheckpointError):
    """A state dict does not match the reference or bundle layout (missing/unexpected keys, wrong shapes), or a
    conversion option is wrong. Unreadable files are the shared reader's ``CheckpointError``."""


@dataclass(frozen=True)
class KeyMapping:
    """One tensor: our name, the reference name, and whether the matrix is stored transposed there.

    The reference's attention projections (``NIN``) store W as (in, out); ours are ``nn.Linear`` (out, in).
    """

    ours: str
    reference: str
    transpose: bool = False

    def to_ours(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.t().contiguous() if self.transpose else tensor

    def to_reference(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.t().contiguous() if self.transpose else tensor


# Our sub-module name -> the reference's, per block type (leaves ``weight``/``bias`` are kept unless noted).
_RESBLOCK_NAMES = {
    "norm1": "GroupNorm_0",
    "conv1": "Conv_0",
    "time_proj": "Dense_0",
    "norm2": "GroupNorm_1",
    "conv2": "Conv_1",
    "skip": "Conv_2",
}
_ATTENTION_NAMES = {"norm": "GroupNorm_0", "q": "NIN_0", "k": "NIN_1", "v": "NIN_2", "proj_out": "NIN_3"}
_NIN_LEAVES = {"weight": "W", "bias": "b"}


def _leaf_mappings(our_prefix: str, ref_prefix: str, module: nn.Module) -> Iterator[KeyMapping]:
    """Yield the mapping of every state-dict entry of ``module`` (a block at ``our_prefix``)."""
    for leaf in module.state_dict():
        head, _, rest = leaf.partition(".")
        transpose = False
        if isinstance(module, ResnetBlockAdaGN):
            ref_leaf = f"{_RESBLOCK_NAMES[head]}.{rest}"
        elif isinstance(module, SelfAttention2d):
            if head == "norm":
                ref_leaf = f"{_ATTENTION_NAMES[head]}.{rest}"
            else:
                ref_leaf = f"{_ATTENTION_NAMES[head]}.{_NIN_LEAVES[rest]}"
                transpose = rest == "weight"
        elif isinstance(module, FIRConvDownsample2d):
            ref_leaf = f"Conv2d_0.{rest}"
        elif isinstance(module, ModulatedConvEncoder):
            ref_leaf = f"group_norm.{rest}" if head == "norm" else leaf
        else:  # Linear, Conv2d, GroupNorm, ConvFeatureEncoder, StyleEncoder: same leaf names
            ref_leaf = leaf
        yield KeyMapping(f"{our_prefix}.{leaf}", f"{ref_prefix}.{ref_leaf}", transpose)


def generator_key_mapping(generator: NCSNppGenerator) -> list[KeyMapping]:
    """All tensors of a generator, ours <-> reference, in the reference's ``all_modules`` order.

    The order (spec Appendix): time-embedding Linears; the stem (G1: x, c1..cN encoders; G2: style encoder,
    x encoder, modulated c1..cN encoders); per encoder level R ResBlocks (+ attention), then a down ResBlock and
    the pyramid conv except at the last level; bottleneck ResBlock, attention, ResBlock; per decoder level R+1
    ResBlocks (+ attention), then an up ResBlock except at level 0; head GroupNorm and conv. ``z_transform``
    holds the mapping Linears at odd indices, and G2's fusion convs are top-level ``feat_*`` attributes.
    """
    modules: list[tuple[str, nn.Module]] = [
        ("time_embed.linear1", generator.time_embed.linear1),
        ("time_embed.linear2", generator.time_embed.linear2),
    ]
    stem = generator.stem
    if isinstance(stem, ContrastAwareStem):
        modules.append(("stem.style_encoder", stem.style_encoder))
    modules.append(("stem.x_encoder", stem.x_encoder))
    modules += [(f"stem.cond_encoders.{i}", m) for i, m in enumerate(stem.cond_encoders)]
    unet = generator.unet
    for i, level in enumerate(unet.encoder):
        for j, (block, attention) in enumerate(zip(level.blocks, level.attentions, strict=True)):
            modules.append((f"unet.encoder.{i}.blocks.{j}", block))
            if isinstance(attention, SelfAttention2d):
                modules.append((f"unet.encoder.{i}.attentions.{j}", attention))
        if level.downsample is not None:
            modules.append((f"unet.encoder.{i}.downsample", level.downsample))
            modules.append((f"unet.encoder.{i}.pyramid_downsample", level.pyramid_downsample))
    modules += [
        ("unet.bottleneck.block1", unet.bottleneck.block1),
        ("unet.bottleneck.attention", unet.bottleneck.attention),
        ("unet.bottleneck.block2", unet.bottleneck.block2),
    ]
    for i, level in enumerate(unet.decoder):
        modules += [(f"unet.decoder.{i}.blocks.{j}", block) for j, block in enumerate(level.blocks)]
        if isinstance(level.attention, SelfAttention2d):
            modules.append((f"unet.decoder.{i}.attention", level.attention))
        if level.upsample is not None:
            modules.append((f"unet.decoder.{i}.upsample", level.upsample))
    modules += [("unet.out_norm", unet.out_norm), ("unet.out_conv", unet.out_conv)]

    mapping: list[KeyMapping] = []
    for index, (name, module) in enumerate(modules):
        mapping += _leaf_mappings(name, f"all_modules.{index}", module)
    for j, layer in enumerate(generator.latent_mapping.layers):
        mapping += _leaf_mappings(f"latent_mapping.layers.{j}", f"z_transform.{2 * j + 1}", layer)
    if isinstance(stem, ContrastAwareStem):
        n = stem.num_cond
        for k, fusion in enumerate(stem.fusions):
            pair = f"c{k + 1}{(k + 1) % n + 1}"
            mapping += _leaf_mappings(f"stem.fusions.{k}.transform", f"feat_weight_c{k + 1}", fusion.transform)
            mapping += _leaf_mappings(f"stem.fusions.{k}.source_gate", f"feat_att1_{pair}", fusion.source_gate)
            mapping += _leaf_mappings(f"stem.fusions.{k}.mix_gate", f"feat_att2_{pair}", fusion.mix_gate)
    _check_complete(generator, mapping)
    return mapping


def critic_key_mapping(critic: TimeConditionedCritic) -> list[KeyMapping]:
    """All tensors of the critic, ours <-> the reference ``Discriminator_large`` names."""
    mapping = list(_leaf_mappings("time_embed.linear1", "t_embed.main.0", critic.time_embed.linear1))
    mapping += _leaf_mappings("time_embed.linear2", "t_embed.main.2", critic.time_embed.linear2)
    mapping += _leaf_mappings("stem", "start_conv", critic.stem)
    for i, block in enumerate(critic.blocks):
        ref = f"conv{i + 1}"
        mapping += _leaf_mappings(f"blocks.{i}.conv1", f"{ref}.conv1.0", block.conv1)
        mapping += _leaf_mappings(f"blocks.{i}.conv2", f"{ref}.conv2.0", block.conv2)
        mapping += _leaf_mappings(f"blocks.{i}.time_proj", f"{ref}.dense_t1", block.time_proj)
        mapping += _leaf_mappings(f"blocks.{i}.skip", f"{ref}.skip.0", block.skip)
    mapping += _leaf_mappings("head_conv", "final_conv", critic.head_conv)
    mapping += _leaf_mappings("head_linear", "end_linear", critic.head_linear)
    _check_complete(critic, mapping)
    return mapping


def _check_complete(module: nn.Module, mapping: list[KeyMapping]) -> None:
    ours = set(module.state_dict()) - {EXTRA_STATE_KEY}  # a module's description has no reference counterpart
    mapped = [m.ours for m in mapping]
    if set(mapped) != ours or len(mapped) != len(ours) or len({m.reference for m in mapping}) != len(mapping):
        raise RuntimeError(  # a bug in this file, not in the user's input
            f"internal error: key mapping of {type(module).__name__} is incomplete: "
            f"unmapped {sorted(ours - set(mapped))[:10]}, extra {sorted(set(mapped) - ours)[:10]}"
        )


def _layout_error(what: str, problem: str, hint: str = "") -> WeightConversionError:
    message = f"{what} does not match the expected layout: {problem}"
    return WeightConversionError(message + (f". {hint}" if hint else ""))


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove a DDP ``module.`` prefix when every key has it; otherwise keep names (mismatches are reported)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _layout_hint(keys: set[str]) -> str:
    if any(k.startswith("feat_att") for k in keys):
        return "Hint: it has 'feat_att*' keys, so it looks like a G2 (gen_diffusive_2) checkpoint."
    if any(k.startswith("all_modules.") for k in keys):
        return "Hint: it looks like a reference generator; check g1/g2 order and the model config (nf, ch_mult, ...)."
    if any(k.startswith("end_linear") or k.startswith("t_embed.") for k in keys):
        return "Hint: it looks like a reference critic (Discriminator_large) checkpoint."
    if any(k.startswith(("g1.", "g2.")) for k in keys):
        return "Hint: it looks like a bundle checkpoint (models/model.pt), which needs no conversion."
    return ""


def reference_to_ours(
    state: Mapping[str, torch.Tensor], module: nn.Module, what: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Rename a reference state dict to ``module``'s names, strictly (keys and shapes).

    ``module`` is a ``ContrastSpecificGenerator``, ``ContrastAwareGenerator`` or ``TimeConditionedCritic`` built
    with the checkpoint's configuration (a meta-device instance is enough). A leading ``module.`` is removed.
    Raises ``WeightConversionError`` listing every missing key, unexpected key and shape mismatch.
    """
    mapping = critic_key_mapping(module) if isinstance(module, TimeConditionedCritic) else generator_key_mapping(module)
    state = _strip_prefix(state, REFERENCE_PREFIX)
    expected = module.state_dict()
    layout = {  # reference name -> the tensor shape the reference stores (attention matrices transposed)
        m.reference: torch.empty(
            tuple(expected[m.ours].shape)[::-1] if m.transpose else tuple(expected[m.ours].shape), device="meta"
        )
        for m in mapping
    }
    problem = mismatch_report(layout, state, limit=_MAX_LISTED)
    if problem:
        raise _layout_error(what, problem, _layout_hint(set(state)))
    return {m.ours: m.to_ours(state[m.reference]) for m in mapping}


def ours_to_reference(
    state: Mapping[str, torch.Tensor], module: nn.Module, prefix: str = "", what: str = "state dict"
) -> dict[str, torch.Tensor]:
    """Inverse of ``reference_to_ours``: our names -> reference names (optionally with a ``module.`` prefix)."""
    mapping = critic_key_mapping(module) if isinstance(module, TimeConditionedCritic) else generator_key_mapping(module)
    expected = module.state_dict()
    state = {k: v for k, v in state.items() if k != EXTRA_STATE_KEY}  # the description stays ours
    problem = mismatch_report({m.ours: expected[m.ours] for m in mapping}, state, limit=_MAX_LISTED)
    if problem:
        raise _layout_error(what, problem, _layout_hint(set(state)))
    return {prefix + m.reference: m.to_reference(state[m.ours]) for m in mapping}


def load_state_dict_file(path: str | os.PathLike, what: str | None = None) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (plain or in a ``{"state_dict"|"model": {...}}`` wrapper), read by the shared
    reader; ``what`` names the file in error messages (default ``"checkpoint"``)."""
    return checkpoints.read_state_dict(path, what or "checkpoint", expected="a dict of tensors (a state dict)")


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Save atomically (the shared writer: no truncated file after a crash, a full disk named as one)."""
    atomic_torch_save(dict(state), path)
    return Path(path)


def _meta(factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return factory()


def _model_config(**config: Any) -> dict[str, Any]:
    """Validate ``MUDiff`` keyword arguments; list-like values (fire parses ``"[1,2,4]"`` to a list) become tuples."""
    valid = [p for p in inspect.signature(MUDiff.__init__).parameters if p != "self"]
    unknown = sorted(set(config) - set(valid))
    if unknown:
        raise WeightConversionError(f"unknown model option(s) {unknown}; valid options: {valid}")
    return {key: tuple(value) if isinstance(value, list | tuple) else value for key, value in config.items()}


def _count(state: Mapping[str, torch.Tensor], prefix: str = "", tensors: bool = False) -> int:
    """Parameters (or, with ``tensors``, tensors) under ``prefix``; a module's description is neither."""
    found = [v for k, v in state.items() if k.startswith(prefix) and isinstance(v, torch.Tensor)]
    return len(found) if tensors else sum(v.numel() for v in found)


def convert_published(
    g1: str | os.PathLike,
    g2: str | os.PathLike,
    out: str | os.PathLike = "models/model.pt",
    verbose: bool = True,
    task: str | None = None,
    **config: Any,
) -> dict[str, torch.Tensor]:
    """Published ``gen_diffusive_1.pth`` + ``gen_diffusive_2.pth`` -> our ``MUDiff`` state dict at ``out``.

    ``config`` holds ``MUDiff`` hyper-parameters (defaults: the published configuration). ``task``: what the
    weights were trained for (e.g. ``brats_t1ce``); it is recorded in the file, so inference follows it and
    refuses another task. The result is checked by loading it strictly into a ``MUDiff``, then written
    atomically. Returns the state dict.
    """
    cfg = _model_config(**config)
    record = None
    if task is not None:
        try:
            inputs = resolve_task(task).inputs
        except DataError as exc:
            raise WeightConversionError(f"--task: {exc}") from None
        if len(inputs) != cfg.get("cond_channels", 3):
            raise WeightConversionError(f"--task {task} has {len(inputs)} inputs; pass --cond_channels {len(inputs)}")
        size = cfg.get("image_size", 256)
        record = {"task": task, "slice_mode": "reference", "num_slices": 80, "spatial_size": size}
        record["source"] = f"published MU-Diff weights {Path(g1).name} + {Path(g2).name}, converted"
    model = _meta(lambda: MUDiff(**cfg, record=record))
    state: dict[str, torch.Tensor] = {}
    for name, path, gen in (("g1", g1, model.g1), ("g2", g2, model.g2)):
        what = f"{name.upper()} checkpoint {path}"
        converted = reference_to_ours(load_state_dict_file(path, f"{name.upper()} checkpoint"), gen, what)
        state.update({f"{name}.{k}": v for k, v in converted.items()})
    model.load_state_dict(state, strict=True, assign=True)  # final guard: exactly MUDiff's keys and shapes
    if record is not None:
        state[EXTRA_STATE_KEY] = model.get_extra_state()
    written = save_state_dict(state, out)
    if verbose:
        print(
            f"wrote {written} ({_count(state, tensors=True)} tensors): G1 {_count(state, 'g1.'):,} parameters, "
            f"G2 {_count(state, 'g2.'):,} parameters"
        )
    return state


def convert_to_reference(
    model: str | os.PathLike = "models/model.pt",
    out_dir: str | os.PathLike = ".",
    prefix: str = REFERENCE_PREFIX,
    verbose: bool = True,
    **config: Any,
) -> tuple[Path, Path]:
    """Our ``models/model.pt`` -> reference-named ``gen_diffusive_1.pth`` and ``gen_diffusive_2.pth`` in out_dir."""
    cfg = _model_config(**config)
    mudiff = _meta(lambda: MUDiff(**cfg))
    state = load_state_dict_file(model, "bundle checkpoint")
    extra = sorted(k for k in state if not k.startswith(("g1.", "g2.")) and k != EXTRA_STATE_KEY)
    if extra:
        problem = f"{len(extra)} unexpected keys: {extra[:_MAX_LISTED]}"
        raise _layout_error(f"bundle checkpoint {model}", problem, _layout_hint(set(state)))
    paths = []
    for index, (name, gen) in enumerate((("g1", mudiff.g1), ("g2", mudiff.g2)), start=1):
        sub = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
        ref = ours_to_reference(sub, gen, prefix, f"{name} part of bundle checkpoint {model}")
        paths.append(save_state_dict(ref, Path(out_dir) / f"gen_diffusive_{index}.pth"))
        if verbose:
            print(f"wrote {paths[-1]} ({len(ref)} tensors, {_count(ref):,} parameters)")
    return paths[0], paths[1]


def convert_critic(
    src: str | os.PathLike,
    out: str | os.PathLike | None = None,
    verbose: bool = True,
    in_channels: int = 1,
    ngf: int = 64,
    t_emb_dim: int = 256,
) -> dict[str, torch.Tensor]:
    """Reference critic state dict (``Discriminator_large`` names) -> ``TimeConditionedCritic`` state dict."""
    critic = _meta(lambda: TimeConditionedCritic(in_channels=in_channels, ngf=ngf, t_emb_dim=t_emb_dim))
    what = f"critic checkpoint {src}"
    state = reference_to_ours(load_state_dict_file(src, "critic checkpoint"), critic, what)
    critic.load_state_dict(state, strict=True, assign=True)
    state = critic.state_dict()  # with its description (configuration), which inference builds the critic from
    if out is not None:
        written = save_state_dict(state, out)
        if verbose:
            print(f"wrote {written} ({_count(state, tensors=True)} tensors): critic {_count(state):,} parameters")
    return state


def load_generators_from_reference(
    g1_state: Mapping[str, torch.Tensor], g2_state: Mapping[str, torch.Tensor], **config: Any
) -> MUDiff:
    """Build a CPU ``MUDiff`` with ``config`` and load reference-named G1/G2 state dicts into it (strict)."""
    model = MUDiff(**_model_config(**config))
    model.g1.load_state_dict(reference_to_ours(g1_state, model.g1, "G1 state dict"), strict=True)
    model.g2.load_state_dict(reference_to_ours(g2_state, model.g2, "G2 state dict"), strict=True)
    return model
