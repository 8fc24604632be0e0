"""Whole-volume MU-Diff inference: subjects (files or arrays) -> synthesized contrast on the input's own grid.

- ``stack``: ``VolumeInferer`` (slice-batched, seeded sampling of a subject's stack; N samples -> mean + std;
  optional critic attention map) and ``StackSynthesis``;
- ``volume``: ``synthesize_subject`` (datalist item), ``synthesize_arrays`` (in-memory volumes, e.g. MONAI Label),
  ``VolumeSynthesis`` and ``Coverage`` (which slices were synthesized);
- ``writer``: ``write_synthesis`` (``<subject>_syn_<contrast>.nii.gz`` / ``_unc_`` / ``attention/..._att_``,
  atomic, never over an input);
- ``weights``: ``load_generators`` (checked load of ``models/model.pt``), ``MUDiffCheckpointLoader``, ``load_critic``;
- ``bundle``: the dataset / collate / prepare_batch / postprocessing pieces ``configs/inference.yaml`` wires;
- ``synthesize`` (command line), ``split_evaluation`` (scoring a synthesized datalist split, ``configs/evaluate.yaml``),
  ``demo`` (the main job). See docs/inference.md.
"""

from . import bundle, errors, stack, volume, weights, writer
from .errors import InferenceError
from .stack import StackSynthesis, VolumeInferer
from .volume import Coverage, VolumeSynthesis, synthesize_arrays, synthesize_subject
from .weights import load_generators
from .writer import write_synthesis

__all__ = [
    "Coverage",
    "InferenceError",
    "StackSynthesis",
    "VolumeInferer",
    "VolumeSynthesis",
    "bundle",
    "errors",
    "load_generators",
    "stack",
    "synthesize_arrays",
    "synthesize_subject",
    "volume",
    "weights",
    "write_synthesis",
    "writer",
]
