"""Ask a running MU-Diff MONAI Label server for a synthesis through MONAI Label's own client and save it as NIfTI
(command line: ``python -m scripts monailabel_client``).

The model defaults to the server's only MU-Diff model (``mudiff_<contrast>``); ``params`` are request parameters
(``{'num_samples': 4, 'seed': 1}``). The result is written atomically and never over an input file.
"""

from __future__ import annotations

import ast
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from scripts.data.io_utils import atomic_write
from scripts.errors import UserError

__all__ = ["MONAILabelRequestError", "request_synthesis"]

_NIFTI = (".nii", ".nii.gz")


class MONAILabelRequestError(UserError, RuntimeError):
    """The server refused the request or cannot be reached; the message carries its reason."""


def _image_id(path: str) -> str:
    name = os.path.basename(path)
    for suffix in _NIFTI:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    raise MONAILabelRequestError(f"{path}: not a NIfTI file (.nii or .nii.gz)")


def _params(value: Any) -> dict[str, Any]:
    if value is None or isinstance(value, Mapping):
        return dict(value or {})
    try:
        parsed = ast.literal_eval(str(value))
    except (ValueError, SyntaxError):
        parsed = None
    if not isinstance(parsed, dict):
        raise MONAILabelRequestError(f"--params must be a dict like \"{{'num_samples': 4}}\", got {value!r}")
    return parsed


def _model(client: Any, model: str | None) -> str:
    models = {name: m for name, m in client.info().get("models", {}).items() if name.startswith("mudiff_")}
    if model is None:
        if len(models) != 1:
            raise MONAILabelRequestError(f"the server offers {sorted(models) or 'no MU-Diff model'}; choose --model")
        return next(iter(models))
    if model not in models:
        raise MONAILabelRequestError(f"--model {model}: the server offers {sorted(models)}")
    return model


def request_synthesis(
    server: str,
    out: str,
    image: str | None = None,
    files: Sequence[str] | None = None,
    model: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Upload ``files`` (if given), request the synthesis of ``image`` (default: the first file's id) and write it to
    ``out``; returns the server's reply parameters (subject, slices, settings)."""
    from monailabel.client import MONAILabelClient
    from monailabel.client.client import MONAILabelClientException

    uploads = list(files or [])
    if not image and not uploads:
        raise MONAILabelRequestError("give --image (a study on the server) or --files (contrasts to send)")
    if not out.endswith(_NIFTI):
        raise MONAILabelRequestError(f"--out {out}: the synthesis is written as NIfTI; end the name in .nii.gz")
    for path in uploads:
        if not os.path.isfile(path):
            raise MONAILabelRequestError(f"--files: {path} not found")
        if os.path.exists(out) and os.path.samefile(path, out):
            raise MONAILabelRequestError(f"--out {out} is one of the --files; choose another name")
    with tempfile.TemporaryDirectory(prefix="mudiff_client_") as tmp:
        client = MONAILabelClient(server.rstrip("/"), tmpdir=tmp)
        try:
            name = _model(client, model)
            for path in uploads:
                client.upload_image(path, image_id=_image_id(path))
            result, reply = client.infer(name, image or _image_id(uploads[0]), _params(params))
        except MONAILabelClientException as err:
            raise MONAILabelRequestError(f"{server}: {err.msg}") from None
        except ConnectionError as err:
            raise MONAILabelRequestError(f"{server}: cannot connect ({err}); is the server running?") from None
        if not result or not os.path.isfile(result):
            raise MONAILabelRequestError(f"{server}: the reply holds no image (model {name})")
        atomic_write(out, lambda target: shutil.copyfile(result, target))
    return dict(reply or {})
