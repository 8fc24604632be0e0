r"""Ask a running MU-Diff MONAI Label server for a synthesis and save it as NIfTI, through MONAI Label's own client.

    # a study already in the server's studies folder (any of its contrasts names the subject)
    python -m scripts monailabel_client --server http://127.0.0.1:8000 --image BraTS_001_t2 --out t1ce.nii.gz
    # send a study from this machine: its input contrasts are uploaded, then synthesized
    python -m scripts monailabel_client --server http://127.0.0.1:8000 \
        --files "BraTS_001_flair.nii.gz,BraTS_001_t2.nii.gz,BraTS_001_t1.nii.gz" --out t1ce.nii.gz

The model defaults to the server's only MU-Diff model (``mudiff_<contrast>``); ``--params`` passes request
parameters (``"{'num_samples': 4, 'seed': 1}"``). The result is written atomically and never over an input file.
"""

from __future__ import annotations

from typing import Any

from scripts.cli import run_fire
from scripts.cli_args import parse_list
from scripts.monailabel_client import MONAILabelRequestError, request_synthesis

__all__ = ["main", "monailabel_client"]


def monailabel_client(
    server: str = "http://127.0.0.1:8000",
    out: str = "synthesis.nii.gz",
    image: str | None = None,
    files: Any = None,
    model: str | None = None,
    params: Any = None,
) -> None:
    """Request one synthesis and write it to ``out``."""
    reply = request_synthesis(server, out, image, parse_list(files, "files", MONAILabelRequestError), model, params)
    subject = reply.get("subject", "?")
    print(f"{out}: synthesis of subject {subject} ({reply.get('target', '')}) from {server}")


def main(argv: list[str] | None = None) -> int:
    return run_fire(monailabel_client, argv, serialize=lambda _: None)
