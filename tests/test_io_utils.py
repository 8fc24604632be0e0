"""The one atomic-write mechanism: several files commit together or not at all, nothing half-written stays behind."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from scripts.data.io_utils import (
    TMP_PREFIX,
    atomic_write,
    ensure_writable_dir,
    save_npy,
    staged_files,
    sweep_stale_temporaries,
    write_json,
)
from scripts.networks import checkpoints as checkpoint_module


def test_staged_files_commit_together(tmp_path):
    targets = {"a": tmp_path / "a.json", "b": tmp_path / "sub" / "b.nii.gz"}
    with staged_files(targets) as temps:
        assert all(os.path.basename(t).startswith(TMP_PREFIX) for t in temps.values())
        assert temps["b"].endswith(".nii.gz")  # writers that choose a format by extension still can
        for key, tmp in temps.items():
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(key)
        assert not targets["a"].exists()  # nothing visible before the block ends
    assert targets["a"].read_text() == "a" and targets["b"].read_text() == "b"
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["a.json", "b.nii.gz"]


def test_a_failure_replaces_nothing_and_leaves_no_temp(tmp_path):
    old = tmp_path / "summary.json"
    write_json(old, {"v": 1})
    with pytest.raises(RuntimeError, match="half-way"):
        with staged_files({0: old, 1: tmp_path / "rows.csv"}) as temps:
            with open(temps[0], "w", encoding="utf-8") as handle:
                handle.write('{"v": 2')
            raise RuntimeError("half-way")
    assert json.loads(old.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_one_file_writers_keep_permissions_and_format(tmp_path):
    path = atomic_write(tmp_path / "x.txt", lambda tmp: open(tmp, "w").close())
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o666 & ~_umask())
    arrays = save_npy(tmp_path / "x.npy", np.arange(3))
    assert np.load(arrays).tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "x.txt"]


def test_unwritable_folder_is_named(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="output folder .*a_file/out is not writable"):
        ensure_writable_dir(blocker / "out")
    assert ensure_writable_dir(tmp_path / "new").is_dir() and list((tmp_path / "new").iterdir()) == []


def test_readers_skip_a_leftover_temp_file(tmp_path):
    from scripts.evaluation.matching import is_nifti

    (tmp_path / f"{TMP_PREFIX}abc.nii.gz").write_bytes(b"half")
    (tmp_path / "s1_syn_t1ce.nii.gz").write_bytes(b"whole")
    assert [p.name for p in sorted(tmp_path.iterdir()) if is_nifti(p)] == ["s1_syn_t1ce.nii.gz"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_result_names_have_one_owner(tmp_path):
    from scripts.data.errors import DataError
    from scripts.data.naming import parse_result_name, result_name
    from scripts.inference.writer import output_paths

    assert result_name("Brats18_2013_2_1", "t1ce") == "Brats18_2013_2_1_syn_t1ce.nii.gz"
    assert parse_result_name("a_syn_b_syn_flair.nii.gz") == ("a_syn_b", "syn", "flair")  # the last marker splits
    assert parse_result_name("x_unc_t2.nii") == ("x", "unc", "t2") and parse_result_name("x_t2.nii.gz") is None
    paths = output_paths(tmp_path, "s1", "t1ce")
    assert [parse_result_name(p)[1] for p in paths.values()] == ["syn", "unc", "att"]
    with pytest.raises(DataError, match="cannot be used in a file name"):
        result_name("../s1", "t1ce")


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_the_next_run_sweeps_what_a_killed_run_left(tmp_path):
    dead = tmp_path / f"{TMP_PREFIX}{_dead_pid()}_abc.nii.gz"  # SIGKILL'd writer: nothing could clean up
    live = tmp_path / f"{TMP_PREFIX}{os.getpid()}_def.pt"  # a run still writing here
    old = tmp_path / f"{TMP_PREFIX}legacy.json"  # no process id in the name: removed once stale
    for path in (dead, live, old):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    keep = tmp_path / "TCGA_syn_t1ce.nii.gz"
    keep.write_bytes(b"result")
    ensure_writable_dir(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, keep.name])
    assert sweep_stale_temporaries(tmp_path) == []


@pytest.mark.slow
def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path):
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[2])\n"
        "from scripts.data.io_utils import atomic_write\n"
        "def slow(tmp):\n"
        "    open(tmp, 'wb').write(b'half'); print('writing', flush=True); time.sleep(60)\n"
        "atomic_write(sys.argv[1], slow)\n"
    )
    target = tmp_path / "model.pt"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(target), str(REPO_ROOT)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    assert any(p.name.startswith(TMP_PREFIX) for p in tmp_path.iterdir())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_is_named_as_one(tmp_path, monkeypatch):
    def truncated(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc] . unexpected pos 123 vs 456")

    monkeypatch.setattr(checkpoint_module.torch, "save", truncated)
    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda p: _Usage(1))
    with pytest.raises(OSError, match=r"No space left|no space left on device writing .*resume.pt") as err:
        checkpoint_module.atomic_torch_save({"w": torch.zeros(1)}, str(tmp_path / "resume.pt"))
    assert err.value.errno == 28 and list(tmp_path.iterdir()) == []


_Usage = collections.namedtuple("_Usage", ["free"])
