"""MONAI Label app for MU-Diff: synthesize a subject's missing MRI contrast from the three others.

Start it from the bundle folder (docs/monailabel.md)::

    .venv/bin/python -m monailabel.main start_server --app monailabel_app --studies studies \\
        --conf config_file configs/inference.yaml

The app serves one infer model, ``mudiff_<target>`` (``mudiff_t1ce`` for the default task), of type ``others``.
A request names one image of a subject (any of its contrasts); the task finds the subject's input contrasts beside it
and returns the synthesized volume on the input grid. ``--conf`` keys: see ``scripts.monailabel_task.parse_conf``.
Training through MONAI Label is not offered: MU-Diff trains on multi-contrast subjects with the bundle's own
``configs/train.yaml``, not on MONAI Label's image/label pairs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
if str(BUNDLE_ROOT) not in sys.path:  # the bundle's `scripts` package
    sys.path.insert(0, str(BUNDLE_ROOT))

from lib.infers import MUDiffSynthesisTask  # noqa: E402
from monailabel.interfaces.app import MONAILabelApp  # noqa: E402
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException  # noqa: E402
from monailabel.interfaces.tasks.infer_v2 import InferTask  # noqa: E402
from monailabel.interfaces.tasks.train import TrainTask  # noqa: E402
from scripts.errors import UserError  # noqa: E402
from scripts.monailabel_task import SynthesisService, parse_conf  # noqa: E402

logger = logging.getLogger(__name__)


def bundle_version() -> str:
    """The bundle's version from ``configs/metadata.json`` (shown by MONAI Label clients)."""
    try:
        meta = json.loads((BUNDLE_ROOT / "configs" / "metadata.json").read_text(encoding="utf-8"))
        return str(meta.get("version", "unknown"))
    except (OSError, json.JSONDecodeError):
        return "unknown"


class MUDiffApp(MONAILabelApp):
    """The app: one ``MUDiffSynthesisTask`` over the studies folder's NIfTI images, no trainers."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        try:
            settings = parse_conf(conf)
            self.service = SynthesisService(settings.config_files, settings.overrides, settings.output_dir)
        except UserError as err:
            raise MONAILabelException(MONAILabelError.APP_INIT_ERROR, f"MU-Diff app: {err}") from None
        self.preload = settings.preload
        logger.info("MU-Diff app: %r", self.service)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MU-Diff contrast synthesis",
            description=f"MU-Diff bundle {bundle_version()}: {self.service.description}",
            version=bundle_version(),
        )

    def init_infers(self) -> dict[str, InferTask]:
        try:
            task = MUDiffSynthesisTask(self.service, datastore=self.datastore(), preload=self.preload)
        except UserError as err:
            raise MONAILabelException(MONAILabelError.APP_INIT_ERROR, f"MU-Diff app: {err}") from None
        return {self.service.model_name: task}

    def init_trainers(self) -> dict[str, TrainTask]:
        return {}

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """``MONAILabelApp.infer``, plus two things:

        - the datastore image id the client sent is kept as ``image_id`` (MONAI Label replaces ``image`` by the file
          path, which for a symlinked studies folder no longer shows the names the other contrasts are found by);
        - in the server, a refused request answers HTTP 400 (bad input) or 500 with its one-line reason as the
          reply's ``detail``; MONAI Label itself has no handler for its exceptions and would reply a bare 500.
        """
        request = dict(request)
        image = request.get("image")
        if isinstance(image, str) and image and not os.path.exists(image):
            request.setdefault("image_id", image)
        try:
            return super().infer(request, datastore)
        except MONAILabelException as err:
            if not self._server_mode:
                raise
            from fastapi import HTTPException

            status = 400 if err.error == MONAILabelError.INVALID_INPUT else 500
            raise HTTPException(status_code=status, detail=f"{err.error.value}: {err.msg}") from None
