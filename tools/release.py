"""Package the bundle for distribution: the release zip and the hashed ``large_files.yml`` entries.

The zip is what ``python -m monai.bundle download --name <name> --url <url-of-zip> --bundle_dir <dir>`` installs:
one top folder ``<name>/`` with the configs, the code, the docs, the licences, ``large_files.yml`` and, by default,
the embedded sample (so the installed bundle runs inference without other data) and the demo weights when they
exist. Tests, caches, outputs, training state and whatever the git checkout ignores (e.g. MONAI Label's
``monailabel_app/logs/``) are never packed. Building twice from the same files gives the
same bytes (sorted entries, fixed timestamps and permissions), so a published zip can be rebuilt and checked.

CLI (run from the bundle root)::

    python -m tools.release zip [--out_dir dist] [--models "['models/model.pt']"] [--sample_data true]
    python -m tools.release large_files --weights models/model.pt --url https://<host>/model.pt \
        [--path models/model.pt] [--hash_type sha256]

Python::

    from tools.release import build_release_zip, add_large_file
    zip_path = build_release_zip(".", "dist", models=["models/model.pt"])
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from scripts.cli_args import parse_bool, parse_list
from scripts.data.io_utils import staged_files, write_text

__all__ = [
    "BUNDLE_NAME",
    "SHIPPED_WEIGHTS",
    "ReleaseError",
    "release_entries",
    "build_release_zip",
    "file_hash",
    "add_large_file",
    "main",
]

BUNDLE_NAME = "brain_mri_contrast_synthesis_mudiff"
"""The bundle's folder name (Model Zoo style ``<region>_<modality>_<task>``); metadata ``name`` is the display name."""

#: the shipped weights: MU-Diff and U-Net per demo task, and the downstream segmentation network
SHIPPED_WEIGHTS = ("models/*.pt", "models/brats_*/*.pt")
# what the zip carries: folders packed recursively, single files, and what is never packed
# (everything the README's set-up and main command name: the zip is used alone, without the repository)
_TREES = ("configs", "scripts", "docs", "monailabel_app")
_FILES = (
    "LICENSE",
    "large_files.yml",
    "README.md",
    "requirements.txt",
    "requirements-lock.txt",
    "requirements-dev.txt",
    "requirements-monailabel.txt",
    "pyproject.toml",
    "models/README.md",
)
_SAMPLE_TREE = "sample_data"
_SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints", ".pytest_cache", ".ruff_cache"}
_SKIP_SUFFIXES = (".pyc", ".pyo", ".tmp", ".swp")
_REQUIRED = ("LICENSE", "configs/metadata.json", "configs/inference.yaml", "large_files.yml")
# already-compressed content is stored, everything else deflated
_STORED_SUFFIXES = (".gz", ".zip", ".png", ".jpg", ".pt", ".pth", ".ts", ".onnx")
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_HASH_TYPES = ("md5", "sha1", "sha256", "sha512")


class ReleaseError(ValueError):
    """A release cannot be built as asked (missing file, bad version, weights outside the bundle, ...)."""


def _metadata(root: Path) -> dict[str, Any]:
    path = root / "configs" / "metadata.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ReleaseError(f"{path}: cannot read the bundle metadata ({err})") from err
    version = meta.get("version")
    if not isinstance(version, str) or not re.fullmatch(r"\d+\.\d+\.\d+", version):
        raise ReleaseError(f"{path}: 'version' must be a semantic version like 0.1.0, got {version!r}")
    if version not in meta.get("changelog", {}):
        raise ReleaseError(f"{path}: version {version} has no entry in 'changelog' (add one before releasing)")
    return meta


def _walk(root: Path, tree: str) -> Iterator[str]:
    """Files below ``root/tree`` as sorted posix paths relative to root, without caches and hidden files."""
    base = root / tree
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith(_SKIP_SUFFIXES):
                continue
            full = Path(dirpath) / name
            if full.is_file() and not full.is_symlink():
                yield full.relative_to(root).as_posix()


def _git_ignored(root: Path, paths: Sequence[str]) -> set[str]:
    """Those of ``paths`` that the checkout's ignore rules exclude (run outputs such as MONAI Label's ``logs/``, kept
    out by ``monailabel_app/.gitignore``); none outside a git checkout (e.g. an unpacked zip)."""
    if not paths:
        return set()
    try:
        done = subprocess.run(
            ["git", "check-ignore", "-z", "--stdin"],
            cwd=root,
            input="\0".join(paths).encode(),
            capture_output=True,
            check=False,
        )
    except OSError:  # no git
        return set()
    if done.returncode not in (0, 1):  # 0: some ignored, 1: none, 128: not a checkout
        return set()
    return {p for p in done.stdout.decode().split("\0") if p}


def _model_entries(root: Path, models: Sequence[str]) -> list[str]:
    out = []
    for model in models:
        path = Path(model)
        full = (path if path.is_absolute() else root / path).resolve()
        try:
            rel = full.relative_to((root / "models").resolve()).as_posix()
        except ValueError:
            raise ReleaseError(f"{model}: release weights must lie under {root / 'models'}") from None
        if not full.is_file():
            raise ReleaseError(f"{model}: weights file not found")
        if full.name == "resume.pt":
            raise ReleaseError(f"{model}: a training resume checkpoint is not release weights (use model.pt)")
        out.append(f"models/{rel}")
        sidecar = full.with_name(full.name + ".json")  # training record written by scripts.inference.weights
        if sidecar.is_file():
            out.append(f"models/{rel}.json")
    return out


def release_entries(
    bundle_root: str | os.PathLike = ".", models: Sequence[str] | None = None, sample_data: bool = True
) -> list[str]:
    """Sorted bundle-relative paths that the release zip carries.

    ``models=None`` packs the shipped weights (``SHIPPED_WEIGHTS``, never a training's ``resume.pt``); ``[]`` packs
    no weights;
    otherwise the listed files, which must lie under ``models/`` (their ``<file>.json`` training record goes too).
    """
    root = Path(bundle_root).resolve()
    missing = [name for name in _REQUIRED if not (root / name).is_file()]
    if missing:
        raise ReleaseError(f"{root}: not a complete bundle, missing {', '.join(missing)}")
    _metadata(root)
    entries = [name for name in _FILES if (root / name).is_file()]
    walked: list[str] = []
    for tree in _TREES + ((_SAMPLE_TREE,) if sample_data else ()):
        if not (root / tree).is_dir():
            raise ReleaseError(f"{root / tree}: folder missing")
        walked.extend(_walk(root, tree))
    ignored = _git_ignored(root, walked)  # e.g. monailabel_app/logs/ after a server ran here
    entries.extend(rel for rel in walked if rel not in ignored)
    if models is None:
        found = {p for pattern in SHIPPED_WEIGHTS for p in root.glob(pattern) if p.name != "resume.pt"}
        models = sorted(str(p.relative_to(root)) for p in found)
    entries.extend(_model_entries(root, models))
    return sorted(set(entries))


def _zip_info(arcname: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(arcname, date_time=_ZIP_TIME)
    info.create_system = 3  # unix, so the permission bits below are honoured on extraction
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    info.compress_type = zipfile.ZIP_STORED if arcname.endswith(_STORED_SUFFIXES) else zipfile.ZIP_DEFLATED
    return info


def build_release_zip(
    bundle_root: str | os.PathLike = ".",
    out_dir: str | os.PathLike = "dist",
    models: Sequence[str] | None = None,
    sample_data: bool = True,
    name: str = BUNDLE_NAME,
) -> Path:
    """Write ``<out_dir>/<name>_v<version>.zip`` (top folder ``<name>/``) atomically and return its path.

    Entries come from :func:`release_entries`. The output folder must not be inside a packed folder.
    """
    root = Path(bundle_root).resolve()
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise ReleaseError(f"bundle name {name!r}: use letters, digits, '_' or '-' only")
    version = _metadata(root)["version"]
    entries = release_entries(root, models, sample_data)
    out = Path(out_dir).resolve()
    for tree in _TREES + (_SAMPLE_TREE,):
        if out == root / tree or (root / tree) in out.parents:
            raise ReleaseError(f"{out}: the output folder lies inside the packed folder {tree}/")
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}_v{version}.zip"
    with staged_files({0: target}, mode=0o644) as temps:
        with zipfile.ZipFile(temps[0], "w", compresslevel=9) as archive:
            for rel in entries:
                archive.writestr(_zip_info(f"{name}/{rel}"), (root / rel).read_bytes())
    return target


def file_hash(path: str | os.PathLike, hash_type: str = "sha256") -> str:
    """Hex digest of a file, read in chunks (weights can be large)."""
    if hash_type not in _HASH_TYPES:
        raise ReleaseError(f"hash_type {hash_type!r}: choose one of {', '.join(_HASH_TYPES)}")
    digest = hashlib.new(hash_type)
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _replace_large_files_block(text: str, entries: list[dict[str, str]]) -> str:
    """Swap the top-level ``large_files:`` block of a YAML text, keeping every other line (and comment)."""
    block = yaml.safe_dump({"large_files": entries}, sort_keys=False, default_flow_style=False, width=1000)
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(r"large_files\s*:", line)), None)
    if start is None:
        return text + ("" if not text or text.endswith("\n") else "\n") + block
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t-"):
        end += 1
    tail = lines[end:]
    return "".join(lines[:start]) + block + ("\n" if tail else "") + "".join(tail)


def add_large_file(
    weights: str | os.PathLike,
    url: str,
    bundle_root: str | os.PathLike = ".",
    path: str | None = None,
    hash_type: str = "sha256",
    large_files: str | os.PathLike | None = None,
) -> dict[str, str]:
    """Record ``weights`` (the exact file that is uploaded to ``url``) in ``large_files.yml`` with its hash.

    ``path`` is where ``download_large_files`` puts it, relative to the bundle root (default: the weights' own
    path when it lies in the bundle, else ``models/<file name>``). An entry with the same path is replaced; the
    rest of the file, comments included, is kept. Returns the entry.
    """
    root = Path(bundle_root).resolve()
    source = Path(weights)
    if not source.is_file():
        raise ReleaseError(f"{weights}: weights file not found")
    if not re.match(r"^(https?|file)://", url):
        raise ReleaseError(f"url {url!r}: give an http(s):// or file:// address of the uploaded file")
    if path is None:
        try:
            path = source.resolve().relative_to(root).as_posix()
        except ValueError:
            path = f"models/{source.name}"
    if Path(path).is_absolute() or ".." in Path(path).parts:
        raise ReleaseError(f"path {path!r}: must be relative to the bundle root, without '..'")
    yml = Path(large_files) if large_files is not None else root / "large_files.yml"
    text = yml.read_text(encoding="utf-8") if yml.is_file() else ""
    try:
        current = (yaml.safe_load(text) or {}).get("large_files") or []
    except yaml.YAMLError as err:
        raise ReleaseError(f"{yml}: not valid YAML ({err})") from err
    if not isinstance(current, list):
        raise ReleaseError(f"{yml}: 'large_files' must be a list")
    entry = {"path": path, "url": url, "hash_val": file_hash(source, hash_type), "hash_type": hash_type}
    entries = [e for e in current if not (isinstance(e, Mapping) and e.get("path") == path)] + [entry]
    write_text(yml, _replace_large_files_block(text, entries))
    return entry


def _as_list(value: Any) -> list[str] | None:
    return None if value is None else parse_list(value, "models", ReleaseError)


def _cli_zip(
    out_dir: str = "dist", models: Any = None, sample_data: Any = True, bundle_root: str = ".", name: str = BUNDLE_NAME
) -> None:
    with_sample = parse_bool(sample_data, "sample_data", ReleaseError)
    target = build_release_zip(bundle_root, out_dir, _as_list(models), with_sample, name)
    with zipfile.ZipFile(target) as archive:
        names = archive.namelist()
    weights = [n for n in names if n.endswith((".pt", ".pth"))]
    print(f"{target}: {len(names)} files, {target.stat().st_size / 1e6:.1f} MB, sha256 {file_hash(target)}")
    print("weights: " + (", ".join(weights) if weights else "none (inference needs models/model.pt from the user)"))


def _cli_large_files(
    weights: str, url: str, path: str | None = None, hash_type: str = "sha256", bundle_root: str = "."
) -> None:
    entry = add_large_file(weights, url, bundle_root, path, hash_type)
    print(f"large_files.yml: {entry['path']} <- {entry['url']} ({hash_type} {entry['hash_val']})")


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; release errors are one ``error:`` line and exit status 2."""
    import fire

    try:
        fire.Fire({"zip": _cli_zip, "large_files": _cli_large_files}, command=argv)
    except ReleaseError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
