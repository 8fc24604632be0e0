"""Score syntheses of a datalist split against the real target: MU-Diff next to the copy baseline (and any other
method's prediction folder), with ``scripts.evaluation.evaluate_folders`` (CSV, summary JSON, PNG per subject).

``configs/evaluate.yaml`` runs the inference evaluator and then ``SynthesisEvaluation.run()``.

References are the datalist's own files (``ReferenceFiles.from_items``), never found by name. The copy baseline's
contrast is chosen on the datalist's training + validation subjects (never on the evaluated ones), by
``scripts.evaluation.select_copy_contrast``, unless ``copy_from`` is given. Other methods (e.g. the U-Net
baseline) are added as ``{name: folder}`` in ``predictions``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts.data import DataError, resolve_task
from scripts.data.io_utils import write_json
from scripts.evaluation.copy_baseline import select_copy_contrast
from scripts.evaluation.evaluate import EvaluationResult, evaluate_folders
from scripts.evaluation.matching import list_predictions, load_volume

from .errors import InferenceError

__all__ = ["SynthesisEvaluation", "choose_copy_contrast"]

logger = logging.getLogger(__name__)


def choose_copy_contrast(items: Sequence[Mapping[str, Any]], task: Any, num_slices: int | None = 80) -> dict:
    """Select the copy-baseline contrast on reference subjects (training/validation items, never the test ones)."""
    t = resolve_task(task)
    usable = [it for it in items if all(it.get(c) for c in t.contrasts)]
    if not usable:
        raise InferenceError(
            f"no training/validation subject has all of {list(t.contrasts)} to choose the copy baseline's contrast; "
            "set copy_from to one of the inputs"
        )
    volumes = [{c: load_volume(it[c])[0] for c in t.contrasts} for it in usable]
    selection = select_copy_contrast(volumes, t.target, list(t.inputs), num_slices=num_slices)
    return {
        "contrast": selection.contrast,
        "scores": selection.scores,
        "criterion": selection.criterion,
        "reference_subjects": [str(it.get("subject")) for it in usable],
    }


class SynthesisEvaluation:
    """Evaluate prediction folders for the subjects of ``datalist`` (the split that was synthesized).

    Args:
        datalist: evaluated items (need the target file, and ``lesion`` for lesion metrics).
        task: the synthesis task.
        predictions: method -> folder of ``<subject>_syn_<contrast>.nii.gz`` (e.g. ``{"mudiff": ..., "unet": ...}``).
        out_dir: report folder (CSV, summary.json, figures/<method>/<subject>_<contrast>.png).
        copy_from: copy-baseline contrast; None = choose on ``copy_reference`` items; "" = no copy baseline.
        copy_reference: training/validation items for that choice.
        num_slices: middle axial slices evaluated (80 as in the paper; None = all).
        figures: write the PNG report per subject and method.
        jpeg: the paper protocol's JPEG round-trip of the synthesis.
    """

    def __init__(
        self,
        datalist: Sequence[Mapping[str, Any]],
        task: Any,
        predictions: Mapping[str, str],
        out_dir: str,
        copy_from: str | None = None,
        copy_reference: Sequence[Mapping[str, Any]] | None = None,
        num_slices: int | None = 80,
        figures: bool = True,
        jpeg: bool = True,
    ) -> None:
        self.items = [dict(it) for it in datalist]
        self.task = resolve_task(task)
        self.predictions = {str(k): str(v) for k, v in predictions.items() if v}
        self.out_dir = str(out_dir)
        self.copy_from = copy_from
        self.copy_reference = [dict(it) for it in (copy_reference or [])]
        self.num_slices = num_slices
        self.figures = figures
        self.jpeg = jpeg
        self.result: EvaluationResult | None = None

    def _check_predictions(self) -> None:
        wanted = {str(it["subject"]) for it in self.items}
        for method, folder in self.predictions.items():
            found = {p.subject for p in list_predictions(folder) if p.contrast == self.task.target}
            missing = sorted(wanted - found)
            if missing:
                raise InferenceError(f"method {method!r}: no {self.task.target} synthesis in {folder} for {missing}")
            extra = sorted(found - wanted)
            if extra:
                raise InferenceError(
                    f"method {method!r}: {folder} also holds syntheses of {extra}, which are not in the evaluated "
                    "split; use a clean output folder per run"
                )

    def run(self) -> EvaluationResult:
        """Pick the copy contrast, evaluate every method against the datalist's files, print and return the tables."""
        if not self.items:
            raise DataError("nothing to evaluate: the datalist split is empty")
        missing_target = [str(it.get("subject")) for it in self.items if not it.get(self.task.target)]
        if missing_target:
            raise DataError(f"subjects {missing_target} have no {self.task.target!r} file to compare with")
        self._check_predictions()
        out = Path(self.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        copy = self.copy_from
        selection = None
        if copy is None:
            selection = choose_copy_contrast(self.copy_reference, self.task, self.num_slices)
            copy = selection["contrast"]
            logger.info("copy baseline: %s (scores %s)", copy, selection["scores"])
        self.result = evaluate_folders(
            self.predictions,
            None,
            str(out),
            items=self.items,
            copy_from=copy or None,
            inputs=",".join(self.task.inputs) if self.figures else None,
            figures=self.figures,
            num_slices=self.num_slices,
            jpeg=self.jpeg,
        )
        write_json(
            out / "copy_baseline.json", selection or {"contrast": copy or None, "criterion": "given by copy_from"}
        )
        print(self.result.tables())
        for name, path in self.result.files.items():
            print(f"{name}: {path}")
        return self.result
