"""MU-Diff contrast synthesis as a MONAI Label service, in plain Python (MONAI Label itself is not imported here).

MONAI Label sends one image per request, but MU-Diff needs three contrasts of one subject. This module holds what
the MONAI Label app (``monailabel_app/``) needs, importable and testable without MONAI Label installed:

- ``match_study`` / ``find_study``: the request's image -> the subject's input files. The subject is the part of the
  image's name before its first contrast token (``BraTS-GLI-00001-000-t2f`` -> ``BraTS-GLI-00001-000``,
  ``TCGA-DU-7294_fla_bet`` -> ``TCGA-DU-7294``), or the folder's name when the name starts with the contrast
  (``patient07/FLAIR_brain.nii.gz``). Each input contrast is then the one image beside it of the same subject whose
  first contrast token (after the subject) names that contrast, with the usual aliases (t1/t1n/t1w, t1ce/t1c/t1gd/
  t1post, t2/t2w, flair/fla/t2f). Explicit files per contrast can be given instead.
- ``SynthesisService``: one configured model (``configs/inference.yaml`` plus overlays and overrides) with weights
  loaded per device, that synthesizes a ``Study`` and writes the result file MONAI Label returns.
- ``parse_conf``: the app's ``--conf key value`` pairs -> the service's settings.
- ``make_studies`` (also ``python -m scripts monailabel_studies``): lays a datalist split out as a flat MONAI Label
  studies folder, ``<subject>_<contrast>.nii.gz``.

See docs/monailabel.md.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from scripts.cli_args import parse_int, parse_list
from scripts.data import DataError, load_datalist, resolve_task
from scripts.data.contrasts import CONTRAST_ALIASES, canonical_contrast
from scripts.data.io_utils import save_nifti, staged_files
from scripts.data.naming import parse_result_name
from scripts.inference.errors import InferenceError
from scripts.inference.options import INFERENCE_OPTIONS, PATH_KEYS
from scripts.inference.stack import VolumeInferer
from scripts.inference.synthesize import BUNDLE_ROOT, load_config
from scripts.inference.synthesizer import Synthesizer, config_components
from scripts.inference.volume import VolumeSynthesis
from scripts.inference.writer import reference_header, synthesis_image, write_synthesis

__all__ = [
    "CONF_KEYS",
    "DEFAULT_CONFIGS",
    "KNOWN_CONTRASTS",
    "ServiceSettings",
    "Study",
    "SynthesisService",
    "find_study",
    "image_stem",
    "make_studies",
    "match_study",
    "parse_conf",
    "subject_of",
]

logger = logging.getLogger(__name__)

#: canonical contrast names recognized as name tokens (plus any contrast of the configured task)
KNOWN_CONTRASTS: frozenset[str] = frozenset({*CONTRAST_ALIASES, "dwi", "adc"})
DEFAULT_CONFIGS: tuple[str, ...] = ("configs/inference.yaml",)
#: app ``--conf`` key -> inference config key it overrides (values are read as YAML scalars: 8, true, null)
CONF_KEYS: dict[str, str] = INFERENCE_OPTIONS  # the command line's option names, one table
#: app ``--conf`` keys of the service itself (the rest of MONAI Label's keys are left to MONAI Label)
_SERVICE_KEYS = ("config_file", "output_dir", "preload")

_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_TOKEN = re.compile(r"[^_\-.]+")


# ---------------------------------------------------------------------------------------------------------------
# request image -> the subject's input files


@dataclass(frozen=True)
class Study:
    """One subject's input files for a synthesis: ``files`` maps each input contrast to its NIfTI path."""

    subject: str
    files: dict[str, str]
    source: str = ""  # where the files were found, e.g. "in the datastore"

    def item(self) -> dict[str, str]:
        """The datalist item the inference pipeline reads."""
        return {"subject": self.subject, **self.files}


def image_stem(name: str) -> str:
    """File or image-id name without folder and NIfTI extension (``a/b/S1_t1.nii.gz`` -> ``S1_t1``)."""
    return _NIFTI.sub("", os.path.basename(name))


def _first_contrast(text: str, known: frozenset[str]) -> tuple[int, str] | None:
    """(character offset, canonical contrast) of the first token of ``text`` that names a known contrast."""
    for match in _TOKEN.finditer(text):
        name = canonical_contrast(match.group())
        if name in known:
            return match.start(), name
    return None


def subject_of(stem: str, known: frozenset[str] = KNOWN_CONTRASTS) -> str | None:
    """The subject part of an image name: everything before its first contrast token, without the separator.

    None when the name has no contrast token or starts with one (then the folder names the subject)."""
    hit = _first_contrast(stem, known)
    if hit is None:
        return None
    prefix = stem[: hit[0]].rstrip("_-.")
    return prefix or None


def _remainder(stem: str, subject: str) -> str | None:
    """The part of ``stem`` after ``subject`` and a separator, or None when the name is not the subject's."""
    if stem.startswith(subject) and len(stem) > len(subject) and stem[len(subject)] in "_-.":
        return stem[len(subject) + 1 :]
    return None


def _leading_contrast(text: str, known: frozenset[str]) -> str | None:
    """The canonical contrast named by the first token of ``text``, or None."""
    match = _TOKEN.match(text)
    name = canonical_contrast(match.group()) if match else None
    return name if name in known else None


def _check_subject(subject: str, image: str) -> str:
    if not subject or "/" in subject or os.sep in subject or subject in (".", ".."):
        raise DataError(f"image {image}: {subject!r} cannot be used as a subject id (it names the output file)")
    return subject


def match_study(
    image: str,
    candidates: Mapping[str, str],
    inputs: Sequence[str],
    subject: str | None = None,
    folder_name: str | None = None,
    explicit: Mapping[str, str] | None = None,
    where: str = "",
) -> Study:
    """Find the subject's input files among ``candidates`` (image name without extension -> path).

    Args:
        image: name (or path) of the request's image; it names the subject unless ``subject`` is given.
        candidates: the images beside it (its folder's NIfTI files, or the datastore's images).
        inputs: input contrasts of the task, in channel order.
        subject: the subject id, when the image's name does not start with it.
        folder_name: the image's folder name (subject-per-folder layouts: ``patient07/FLAIR_....nii.gz``).
        explicit: files already chosen for some contrasts (they win over name matching).
        where: a description of the candidates' location, for error messages.

    Raises ``DataError`` naming the image, the contrast and the files seen when a contrast has no file or several.
    """
    stem = image_stem(image)
    known = frozenset({*KNOWN_CONTRASTS, *(canonical_contrast(c) for c in inputs)})
    chosen = {c: str(p) for c, p in (explicit or {}).items() if c in inputs}
    missing = [c for c in inputs if c not in chosen]
    sid = subject or subject_of(stem, known)
    if sid is None and folder_name and _leading_contrast(stem, known) is not None:
        sid = folder_name  # the name starts with its contrast: one folder per subject
    if sid is None:
        if missing:
            raise DataError(
                f"image {image}: cannot tell its subject, the name has no contrast token before which the subject "
                f"id stands (tokens like {sorted(CONTRAST_ALIASES['flair'])}); name the files "
                "<subject>_<contrast>.nii.gz, or give the request params 'subject' (and 'inputs' for files named "
                "otherwise)"
            )
        sid = stem  # every input given explicitly: the image only names the output
    sid = _check_subject(str(sid), image)
    # a file is the subject's when the subject and a separator are followed by a contrast token, or, in a folder
    # named after the subject, when its name starts with a contrast token
    members: dict[str, str] = {}
    for name in candidates:
        if parse_result_name(Path(candidates[name]).name) is not None:  # our own outputs are never inputs
            continue
        rest = _remainder(name, sid)
        contrast = _leading_contrast(rest, known) if rest is not None else None
        if contrast is None and folder_name == sid:
            contrast = _leading_contrast(name, known)
        if contrast is not None:
            members[name] = contrast
    for contrast in missing:
        wanted = canonical_contrast(contrast)
        hits = sorted(n for n, named in members.items() if named == wanted)
        if not hits:
            raise DataError(
                f"subject {sid}: no {contrast!r} image{where} (the subject's images: {sorted(members) or 'none'}); "
                f"name it <subject>_{contrast}.nii.gz or give it in the request params 'inputs'"
            )
        if len(hits) > 1:
            raise DataError(
                f"subject {sid}: several {contrast!r} images{where}: {hits}; keep one, or give the file in the request "
                "params 'inputs'"
            )
        chosen[contrast] = str(candidates[hits[0]])
    return Study(sid, {c: chosen[c] for c in inputs}, where.strip())


def _folder_candidates(folder: Path) -> dict[str, str]:
    return {image_stem(p.name): str(p) for p in sorted(folder.iterdir()) if p.is_file() and _NIFTI.search(p.name)}


def find_study(
    image: str | os.PathLike,
    inputs: Sequence[str],
    subject: str | None = None,
    explicit: Mapping[str, str] | None = None,
) -> Study:
    """``match_study`` for an image file: the candidates are the NIfTI files of its own folder (not sub-folders,
    so labels a MONAI Label datastore keeps in ``labels/`` never count)."""
    path = Path(image)
    if not path.is_file():
        raise DataError(f"image {path} not found")
    folder = path.parent
    return match_study(
        str(path), _folder_candidates(folder), inputs, subject, folder.resolve().name, explicit, f" in {folder}"
    )


# ---------------------------------------------------------------------------------------------------------------
# app configuration


@dataclass
class ServiceSettings:
    """What ``SynthesisService`` is built from (see ``parse_conf``)."""

    config_files: list[str] = field(default_factory=lambda: [str(BUNDLE_ROOT / c) for c in DEFAULT_CONFIGS])
    overrides: dict[str, Any] = field(default_factory=dict)
    output_dir: str | None = None
    preload: bool = False


def _bundle_path(value: str) -> str:
    path = Path(os.path.expanduser(value))
    return str(path if path.is_absolute() else BUNDLE_ROOT / path)


def _scalar(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        return value


def _bool(key: str, value: Any) -> bool:
    parsed = _scalar(value)
    if isinstance(parsed, bool):
        return parsed
    raise DataError(f"--conf {key}: expected true or false, got {value!r}")


def _model_weights(models: Sequence[str]) -> str:
    """``--conf models mudiff_flair`` (the MONAI Label convention): the shipped weights of that synthesis."""
    from scripts.inference.demo import DEMO_TASKS, demo_weights

    names = {f"mudiff_{resolve_task(task).target}": task for task in DEMO_TASKS}
    unknown = [m for m in models if m not in names]
    if unknown or len(models) != 1:
        problem = f"unknown model(s) {unknown}" if unknown else f"one model per app, got {list(models)}"
        raise DataError(
            f"--conf models: {problem}; this app serves one of {', '.join(names)} (or 'all': the weights' own task)"
        )
    return str(demo_weights(names[models[0]]).mudiff)


def parse_conf(conf: Mapping[str, Any] | None) -> ServiceSettings:
    """Read the app's ``--conf`` pairs (all strings when they come from ``monailabel start_server``).

    ``config_file``: comma-separated config files (default ``configs/inference.yaml``; the network follows the
    weights' own record); ``output_dir``: also keep every synthesis there
    (``<subject>_syn_<contrast>.nii.gz``, plus ``_unc_`` for several samples); ``preload``: load the weights at start;
    ``models``: ``mudiff_<contrast>`` selects the shipped weights of that synthesis (the MONAI Label convention;
    ``all`` or absent: the configured weights); and the ``CONF_KEYS`` overrides (``weights``, ``task``, ``slice_mode``,
    ``num_samples``, ...). Relative paths are
    taken from the bundle root. Other keys belong to MONAI Label and are left alone.
    """
    conf = dict(conf or {})
    settings = ServiceSettings()
    files = conf.get("config_file")
    if files:
        parsed = parse_list(files, "conf config_file", DataError)
        if not parsed:
            raise DataError(f"--conf config_file: expected comma-separated files, got {files!r}")
        settings.config_files = [_bundle_path(f) for f in parsed]
    for f in settings.config_files:
        if not os.path.isfile(f):
            raise DataError(f"--conf config_file: {f} not found")
    for key, config_key in CONF_KEYS.items():
        if key in conf:
            value = _scalar(conf[key])
            if config_key in PATH_KEYS and value is not None:  # relative: from the bundle root
                value = _bundle_path(str(conf[key]))
            settings.overrides[config_key] = value
    models = [m for m in parse_list(conf.get("models"), "conf models", DataError) if m != "all"]
    if models:
        settings.overrides.setdefault("ckpt_path", _model_weights(models))
    if conf.get("output_dir"):
        settings.output_dir = _bundle_path(str(conf["output_dir"]))
    if "preload" in conf:
        settings.preload = _bool("preload", conf["preload"])
    return settings


def _request_int(name: str, value: Any, minimum: int | None, allow_none: bool = False) -> int | None:
    """A request parameter that must be an integer (clients may send numbers as strings; ``null`` where allowed)."""
    if allow_none and (value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none"))):
        return None
    return parse_int(value, name, DataError, minimum, label=f"request parameter {name!r}")


# ---------------------------------------------------------------------------------------------------------------
# the synthesis service


class SynthesisService(Synthesizer):
    """One MU-Diff model ready for synthesis requests: a ``Synthesizer`` built from the inference config (weights
    loaded per device, the pipeline, the inferer) plus what MONAI Label needs (model name, request parameters, the
    result file it returns).

    Args:
        config_files: inference config and overlays (``configs/inference.yaml`` [+ overlays]).
        overrides: config key -> value (``ckpt_path``, ``task``, ``num_samples``, ...).
        output_dir: when set, every synthesis is also written there (atomically) with the evaluation's file names.
        preload: load the weights now (on the CPU) instead of at the first request.

    Thread safety: the server may run requests in parallel threads; networks are loaded once per device under a lock
    (and reloaded when the weights file changes), every request gets its own ``VolumeInferer``.
    """

    def __init__(
        self,
        config_files: Sequence[str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        output_dir: str | None = None,
        preload: bool = False,
    ) -> None:
        files = list(config_files) if config_files else [str(BUNDLE_ROOT / c) for c in DEFAULT_CONFIGS]
        self.parser = load_config(files, {**dict(overrides or {}), "device": torch.device("cpu")})
        parser = self.parser
        self.task = parser.get_parsed_content("task_def")
        weights = str(parser.get_parsed_content("ckpt_path"))
        if not os.path.isfile(weights):  # say so at start-up, not as a 500 on the first request
            raise InferenceError(
                f"{weights}: weights file not found; set --conf weights <file> (or --conf models "
                "mudiff_<contrast> for shipped weights); python -m scripts demo --retrain true trains them"
            )
        super().__init__(**config_components(parser))
        self.slice_mode = parser.get_parsed_content("slice_mode")
        self.output_dir = output_dir
        if preload:
            self.networks("cpu")

    @property
    def inferer(self) -> VolumeInferer:
        """The configured ``VolumeInferer`` (the request defaults: ``num_samples``, ``seed``)."""
        return self.predictor

    @property
    def model_name(self) -> str:
        """The MONAI Label model name of this synthesis (``mudiff_t1ce``)."""
        return f"mudiff_{self.target}"

    @property
    def description(self) -> str:
        return (
            f"MU-Diff: synthesize {self.target} from {', '.join(self.inputs)} ({self.slice_mode} slice mode); "
            f"output in [0, 1] on the {self.inputs[0]} grid"
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(task={self.task.describe()}, "
            f"weights={self.weights}, slice_mode={self.slice_mode}, inferer={self.inferer!r})"
        )

    def effective_seed(self, seed: Any = "default") -> int | None:
        """The request's seed: ``"default"`` = the config's, an integer, or None / ``null`` for unseeded draws."""
        return self.inferer.seed if seed == "default" else _request_int("seed", seed, None, allow_none=True)

    def synthesize(  # type: ignore[override]
        self, study: Study, device: str | torch.device = "cpu", num_samples: Any = None, seed: Any = "default"
    ) -> VolumeSynthesis:
        """Synthesize the target contrast for ``study``; the result lies on the first input's grid, in [0, 1]."""
        samples = None if num_samples is None else _request_int("num_samples", num_samples, 1)
        return super().synthesize(study.item(), device, samples, self.effective_seed(seed))

    def _record(self, result: VolumeSynthesis, seed: Any) -> dict[str, Any]:
        return {
            **self.provenance,
            "seed": seed,
            "subject": result.subject,
            "contrast": result.contrast,
            "coverage": result.coverage.to_dict(),
            "num_samples": result.num_samples,
            "grid_file": result.grid_file,
            "inputs": dict(result.input_files),
            "source": "MONAI Label app (monailabel_app)",
        }

    def write_result(self, result: VolumeSynthesis, seed: Any = None) -> tuple[str, dict[str, Any]]:
        """Write the synthesis to a new temporary NIfTI (MONAI Label sends it and then deletes it) and, with
        ``output_dir``, keep a copy there. Returns (file, result JSON)."""
        record = self._record(result, seed)
        cov = result.coverage
        descrip = cov.describe(result.contrast)
        image = synthesis_image(
            result.synthesis, result.affine, descrip, reference_header(result.grid_file, result.affine), record
        )
        fd, path = tempfile.mkstemp(prefix=f"{result.subject}_syn_{result.contrast}_", suffix=".nii.gz")
        os.close(fd)
        try:
            save_nifti(path, image)
        except BaseException:
            os.remove(path)
            raise
        saved = {}
        if self.output_dir:
            saved = {k: str(v) for k, v in write_synthesis(result, self.output_dir, record).items()}
        inside = result.synthesis[result.brain_mask] if result.brain_mask is not None else result.synthesis
        info = {
            "subject": result.subject,
            "contrast": result.contrast,
            "task": self.task.name,
            "inputs": dict(result.input_files),
            "grid_file": result.grid_file,
            "shape": [int(s) for s in result.shape],
            "affine": np.asarray(result.affine, dtype=float).round(6).tolist(),
            "value_range": [0.0, 1.0],
            "units": "normalized intensity (0 = background), not scanner units",
            "coverage": cov.to_dict(),
            "descrip": descrip,
            "num_samples": result.num_samples,
            "seed": seed,
            "weights": self.weights,
            "slice_mode": self.slice_mode,
            "mean_in_brain": float(inside.mean()) if inside.size else 0.0,
            "saved": saved,
        }
        return path, info


# ---------------------------------------------------------------------------------------------------------------
# datalist -> studies folder


def make_studies(
    datalist: str,
    out_dir: str,
    split: str = "test",
    contrasts: Sequence[str] | str | None = None,
    copy_files: bool = False,
) -> list[str]:
    """Lay the subjects of a datalist split out as a flat MONAI Label studies folder.

    Each contrast file of each item becomes ``<out_dir>/<subject>_<contrast>.nii[.gz]``: a symbolic link to the
    original (default) or a copy (``copy_files``). ``contrasts`` defaults to every contrast key of the items (t1,
    t1ce, t2, flair, dwi, adc). Existing files are kept when they already are that file, otherwise refused. Inputs
    are never modified. Returns the paths created or kept.
    """
    items = load_datalist(datalist, split)
    wanted = None
    if contrasts is not None:
        wanted = parse_list(contrasts, "contrasts", DataError)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done: list[str] = []
    for item in items:
        sid = _check_subject(str(item.get("subject") or ""), datalist)
        keys = wanted or [k for k in item if canonical_contrast(k) in KNOWN_CONTRASTS]
        for key in keys:
            src = item.get(key)
            if not src:
                raise DataError(f"{datalist}: subject {sid} has no {key!r} entry")
            if not os.path.isfile(src):
                raise DataError(f"{datalist}: subject {sid}: {src} ({key!r}) not found")
            ext = _NIFTI.search(src)
            if ext is None:
                raise DataError(f"{datalist}: subject {sid}: {src} is not a NIfTI file (.nii or .nii.gz)")
            target = out / f"{sid}_{key}{ext.group().lower()}"
            if os.path.lexists(target):
                if os.path.realpath(target) == os.path.realpath(src) or (
                    copy_files and target.is_file() and _same_bytes(target, Path(src))
                ):
                    done.append(str(target))
                    continue
                raise DataError(f"{target} already exists and is not {src}; choose an empty out_dir")
            with staged_files({0: target}) as temps:
                if copy_files:
                    shutil.copyfile(src, temps[0])
                else:
                    os.remove(temps[0])
                    os.symlink(os.path.abspath(src), temps[0])
            done.append(str(target))
    return done


def _same_bytes(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            chunk_a, chunk_b = fa.read(1 << 20), fb.read(1 << 20)
            if chunk_a != chunk_b:
                return False
            if not chunk_a:
                return True


SAMPLE_DATALIST = str(BUNDLE_ROOT / "sample_data" / "datalist.json")
