"""Shared test fixtures: repo root on sys.path, the embedded real sample, and the optional ../shared folder.

Tests that need ``<repo>/../shared`` (the full-size reference data) call ``require_shared(...)`` or use the
``shared_data_dir`` fixture; both skip only those tests when the folder is absent (e.g. a plain clone in CI).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SAMPLE_DIR = REPO_ROOT / "sample_data"
SAMPLE_DATALIST = SAMPLE_DIR / "datalist.json"
SHARED_DIR = REPO_ROOT.parent / "shared"
SHARED_DATA_DIR = SHARED_DIR / "data"


def require_shared(*parts: str) -> Path:
    """Path below ``<repo>/../shared``; skips the calling test when it does not exist."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not available (../shared is optional outside the development machine)")
    return path


def sample_item(subject: str) -> dict[str, Any]:
    """The embedded sample's datalist item for ``subject`` with absolute paths."""
    content = json.loads(SAMPLE_DATALIST.read_text(encoding="utf-8"))
    for items in content.values():
        if not isinstance(items, list):
            continue
        for item in items:
            if isinstance(item, dict) and item.get("subject") == subject:
                return {k: (v if k == "subject" else str(SAMPLE_DIR / v)) for k, v in item.items()}
    raise KeyError(f"{subject} is not in {SAMPLE_DATALIST}")


def same_state(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two state dicts hold the same entries: equal tensors, and equal extra state (a network's own description)."""
    import torch

    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        other = b[key]
        if isinstance(value, torch.Tensor):
            if not (isinstance(other, torch.Tensor) and torch.equal(value.cpu(), other.cpu())):
                return False
        elif value != other:
            return False
    return True


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    assert SAMPLE_DATALIST.is_file(), f"embedded sample missing: {SAMPLE_DATALIST}"
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def sample_datalist(sample_dir: Path) -> Path:
    return SAMPLE_DATALIST


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return require_shared()


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    return require_shared("data")
