"""Evaluation of MU-Diff syntheses: the paper's protocol, float metrics, BraSyn 3D SSIM, baselines and reports.

Works on numpy arrays and NIfTI files only; it never imports the networks. See docs/evaluation.md.
"""

_EXPORTS = {
    "CopySelection": "copy_baseline",
    "copy_prediction": "copy_baseline",
    "select_copy_contrast": "copy_baseline",
    "EvaluationResult": "evaluate",
    "evaluate_arrays": "evaluate",
    "evaluate_folders": "evaluate",
    "evaluate_methods": "evaluate",
    "brasyn_normalize": "metrics",
    "middle_slices": "metrics",
    "percentile_normalize": "metrics",
    "slice_float_metrics": "metrics",
    "ssim3d_regions": "metrics",
    "ssim_map": "metrics",
    "volume_float_metrics": "metrics",
    "aggregate_nan": "paper_protocol",
    "paper_slice_metrics": "paper_protocol",
    "paper_volume_metrics": "paper_protocol",
    "render_subject_figure": "report",
}


def __getattr__(name: str):
    """Import lazily, so that using one metric does not load the report's plotting (matplotlib) and the rest."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'scripts.evaluation' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"scripts.evaluation.{_EXPORTS[name]}"), name)


__all__ = [
    "CopySelection",
    "EvaluationResult",
    "aggregate_nan",
    "brasyn_normalize",
    "copy_prediction",
    "evaluate_arrays",
    "evaluate_folders",
    "evaluate_methods",
    "middle_slices",
    "paper_slice_metrics",
    "paper_volume_metrics",
    "percentile_normalize",
    "render_subject_figure",
    "select_copy_contrast",
    "slice_float_metrics",
    "ssim3d_regions",
    "ssim_map",
    "volume_float_metrics",
]
