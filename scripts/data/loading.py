"""Load the NIfTI volumes of one subject with MONAI's ``LoadImaged``, turning every failure into a ``DataError``.

Each key is loaded on its own so an unreadable file is named in the error. Arrays come out channel-first,
``(1, X, Y, Z)`` in the file's voxel order (MONAI/nibabel convention: ``data[0, :, :, z]`` is axial slice ``z`` of a
file stored axially), as float64 by default so the reference's float64 pre-processing is reproduced exactly.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.transforms import EnsureChannelFirst, LoadImaged, MapTransform
from monai.transforms.io.array import SUPPORTED_READERS

from .errors import DataError

__all__ = ["LoadSubjectd", "READERS", "subject_id", "filename_of"]

#: Short reader names accepted besides MONAI's class names.
READERS: dict[str, str] = {"nibabel": "NibabelReader", "itk": "ITKReader"}


def subject_id(data: Mapping[Hashable, Any], subject_key: str = "subject") -> str:
    """A printable subject id for error messages (falls back to the first file's folder name)."""
    if data.get(subject_key):
        return str(data[subject_key])
    for value in data.values():
        if isinstance(value, str) and os.sep in value:
            return os.path.basename(os.path.dirname(value)) or value
    return "<unknown subject>"


def filename_of(img: Any, fallback: str = "<in-memory array>") -> str:
    """The file an image was read from, from MONAI's metadata."""
    meta = getattr(img, "meta", None) or {}
    name = meta.get("filename_or_obj")
    return str(name) if name else fallback


def _nibabel_cause(path: str) -> Exception | None:
    """The specific error nibabel gives for an unreadable file (MONAI only says "no suitable reader")."""
    try:
        img = nib.load(path)
        np.asanyarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - we want whatever nibabel reports
        return exc
    return None


class LoadSubjectd(MapTransform):
    """Load required contrasts and optional masks of one datalist item as ``(1, X, Y, Z)`` MetaTensors.

    Args:
        keys: contrast keys that must be present (e.g. a task's inputs and target).
        optional_keys: keys loaded only when the item has them (``lesion``, ``brain_mask``).
        reader: ``"nibabel"`` (default), ``"itk"``, or any MONAI reader name/class.
        dtype: array dtype; float64 reproduces the reference's ``get_fdata()`` exactly.
        subject_key: item key holding the subject id (used in messages).
        drop_keys: item entries to remove instead of loading (e.g. the target at inference, masks when unused),
            so later transforms never meet a bare file path under a key they process.
    """

    def __init__(
        self,
        keys: KeysCollection,
        optional_keys: Sequence[str] = ("lesion", "brain_mask"),
        reader: str | type | None = "nibabel",
        dtype: Any = np.float64,
        subject_key: str = "subject",
        drop_keys: Sequence[str] = (),
    ) -> None:
        super().__init__(keys, allow_missing_keys=False)
        self.drop_keys = tuple(k for k in drop_keys if k not in self.keys)
        self.optional_keys = tuple(k for k in optional_keys if k not in self.keys and k not in self.drop_keys)
        self.reader = READERS.get(reader, reader) if isinstance(reader, str) else reader
        if isinstance(self.reader, str) and self.reader.lower() not in SUPPORTED_READERS:
            raise DataError(f"--reader {reader!r} is not a reader; use {' or '.join(READERS)} (or a MONAI reader name)")
        self.dtype = dtype
        self.subject_key = subject_key
        all_keys = (*self.keys, *self.optional_keys)
        self._loader = LoadImaged(
            keys=all_keys, reader=self.reader, dtype=dtype, image_only=True, allow_missing_keys=True
        )
        self._channel_first = EnsureChannelFirst(channel_dim="no_channel")

    def _load_one(self, key: str, path: Any, sid: str) -> Any:
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise DataError(f"subject {sid}: entry {key!r} must be a file path, got {path!r}")
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise DataError(f"{path}: file not found ({key!r} of subject {sid})")
        try:
            img = self._loader({key: path})[key]
        except Exception as exc:  # noqa: BLE001 - any reader failure means the file is unusable
            cause = _nibabel_cause(path) or exc
            msg = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else ""
            raise DataError(f"{path}: cannot be read as an image ({type(cause).__name__}: {msg})") from None
        if img.ndim == 4 and img.shape[-1] == 1:
            img = img[..., 0]
        if img.ndim != 3:
            kind = "4D (time series or multi-channel)" if img.ndim == 4 else f"{img.ndim}D"
            raise DataError(
                f"{path}: {kind} image with shape {tuple(img.shape)}; expected one 3D volume per contrast "
                f"({key!r} of subject {sid})"
            )
        return self._channel_first(img)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = {k: v for k, v in data.items() if k not in self.drop_keys}
        sid = subject_id(data, self.subject_key)
        for key in self.keys:
            if key not in d or d[key] in (None, ""):
                present = sorted(str(k) for k in d if k != self.subject_key)
                raise DataError(f"subject {sid}: no {key!r} file in the datalist item (entries present: {present})")
            d[key] = self._load_one(key, d[key], sid)
        for key in self.optional_keys:
            if d.get(key) not in (None, ""):
                d[key] = self._load_one(key, d[key], sid)
            else:
                d.pop(key, None)
        return d
