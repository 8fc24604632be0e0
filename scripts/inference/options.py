"""The inference options users set by name, in one table: the command line (``--weights``) and the MONAI Label app
(``--conf weights``) map each to the same ``configs/inference.yaml`` key."""

from __future__ import annotations

__all__ = ["BOOL_OPTIONS", "INFERENCE_OPTIONS", "PATH_KEYS"]

#: option name -> the inference config key it sets
INFERENCE_OPTIONS: dict[str, str] = {
    "weights": "ckpt_path",
    "task": "task",
    "slice_mode": "slice_mode",
    "num_slices": "num_slices",
    "spatial_size": "spatial_size",
    "reader": "reader",
    "resample": "resample",
    "batch_size": "infer_batch_size",
    "num_samples": "num_samples",
    "seed": "seed",
    "amp": "amp",
    "attention": "save_attention",
    "critic": "critic_ckpt",
    "mask_background": "mask_background",
}
#: options that are switches (``true``/``false``)
BOOL_OPTIONS: tuple[str, ...] = ("amp", "attention", "mask_background", "resample")
#: config keys whose values are file paths
PATH_KEYS: tuple[str, ...] = ("ckpt_path", "critic_ckpt")
