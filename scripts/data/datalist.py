"""Dataset discovery and datalists: a folder of NIfTI files -> a Decathlon-style JSON with train/val/test splits.

Supported layouts (``layout=``):
- ``brats2019``: ``[HGG|LGG/]BraTS19_<id>/BraTS19_<id>_{t1,t1ce,t2,flair,seg}.nii[.gz]`` (any ``BraTS<yy>_`` prefix,
  in any case: BraTS 2018's ``Brats18_<id>`` too);
- ``brats2023``: ``BraTS-<cohort>-<n>-<m>/BraTS-...-{t1n,t1c,t2w,t2f,seg}.nii.gz``;
- ``isles2015``: SISS cases ``<n>/VSD.Brain.XX.O.MR_{Flair,T1,T2,DWI}.<id>/<same>.nii`` and ``VSD.Brain.XX.O.OT.<id>``;
- ``generic``: one folder per subject, each key found by a glob pattern (``{"t1": "*T1w.nii.gz", ...}``).
Keys are the canonical contrasts (t1, t1ce, t2, flair, dwi, adc) plus ``lesion`` and ``brain_mask``.

With BraTS2019 or ISLES2015 data the paper's split lists (``scripts/data/splits``) reproduce its splits (BraTS
subjects are matched by ``<id>``, whatever the year prefix); anything else gets a seeded random split by subject.
``split=`` may also name a fixed split file (JSON ``{"training": [ids], "validation": [...], "test": [...]}``, such as
``scripts/data/splits/brats18_demo.json``, the demo model's split). Item paths are stored relative to the JSON file
when possible.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import yaml

from .errors import DataError
from .io_utils import ensure_writable_dir, write_json
from .tasks import MASK_KEYS

__all__ = [
    "LAYOUTS",
    "SPLIT_KEYS",
    "SPLITS_DIR",
    "detect_layout",
    "discover_subjects",
    "paper_split_lists",
    "read_split_file",
    "split_subjects",
    "prepare_datalist",
    "load_datalist",
]

logger = logging.getLogger(__name__)

LAYOUTS: tuple[str, ...] = ("auto", "brats2019", "brats2023", "isles2015", "generic")
SPLIT_KEYS: tuple[str, ...] = ("training", "validation", "test")
SPLITS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "splits")
NON_PATH_KEYS: frozenset[str] = frozenset({"subject"})

_NII = (".nii.gz", ".nii")
_BRATS19_DIR = re.compile(r"^BraTS\d*_.+", re.IGNORECASE)
_BRATS_PREFIX = re.compile(r"^BraTS\d*_", re.IGNORECASE)
_BRATS19_KEYS = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "lesion": "seg"}
_BRATS23_DIR = re.compile(r"^BraTS-[A-Za-z]+-\d+-\d+$")
_BRATS23_KEYS = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "lesion": "seg"}
_VSD = re.compile(r"^VSD\.Brain\.XX\.O\.(?:MR_(?P<contrast>[A-Za-z0-9]+)|(?P<ot>OT))\.(?P<id>\d+)")
_ISLES_KEYS = {"flair": "flair", "t1": "t1", "t2": "t2", "dwi": "dwi", "t1c": "t1ce", "adc": "adc"}
_PAPER_LISTS = {"brats2019": "brats", "isles2015": "isles"}


# ---------------------------------------------------------------------------------------------------------------
# discovery
def _nifti(folder: str, stem: str) -> str | None:
    for ext in _NII:
        path = os.path.join(folder, stem + ext)
        if os.path.isfile(path):
            return path
    return None


def _walk_dirs(root: str, max_depth: int = 4) -> list[str]:
    """Every directory below ``root`` up to ``max_depth`` levels (sorted, symlinks followed)."""
    out = []
    base = root.rstrip(os.sep).count(os.sep)
    for cur, dirs, _ in os.walk(root, followlinks=True):
        dirs.sort()
        if cur.count(os.sep) - base >= max_depth:
            dirs[:] = []
        out.append(cur)
    return out


def detect_layout(data_dir: str) -> str:
    """Guess the layout of ``data_dir`` from its folder names; raises when nothing is recognised."""
    for d in _walk_dirs(data_dir):
        name = os.path.basename(d)
        if _BRATS19_DIR.match(name) and _nifti(d, f"{name}_t1"):
            return "brats2019"
        if _BRATS23_DIR.match(name) and _nifti(d, f"{name}-t1n"):
            return "brats2023"
        if _VSD.match(name):
            return "isles2015"
    raise DataError(
        f"{data_dir}: no BraTS2019, BraTS 2023 or ISLES2015 subjects recognised; for other data use "
        "layout='generic' with patterns={'t1': '*T1*.nii.gz', ...} (one folder per subject)"
    )


def _brats(data_dir: str, dir_re: re.Pattern, keys: Mapping[str, str], sep: str) -> list[dict[str, Any]]:
    items = []
    for d in _walk_dirs(data_dir):
        sid = os.path.basename(d)
        if d == data_dir or not dir_re.match(sid):
            continue
        item: dict[str, Any] = {"subject": sid}
        for key, suffix in keys.items():
            path = _nifti(d, f"{sid}{sep}{suffix}")
            if path:
                item[key] = path
        if len(item) > 1:
            items.append(item)
    return items


def _isles2015(data_dir: str) -> list[dict[str, Any]]:
    by_case: dict[str, dict[str, Any]] = {}
    for d in _walk_dirs(data_dir, max_depth=5):
        m = _VSD.match(os.path.basename(d))
        if not m:
            continue
        case = os.path.basename(os.path.dirname(d))
        files = sorted(f for f in os.listdir(d) if f.endswith(_NII) and not f.startswith("."))
        if not files:
            continue
        key = "lesion" if m.group("ot") else _ISLES_KEYS.get(m.group("contrast").lower(), m.group("contrast").lower())
        item = by_case.setdefault(case, {"subject": case})
        if key in item:
            raise DataError(f"{os.path.dirname(d)}: two {key!r} folders for case {case}")
        item[key] = os.path.join(d, files[0])
    return [by_case[k] for k in sorted(by_case, key=lambda s: (len(s), s))]


def _load_patterns(patterns: Mapping[str, str] | str | None) -> dict[str, str]:
    if patterns is None:
        raise DataError("layout='generic' needs patterns, e.g. {'t1': '*_T1.nii.gz', 't2': '*_T2.nii.gz'}")
    if isinstance(patterns, str):
        if os.path.isfile(patterns):
            with open(patterns, encoding="utf-8") as f:
                patterns = yaml.safe_load(f)
        else:
            try:
                patterns = json.loads(patterns)
            except json.JSONDecodeError as exc:
                raise DataError(f"patterns: neither a file nor JSON: {patterns!r} ({exc})") from None
    if not isinstance(patterns, Mapping) or not patterns:
        raise DataError(f"patterns must be a non-empty mapping key -> glob pattern, got {patterns!r}")
    return {str(k): str(v) for k, v in patterns.items()}


def _generic(data_dir: str, patterns: Mapping[str, str]) -> list[dict[str, Any]]:
    items = []
    for sid in sorted(os.listdir(data_dir)):
        folder = os.path.join(data_dir, sid)
        if sid.startswith(".") or not os.path.isdir(folder):
            continue
        item: dict[str, Any] = {"subject": sid}
        for key, pattern in patterns.items():
            found = sorted(glob.glob(os.path.join(folder, pattern), recursive=True))
            if len(found) > 1:
                names = [os.path.relpath(f, folder) for f in found]
                raise DataError(f"{folder}: pattern {pattern!r} for {key!r} matches several files {names}")
            if found:
                item[key] = found[0]
        if len(item) > 1:
            items.append(item)
    return items


def discover_subjects(
    data_dir: str,
    layout: str = "auto",
    patterns: Mapping[str, str] | str | None = None,
    required: Sequence[str] | None = None,
    on_missing: str = "error",
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """Find the subjects of ``data_dir``; returns ``(layout, complete items, skipped items)``.

    Args:
        layout: one of ``LAYOUTS``; ``auto`` detects BraTS2019/2023/ISLES2015 (``generic`` when patterns are given).
        patterns: generic layout: key -> glob (relative to a subject folder), a JSON string, or a YAML/JSON file.
        required: keys every subject must have (default: every contrast key of the layout, masks excluded).
        on_missing: ``"error"`` (default) or ``"skip"`` subjects lacking a required key.
    """
    if not os.path.isdir(data_dir):
        raise DataError(f"{data_dir}: dataset folder not found")
    if layout not in LAYOUTS:
        raise DataError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    if on_missing not in ("error", "skip"):
        raise DataError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    if layout == "auto":
        layout = "generic" if patterns is not None else detect_layout(data_dir)
    if layout == "brats2019":
        items, keys = _brats(data_dir, _BRATS19_DIR, _BRATS19_KEYS, "_"), list(_BRATS19_KEYS)
    elif layout == "brats2023":
        items, keys = _brats(data_dir, _BRATS23_DIR, _BRATS23_KEYS, "-"), list(_BRATS23_KEYS)
    elif layout == "isles2015":
        items = _isles2015(data_dir)
        keys = ["flair", "t1", "t2", "dwi"]
    else:
        pats = _load_patterns(patterns)
        items, keys = _generic(data_dir, pats), list(pats)
    if not items:
        raise DataError(f"{data_dir}: no subjects found (layout {layout!r}); is this the dataset root folder?")
    ids = [it["subject"] for it in items]
    dupes = sorted({s for s in ids if ids.count(s) > 1})
    if dupes:
        raise DataError(f"{data_dir}: subject ids found more than once: {dupes[:10]}")
    need = list(required) if required is not None else [k for k in keys if k not in MASK_KEYS]
    complete, skipped = [], []
    for it in items:
        missing = [k for k in need if k not in it]
        if missing:
            skipped.append({"subject": it["subject"], "missing": missing})
        else:
            complete.append(it)
    if skipped and on_missing == "error":
        lines = "; ".join(f"{s['subject']}: {s['missing']}" for s in skipped[:10])
        more = f" (and {len(skipped) - 10} more)" if len(skipped) > 10 else ""
        raise DataError(
            f"{data_dir}: {len(skipped)} subject(s) miss required files: {lines}{more}; "
            "pass on_missing='skip' to leave them out"
        )
    for s in skipped:
        logger.warning("skipping subject %s: missing %s", s["subject"], s["missing"])
    if not complete:
        raise DataError(f"{data_dir}: no subject has all of {need}")
    return layout, complete, skipped


# ---------------------------------------------------------------------------------------------------------------
# splits
def paper_split_lists(dataset: str, splits_dir: str | None = None) -> dict[str, list[str]]:
    """The paper's subject lists for ``dataset`` ("brats" or "isles") as {training, validation, test}."""
    folder = splits_dir or SPLITS_DIR
    out = {}
    for split, stem in zip(SPLIT_KEYS, ("train", "val", "test"), strict=True):
        path = os.path.join(folder, f"{dataset}_{stem}.list")
        if not os.path.isfile(path):
            raise DataError(f"{path}: split list not found")
        with open(path, encoding="utf-8") as f:
            out[split] = [line.strip() for line in f if line.strip()]
    return out


def _paper_id(subject: str) -> str:
    """The id the paper's lists are matched on: BraTS subjects without their year prefix (``Brats18_X`` and
    ``BraTS19_X`` are the same subject ``X``), other subjects unchanged."""
    return _BRATS_PREFIX.sub("", subject)


def read_split_file(path: str) -> dict[str, list[str]]:
    """A fixed split: JSON or YAML with ``training``, ``validation`` and ``test`` lists of subject ids (other keys,
    such as ``reason``, are documentation)."""
    try:
        with open(path, encoding="utf-8") as f:
            content = yaml.safe_load(f)  # JSON is YAML
    except FileNotFoundError:
        raise DataError(f"{path}: split file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a valid JSON/YAML split file ({exc})") from None
    if not isinstance(content, Mapping):
        raise DataError(f"{path}: a split file must map training/validation/test to lists of subject ids")
    out = {}
    for key in SPLIT_KEYS:
        ids = content.get(key, [])
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise DataError(f"{path}: {key!r} must be a list of subject ids, got {ids!r}")
        out[key] = ids
    seen = [i for ids in out.values() for i in ids]
    twice = sorted({i for i in seen if seen.count(i) > 1})
    if twice:
        raise DataError(f"{path}: subjects listed in more than one split: {twice}")
    return out


def _fixed_split(subjects: Sequence[str], lists: Mapping[str, list[str]], path: str) -> dict[str, list[str]]:
    present = set(subjects)
    absent = sorted(i for ids in lists.values() for i in ids if i not in present)
    if absent:
        raise DataError(f"{path}: subjects of the split file are not in the dataset folder: {absent[:10]}")
    listed = {i: k for k, ids in lists.items() for i in ids}
    out: dict[str, list[str]] = {k: [] for k in (*SPLIT_KEYS, "unused")}
    for s in subjects:
        out[listed.get(s, "unused")].append(s)
    return out


def split_subjects(
    subjects: Sequence[str],
    method: str = "auto",
    layout: str = "generic",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    splits_dir: str | None = None,
) -> tuple[str, dict[str, list[str]]]:
    """Assign subject ids to splits; returns ``(method used, {training, validation, test, unused})``.

    ``method``: ``auto`` (the paper's lists when they name any of the subjects, else ``random``), ``paper``,
    ``random``, ``test`` (every subject is a test subject: scoring a folder with trained weights), or the path of a
    fixed split file (``read_split_file``; method ``fixed``).
    """
    subjects = list(subjects)
    if method.endswith((".json", ".yaml", ".yml")):
        return "fixed", _fixed_split(subjects, read_split_file(method), method)
    if method == "test":
        return "test", {"training": [], "validation": [], "test": sorted(subjects), "unused": []}
    if method not in ("auto", "paper", "random"):
        raise DataError(f"split must be 'auto', 'paper', 'random', 'test' or a split file (.json), got {method!r}")
    if method in ("auto", "paper"):
        dataset = _PAPER_LISTS.get(layout)
        if dataset is None and method == "paper":
            raise DataError(f"no paper split for layout {layout!r} (only {', '.join(_PAPER_LISTS)})")
        if dataset is not None:
            lists = paper_split_lists(dataset, splits_dir)
            listed = {_paper_id(s): split for split, ids in lists.items() for s in ids}
            if any(_paper_id(s) in listed for s in subjects) or method == "paper":
                out: dict[str, list[str]] = {k: [] for k in (*SPLIT_KEYS, "unused")}
                for s in subjects:
                    out[listed.get(_paper_id(s), "unused")].append(s)
                n_missing = len(set(listed) - {_paper_id(s) for s in subjects})
                if n_missing:
                    logger.warning("%d subjects of the paper's %s split are not in the folder", n_missing, dataset)
                return "paper", out
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise DataError(f"bad split fractions val={val_fraction}, test={test_fraction}")
    n = len(subjects)
    n_val, n_test = round(n * val_fraction), round(n * test_fraction)
    if n >= 3:
        n_val = max(n_val, int(val_fraction > 0))
        n_test = max(n_test, int(test_fraction > 0))
    while n_val + n_test >= n and (n_val or n_test):
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    order = [sorted(subjects)[i] for i in np.random.default_rng(seed).permutation(n)]
    out = {
        "test": sorted(order[:n_test]),
        "validation": sorted(order[n_test : n_test + n_val]),
        "training": sorted(order[n_test + n_val :]),
        "unused": [],
    }
    return "random", {k: out[k] for k in (*SPLIT_KEYS, "unused")}


# ---------------------------------------------------------------------------------------------------------------
# datalist files
def _portable(item: Mapping[str, Any], base: str | None) -> dict[str, Any]:
    if base is None:
        return {
            k: (os.path.abspath(v) if k not in NON_PATH_KEYS and isinstance(v, str) else v) for k, v in item.items()
        }
    return {
        k: (os.path.relpath(os.path.abspath(v), base) if k not in NON_PATH_KEYS and isinstance(v, str) else v)
        for k, v in item.items()
    }


def prepare_datalist(
    data_dir: str,
    output: str | None = None,
    layout: str = "auto",
    patterns: Mapping[str, str] | str | None = None,
    split: str = "auto",
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    required: Sequence[str] | None = None,
    on_missing: str = "error",
    relative: bool = True,
    splits_dir: str | None = None,
) -> dict[str, Any]:
    """Discover the subjects of ``data_dir``, split them, and write the datalist JSON to ``output`` (atomically).

    Returns the datalist dict (with absolute paths when ``output`` is None). Relative item paths are relative to
    the JSON file's folder, so the folder pair can be moved together.
    """
    if output:  # before the folder is searched, not after
        ensure_writable_dir(
            os.path.dirname(os.path.abspath(output)), f"datalist {output}: its folder", "choose another --output"
        )
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    layout, items, skipped = discover_subjects(data_dir, layout, patterns, required, on_missing)
    method, groups = split_subjects(
        [it["subject"] for it in items], split, layout, val_fraction, test_fraction, seed, splits_dir
    )
    base = os.path.dirname(os.path.abspath(output)) if (output and relative) else None
    by_id = {it["subject"]: _portable(it, base) for it in items}
    datalist: dict[str, Any] = {
        "description": f"MU-Diff datalist for {data_dir}",
        "layout": layout,
        "split_method": method,
        "seed": seed if method == "random" else None,
        **({"split_file": os.path.abspath(split)} if method == "fixed" else {}),
        "num_subjects": {k: len(v) for k, v in groups.items()},
        **{k: [by_id[s] for s in groups[k]] for k in (*SPLIT_KEYS, "unused")},
        "skipped": skipped,
    }
    if output:
        write_json(output, datalist)
        logger.info("wrote %s: %s", output, datalist["num_subjects"])
    return datalist


def load_datalist(path: str | os.PathLike, split: str = "training") -> list[dict[str, Any]]:
    """Items of one split of a datalist JSON, with relative paths resolved against the JSON's folder.

    ``split`` may also be ``"all"`` (training + validation + test).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        raise DataError(f"{path}: datalist file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a valid JSON datalist ({exc})") from None
    splits = list(SPLIT_KEYS) if split == "all" else [split]
    for s in splits:
        if s not in content or not isinstance(content[s], list):
            valid = [k for k, v in content.items() if isinstance(v, list) and k != "skipped"]
            raise DataError(f"{path}: no split {s!r} in the datalist (splits present: {valid})")
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for s in splits:
        for item in content[s]:
            if not isinstance(item, dict):
                raise DataError(f"{path}: split {s!r} holds a non-dict item {item!r}")
            out.append(
                {
                    k: (
                        os.path.normpath(os.path.join(base, v))
                        if k not in NON_PATH_KEYS and isinstance(v, str) and not os.path.isabs(v)
                        else v
                    )
                    for k, v in item.items()
                }
            )
    return out
