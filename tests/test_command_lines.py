"""One error policy on every entry point: a user's mistake is one ``error:`` line, on the fire command lines and on
``python -m monai.bundle run`` alike, and an override that names no config key stops the run before it starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import monai.bundle
import pytest
import torch
from conftest import REPO_ROOT
from scripts.bundle_run import BundleOverrideError, command_line_overrides, guard
from scripts.cli import report_user_error, run_fire
from scripts.cli_args import parse_device, parse_float, parse_int
from scripts.commands.synthesize import main as synthesize_main
from scripts.data import DataError
from test_inference_helpers import INFERENCE_CONFIG, SAMPLE_DIR, tiny_network, write_overlay

BUNDLE_MAIN = os.path.join(os.path.dirname(monai.bundle.__file__), "__main__.py")
TRAIN_CONFIG = str(REPO_ROOT / "configs" / "train.yaml")
TCGA = SAMPLE_DIR / "tcga_brats_space" / "TCGA-DU-7294"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("command_lines")
    weights = root / "model.pt"
    torch.save(tiny_network().state_dict(), weights)
    return {"root": root, "weights": str(weights), "configs": [INFERENCE_CONFIG, write_overlay(root)]}


def _bundle_argv(*args: str) -> list[str]:
    return [BUNDLE_MAIN, "run", *args]


# ---------------------------------------------------------------------------------------------------------------
# values


def test_integers_and_devices_are_checked_with_the_option_named():
    assert parse_int("12", "epochs") == 12 and parse_int(3.0, "epochs") == 3
    for bad in ("abc", True, 2.5, None):
        with pytest.raises(DataError, match="--seed must be an integer"):
            parse_int(bad, "seed", DataError)
    with pytest.raises(ValueError, match="--num_slices must be >= 1, got -5"):
        parse_int("-5", "num_slices", minimum=1)
    with pytest.raises(DataError, match="request parameter 'seed' must be an integer, got 'x'"):
        parse_int("x", "seed", DataError, label="request parameter 'seed'")  # the MONAI Label request path
    assert parse_float("0.5", "lambda_l1") == 0.5 and parse_float("nan", "x", finite=False) != 0
    with pytest.raises(DataError, match="--lambda_l1 must be a finite number, got 'abc'"):
        parse_float("abc", "lambda_l1", DataError)
    assert parse_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="--device must be cpu, cuda or cuda:N"):
        parse_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="this machine has no CUDA GPU"):
            parse_device("cuda")


def test_a_command_run_by_its_old_module_name_says_where_it_went():
    """Before 0.7.0 the commands were modules (``python -m scripts.inference.demo``); run so now, such a module would
    be imported and exit 0 having done nothing. It is one ``error:`` line naming the new command, exit status 2."""
    from scripts.commands import COMMANDS, MOVED

    assert set(MOVED.values()) == set(COMMANDS)
    done = subprocess.run(
        [sys.executable, "-m", "scripts.inference.demo", "--task", "brats_flair"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (
        "error: scripts.inference.demo is no longer a command; run: python -m scripts demo --task brats_flair"
    )


def test_every_command_is_listed_in_one_place_and_prints_its_examples_and_options(capsys):
    """``python -m scripts`` lists every command; ``--help`` after one prints its examples and options and exits 0
    (it used to be taken for one more option); no library module is an entry point of its own."""
    from scripts.commands import COMMANDS, main

    assert {p.stem for p in (REPO_ROOT / "scripts" / "commands").glob("*.py")} - {"__init__"} == set(COMMANDS)
    elsewhere = [
        str(p.relative_to(REPO_ROOT))
        for p in (REPO_ROOT / "scripts").rglob("*.py")
        if "commands" not in p.parts
        and p.name not in ("cli.py", "__main__.py")
        and any(mark in p.read_text(encoding="utf-8") for mark in ("run_fire(", 'if __name__ == "__main__"'))
    ]
    assert elsewhere == []
    assert main([]) == 0
    listing = capsys.readouterr().out
    assert all(f"  {name} " in listing for name in COMMANDS), listing
    pages = {}
    for name in COMMANDS:
        assert main([name, "--help"]) == 0, name
        pages[name] = capsys.readouterr().out
        assert f"python -m scripts {name}" in pages[name], name
    assert "--out_dir" in pages["synthesize"] and "weights:" in pages["synthesize"]
    assert "published(" in pages["convert_weights"] and "critic(" in pages["convert_weights"]
    assert main(["synthesise", "--out_dir", "x"]) == 2
    assert "unknown command 'synthesise'; did you mean 'synthesize'?" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# monai.bundle run: overrides that name no key


def test_fire_style_overrides_are_read_from_the_command_line():
    pairs = command_line_overrides(["training", "--config_file", "a.yaml", "--epochs=3", "--amp", "--num-workers", "2"])
    assert pairs == {"config_file": "a.yaml", "epochs": "3", "amp": True, "num_workers": "2"}


def test_unknown_overrides_stop_the_run_with_the_nearest_keys():
    argv = _bundle_argv("--config_file", INFERENCE_CONFIG, "--weights", "X.pt", "--num_sample", "2", "--seed", "1")
    with pytest.raises(BundleOverrideError) as err:
        guard(argv)
    message = str(err.value)
    assert "--weights (did you mean --ckpt_path" in message  # the CLI's option name points to its config key
    assert "--num_sample (did you mean --num_samples" in message
    assert "--seed" not in message.replace("--seed 1", "")  # a known key is not reported
    with pytest.raises(BundleOverrideError, match=r"--epoch \(did you mean --epochs\?\)"):
        guard(_bundle_argv("training", "--config_file", TRAIN_CONFIG, "--epoch", "1"))


def test_known_overrides_pass(tmp_path):
    assert guard(_bundle_argv("training", "--config_file", TRAIN_CONFIG, "--epochs", "1", "--g_optimizer#lr", "0.1"))
    overlay = write_overlay(tmp_path)
    assert guard(_bundle_argv("--config_file", f"['{INFERENCE_CONFIG}', '{overlay}']", "--num_samples", "2"))
    tracked = _bundle_argv("--config_file", INFERENCE_CONFIG, "--tracking", "mlflow", "--experiment_name", "x")
    assert guard(tracked)  # MLflow's settings are keys once --tracking is on
    assert guard(["pytest", "--anything", "1"])  # called from Python: nothing to check


def test_cuda_on_a_machine_without_one_is_refused_before_the_run():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BundleOverrideError, match="--device cuda: this machine has no CUDA GPU"):
        guard(_bundle_argv("--config_file", INFERENCE_CONFIG, "--device", "cuda"))


# ---------------------------------------------------------------------------------------------------------------
# bad values: the same one line on the CLI and on the bundle path

BAD_VALUES = [  # (CLI option, config key, value, message)
    ("slice_mode", "slice_mode", "volumee", "unknown slice mode 'volumee'"),
    ("batch_size", "infer_batch_size", "0", "batch_size must be >= 1, got 0"),
    ("reader", "reader", "foo", "--reader 'foo' is not a reader"),
    ("spatial_size", "spatial_size", "abc", "--spatial_size must be an integer, got 'abc'"),
    ("num_slices", "num_slices", "-5", "--num_slices must be >= 1, got -5"),
    ("seed", "seed", "abc", "--seed must be an integer, got 'abc'"),
    ("num_samples", "num_samples", "0", "num_samples must be >= 1, got 0"),
]


@pytest.mark.parametrize(("option", "key", "value", "message"), BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_values_are_one_line_on_both_entry_points(tiny, tmp_path, capsys, option, key, value, message):
    common = ["--config_file", str(tiny["configs"]), "--weights", tiny["weights"], "--device", "cpu"]
    code = synthesize_main(
        [*common, "--subject_dirs", str(TCGA), "--out_dir", str(tmp_path / "cli"), f"--{option}", value]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and message in err[-1], err[-3:]

    with pytest.raises(Exception) as info:  # the bundle path, in process: what the excepthook would print
        monai.bundle.run(
            config_file=tiny["configs"], ckpt_path=tiny["weights"], output_dir=str(tmp_path / "bundle"), **{key: value}
        )
    assert report_user_error(info.value)
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: ") and message in line and "\n" not in line
    assert not (tmp_path / "cli").exists() or not list((tmp_path / "cli").iterdir())


def test_a_bug_keeps_its_traceback(capsys):
    def broken() -> None:
        raise KeyError("internal")

    with pytest.raises(KeyError):
        run_fire(broken, [])
    assert "error:" not in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(
    ("override", "line"),
    [
        (["--weights", "X.pt"], "error: --weights (did you mean --ckpt_path"),
        (["--num_slices", "-5"], "error: --num_slices must be >= 1, got -5"),
    ],
    ids=["unknown_key", "bad_value"],
)
def test_monai_bundle_run_prints_one_line(tmp_path, override, line):
    """The real command line: exit status 1, the last line names the key, no traceback, nothing written."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", INFERENCE_CONFIG, *override]
    out = tmp_path / "out"
    done = subprocess.run([*cmd, "--output_dir", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(line), done.stderr[-500:]
    assert not Path(out).exists()


# ---------------------------------------------------------------------------------------------------------------
# bad data on the bundle's inference path (monai.bundle run): one line naming the file or the split


def _datalist(tmp_path: Path, test: list[dict]) -> str:
    import json

    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": [], "validation": [], "test": test}), encoding="utf-8")
    return str(path)


def _tcga_item(**replace: str) -> dict[str, str]:
    names = {"t1": "t1_bet", "t1ce": "t1c_bet", "t2": "t2_bet", "flair": "fla_bet"}
    item = {"subject": TCGA.name, **{c: str(TCGA / f"{TCGA.name}_{n}.nii.gz") for c, n in names.items()}}
    return {**item, **replace}


def _nan_copy(tmp_path: Path) -> str:
    import nibabel as nib
    import numpy as np

    source = nib.load(TCGA / f"{TCGA.name}_t2_bet.nii.gz")
    data = np.asarray(source.dataobj, dtype=np.float32)
    data[data.shape[0] // 2, data.shape[1] // 2, data.shape[2] // 2] = np.nan
    path = tmp_path / "t2_with_nan.nii.gz"
    nib.save(nib.Nifti1Image(data, source.affine), path)
    return str(path)


@pytest.mark.parametrize("case", ["missing_contrast", "nan_voxel", "empty_split"])
def test_bad_data_on_the_bundle_inference_path_is_one_line(tiny, tmp_path, capsys, case):
    if case == "missing_contrast":
        item = _tcga_item()
        del item["flair"]
        datalist, expected = _datalist(tmp_path, [item]), ["flair", TCGA.name]
    elif case == "nan_voxel":
        datalist, expected = _datalist(tmp_path, [_tcga_item(t2=_nan_copy(tmp_path))]), ["t2_with_nan.nii.gz", "NaN"]
    else:
        datalist, expected = _datalist(tmp_path, []), ["datalist.json, split 'test'", "no subjects"]
    out = tmp_path / "bundle"
    with pytest.raises(Exception) as info:
        monai.bundle.run(
            config_file=tiny["configs"], ckpt_path=tiny["weights"], datalist_file=datalist, output_dir=str(out)
        )
    capsys.readouterr()  # drop what the run logged; the real command line: test_monai_bundle_run_prints_one_line
    assert report_user_error(info.value), repr(info.value)
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: ") and "\n" not in line, line
    assert all(word in line for word in expected), line
    assert not out.exists() or not list(out.glob("*.nii.gz"))
