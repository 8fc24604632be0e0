"""The MU-Diff synthesis infer task: one MONAI Label request -> the subject's missing contrast as a NIfTI volume.

MONAI Label has no synthesis type, so the task is ``InferType.OTHERS`` built on ``BasicInferTask`` (its request
handling, device choice, per-stage latencies and result JSON), with each stage replaced:

- pre-transforms: ``FindStudyd`` turns the request's one image into the subject's input contrasts
  (``scripts.monailabel_task.match_study``; the datastore's images or the image's own folder);
- inferer: ``SynthesisService.synthesize``: the bundle's whole-volume path (``synthesize_subject``: load, check,
  normalize, slice, reverse diffusion slice batch by slice batch, back onto the first input's grid);
- no inverse or post transforms (the synthesis is already on the input grid);
- writer: a float32 NIfTI in [0, 1] with the input's geometry, plus the result JSON.

Bad input (no file for a contrast, inputs on different grids, weights of another task) raises ``MONAILabelException``
with the one-line reason, instead of a stack trace from deep inside the pipeline.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask
from scripts.data import DataError
from scripts.errors import UserError
from scripts.evaluation.matching import canonical_contrast
from scripts.monailabel_task import Study, SynthesisService, find_study, match_study

logger = logging.getLogger(__name__)


class FindStudyd:
    """Pre-transform: ``data["study"]`` = the subject's input files for the request (see ``match_study``).

    Request keys read: ``image_id`` (the datastore image the client opened; set by the app), ``image`` (its file
    path, a path on the server, or an uploaded file), optional ``subject``, ``contrast`` (which input the image
    itself is, when its name does not say) and ``inputs`` (``{contrast: path or image id}``, winning over names).
    """

    def __init__(self, inputs: Sequence[str], datastore: Datastore | None = None) -> None:
        self.inputs = tuple(inputs)
        self.datastore = datastore

    def _datastore_file(self, value: str) -> str | None:
        if self.datastore is None or value not in set(self.datastore.list_images()):
            return None
        uri = self.datastore.get_image_uri(value)
        return uri if uri and os.path.isfile(uri) else None

    def _explicit(self, given: Any) -> dict[str, str]:
        if given in (None, "", {}):
            return {}
        if not isinstance(given, Mapping):
            raise DataError(f"request parameter 'inputs' must map contrasts to files or image ids, got {given!r}")
        unknown = sorted(set(given) - set(self.inputs))
        if unknown:
            raise DataError(f"request parameter 'inputs': {unknown} are not input contrasts of {list(self.inputs)}")
        files = {}
        for contrast, value in given.items():
            path = str(value)
            if not os.path.isfile(path):
                path = self._datastore_file(path) or ""
            if not path:
                raise DataError(
                    f"request parameter 'inputs': {contrast}={value!r} is neither a file on the server nor "
                    "an image id of the datastore"
                )
            files[contrast] = path
        return files

    def _own_contrast(self, value: Any) -> str | None:
        """The request's ``contrast`` parameter: which input contrast the request's image itself is."""
        if value in (None, ""):
            return None
        wanted = canonical_contrast(str(value))
        for contrast in self.inputs:
            if canonical_contrast(contrast) == wanted:
                return contrast
        raise DataError(f"request parameter 'contrast': {value!r} is not an input contrast of {list(self.inputs)}")

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        explicit = self._explicit(data.get("inputs"))
        subject = str(data["subject"]) if data.get("subject") else None
        own = self._own_contrast(data.get("contrast"))
        image_id = data.get("image_id")
        in_datastore = isinstance(image_id, str) and bool(image_id) and self.datastore is not None
        if in_datastore and not self._datastore_file(image_id):
            images = sorted(self.datastore.list_images())
            shown = images[:8] + (["..."] if len(images) > 8 else [])
            raise DataError(
                f"image {image_id!r} is neither a file on the server nor an image of the datastore "
                f"({len(images)} images: {shown})"
            )
        if in_datastore:
            if own is not None:
                explicit.setdefault(own, self._datastore_file(image_id))
            images = self.datastore.list_images()
            candidates = {i: self.datastore.get_image_uri(i) for i in images}
            study = match_study(image_id, candidates, self.inputs, subject, None, explicit, " in the datastore")
        else:
            image = data.get("image")
            if not isinstance(image, str) or not image:
                raise DataError(f"the request's image must be a datastore image id or a file path, got {image!r}")
            if own is not None and os.path.isfile(image):
                explicit.setdefault(own, image)  # e.g. an uploaded file, whose temporary name says nothing
            study = find_study(image, self.inputs, subject, explicit)
        logger.info("subject %s: %s", study.subject, study.files)
        data["study"] = study
        return data


class MUDiffSynthesisTask(BasicInferTask):
    """``InferType.OTHERS`` task: synthesize the task's target contrast for the subject of the request's image.

    Args:
        service: the configured model (``scripts.monailabel_task.SynthesisService``).
        datastore: the app's datastore (image ids -> files); None for file paths only.
        preload: load the weights when the task is created.

    Request parameters (besides MONAI Label's ``image``, ``device``): ``num_samples`` (> 1: mean of N samples),
    ``seed`` (integer, or null for unseeded), ``subject``, ``contrast``, ``inputs`` (see ``FindStudyd``).
    Returns the synthesis file (float32 NIfTI in [0, 1] on the first input's grid) and a JSON with the subject, the
    input files used, the slice coverage, ``num_samples``, ``seed``, the weights and the latencies.
    """

    def __init__(self, service: SynthesisService, datastore: Datastore | None = None, preload: bool = False) -> None:
        self.service = service
        self.datastore = datastore
        super().__init__(
            path=service.weights,
            network=None,
            type=InferType.OTHERS,
            labels=None,
            dimension=3,
            description=service.description,
            input_key="image",
            output_label_key="pred",
            output_json_key="result",
            config={"num_samples": service.inferer.num_samples, "seed": service.inferer.seed},
            load_strict=True,
            preload=preload,
        )

    def info(self) -> dict[str, Any]:
        info = super().info()
        info.update({"inputs": list(self.service.inputs), "target": self.service.target, "output": "image"})
        return info

    def __call__(self, request: dict[str, Any], callbacks: dict | None = None) -> tuple[str | None, dict]:
        try:
            return super().__call__(request, callbacks)
        except DataError as err:
            raise MONAILabelException(MONAILabelError.INVALID_INPUT, str(err)) from None
        except UserError as err:  # weights that do not fit, an unwritable output, ...: the one error root
            raise MONAILabelException(MONAILabelError.INFERENCE_ERROR, str(err)) from None

    def pre_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        return [FindStudyd(self.service.inputs, self.datastore)]

    def post_transforms(self, data: dict[str, Any] | None = None) -> Sequence[Callable]:
        return []

    def _get_network(self, device: str, data: dict[str, Any] | None) -> Any:
        return self.service.networks(device)[0]

    def run_inferer(self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda") -> dict[str, Any]:
        study: Study = data["study"]
        seed = self.service.effective_seed(data.get("seed", "default"))
        data["seed"] = seed
        data[self.output_label_key] = self.service.synthesize(study, device, data.get("num_samples"), seed)
        return data

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[str, dict]:
        return self.service.write_result(data[self.output_label_key], data.get("seed"))

    def clear(self) -> None:
        self.service.clear()

    def clear_cache(self) -> None:
        self.service.clear()
