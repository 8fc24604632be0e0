"""Model Zoo conformance: metadata, config properties, large files, the release zip, formatting and docs.

The export checks the zoo also runs (verify_net_in_out, ckpt_export + TorchScript, ONNX) live in test_export.py.
Everything here works offline: the metadata schema is our own file pre-placed where verify_metadata looks, and the
weights / release downloads use file:// URLs.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO_ROOT, require_shared, same_state
from scripts.data import resolve_task
from scripts.networks.mudiff import MUDiff
from tools.release import BUNDLE_NAME, ReleaseError, add_large_file, build_release_zip, file_hash, release_entries

REPO = REPO_ROOT
README = REPO / "README.md"

META = REPO / "configs" / "metadata.json"
SCHEMA = REPO / "tests" / "schema" / "metadata_schema.json"
INFERENCE = REPO / "configs" / "inference.yaml"
# a tiny MU-Diff that the inference config can describe with CLI overrides
TINY_NET = {"image_size": 32, "nf": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "attn_resolutions": []}
TINY_DATA = {"spatial_size": 32, "num_slices": 4}


def _env(pythonpath: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(pythonpath), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _cli(args: list[str], cwd: Path, pythonpath: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=_env(pythonpath), capture_output=True, text=True, timeout=timeout
    )


def _overrides(values: dict) -> list[str]:
    out = []
    for key, value in values.items():
        out += [f"--{key}", json.dumps(value).replace(" ", "") if isinstance(value, list) else str(value)]
    return out


def _metadata() -> dict:
    return json.loads(META.read_text(encoding="utf-8"))


def _requirements() -> dict[str, str]:
    """The exact run-time versions requirements-lock.txt gives Python 3.10 (the Model Zoo's CPU CI runs 3.10)."""
    pins = {}
    for line in (REPO / "requirements-lock.txt").read_text(encoding="utf-8").splitlines():
        spec, _, marker = line.split("#")[0].strip().partition(";")
        if "==" in spec and (not marker or '< "3.11"' in marker):
            name, version = spec.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def _tiny_weights(path: Path) -> dict[str, torch.Tensor]:
    """A tiny MUDiff with perturbed weights (a fresh one outputs ~0), saved as a plain state dict."""
    torch.manual_seed(0)
    net = MUDiff(**{k: tuple(v) if isinstance(v, list) else v for k, v in TINY_NET.items()})
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    state = net.state_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


# ---------------------------------------------------------------------------------------------------------------
# metadata


def test_json_files_are_zoo_formatted():
    """pre-commit's pretty-format-json (--indent=4 --no-sort-keys) would leave every JSON file unchanged."""
    files = sorted((REPO / "configs").glob("*.json")) + [SCHEMA]
    assert META in files
    for path in files:
        text = path.read_text(encoding="utf-8")
        expected = json.dumps(json.loads(text), indent=4, ensure_ascii=True) + "\n"
        assert text == expected, f"{path.relative_to(REPO)} is not 4-space indented JSON with key order kept"


def test_verify_metadata_offline_with_the_local_schema(tmp_path, caplog):
    """The zoo's check (`python -m monai.bundle verify_metadata --meta_file ... --filepath eval/schema.json`), offline:
    our schema pre-placed at the filepath, pinned by its hash, so nothing is downloaded."""
    from monai.bundle import verify_metadata

    schema = tmp_path / "eval" / "schema.json"
    schema.parent.mkdir()
    shutil.copy(SCHEMA, schema)
    md5 = hashlib.md5(SCHEMA.read_bytes()).hexdigest()
    with caplog.at_level("INFO"):
        verify_metadata(meta_file=str(META), filepath=str(schema), hash_val=md5)
    assert "metadata is verified with no error" in caplog.text
    schema.write_text(SCHEMA.read_text(encoding="utf-8").replace('"minimum": 1', '"minimum": 2'), encoding="utf-8")
    with pytest.raises(Exception, match="(?i)hash"):
        verify_metadata(meta_file=str(META), filepath=str(schema), hash_val=md5)


def test_local_schema_rejects_incomplete_metadata(tmp_path):
    from monai.bundle import verify_metadata

    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)
    good = _metadata()
    broken = {
        "num_channels removed": lambda m: m["network_data_format"]["inputs"]["image"].pop("num_channels"),
        "no intended_use": lambda m: m.pop("intended_use"),
        "deprecated optional_packages_version": lambda m: m.update(optional_packages_version={"onnx": "1.23.2"}),
        "loose pin": lambda m: m["required_packages_version"].update(nibabel=">=5"),
        "eval metric as text": lambda m: m["eval_metrics"].update(psnr="22 dB"),
    }
    for what, damage in broken.items():
        meta = copy.deepcopy(good)
        damage(meta)
        path = tmp_path / "metadata.json"
        path.write_text(json.dumps(meta), encoding="utf-8")
        with pytest.raises(ValueError, match="against schema") as caught:
            verify_metadata(meta_file=str(path), filepath=str(schema))
        assert "Failed validating" in str(caught.value), what
    jsonschema.validate(good, json.loads(SCHEMA.read_text(encoding="utf-8")))


def test_requirement_ranges_hold_every_locked_version():
    """requirements.txt declares ranges; each exact version requirements-lock.txt installs (per Python) is inside its
    range, and both files name the same packages."""
    from packaging.requirements import Requirement

    def specs(name: str) -> list[Requirement]:
        lines = (REPO / name).read_text(encoding="utf-8").splitlines()
        return [Requirement(line) for line in (raw.split("#")[0].strip() for raw in lines) if line]

    ranges = {r.name.lower(): r.specifier for r in specs("requirements.txt")}
    locked = specs("requirements-lock.txt")
    assert {r.name.lower() for r in locked} == set(ranges)
    for pin in locked:
        (exact,) = list(pin.specifier)
        assert exact.operator == "==" and ranges[pin.name.lower()].contains(exact.version), (pin, ranges[pin.name])


def test_metadata_versions_packages_and_tensor_formats_match_the_bundle():
    from monai.bundle import ConfigParser

    meta = _metadata()
    assert meta["version"] in meta["changelog"], "metadata version needs a changelog entry"
    assert next(iter(meta["changelog"])) == meta["version"], "changelog must list the newest version first"
    pins = _requirements()
    assert meta["monai_version"] == pins["monai"]
    assert meta["pytorch_version"] == pins["torch"]
    assert meta["numpy_version"] == pins["numpy"]
    # the zoo's CI installs exactly required_packages_version: the Python 3.10 pins of requirements-lock.txt
    required = {k.lower(): v for k, v in meta["required_packages_version"].items()}
    expected = {k: v for k, v in pins.items() if k not in ("torch", "monai", "numpy")}
    assert required == expected
    assert "optional_packages_version" not in meta  # monai would rename it over required_packages_version
    # the network's tensors agree with the inference config and the default task
    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert list(meta["network_data_format"]["inputs"]) == ["image"] and list(
        meta["network_data_format"]["outputs"]
    ) == ["pred"]
    in_channels = parser.get_parsed_content("in_channels")
    assert image["num_channels"] == parser.get_parsed_content("cond_channels") + in_channels
    assert pred["num_channels"] == in_channels
    task = resolve_task(parser.get_parsed_content("task"))
    names = [image["channel_def"][str(i)].lower() for i in range(image["num_channels"])]
    assert names[: len(task.inputs)] == [c.lower() for c in task.inputs]
    assert task.target.lower() in names[-1].lower() and task.target.lower() in pred["channel_def"]["0"].lower()
    assert image["value_range"] == pred["value_range"] == [-1, 1]
    # the published MU-Diff paper and weights are referenced
    refs = " ".join(meta["references"])
    assert "10.1038/s44387-025-00016-8" in refs and "10.6084/m9.figshare.27965493" in refs
    assert "not for clinical use" in meta["intended_use"].lower()


def test_eval_metrics_are_labelled_demo_and_documented():
    """eval_metrics may only hold numbers whose run is described in docs/README.md."""
    meta = _metadata()
    readme = (REPO / "docs" / "README.md").read_text(encoding="utf-8")
    for key, value in meta["eval_metrics"].items():
        assert key.startswith("demo_"), f"eval_metrics[{key}]: only demo-scale numbers exist; label them demo_"
        assert key in readme, f"eval_metrics[{key}] is not explained in docs/README.md"
        assert f"{value}" in readme, f"eval_metrics[{key}] = {value} does not match docs/README.md"


# ---------------------------------------------------------------------------------------------------------------
# config properties (what ConfigWorkflow, the zoo CI and MONAI Label look up)


@pytest.mark.parametrize(
    "workflow_type, configs",
    [("train", ["train.yaml"]), ("infer", ["inference.yaml"]), ("infer", ["inference.yaml", "evaluate.yaml"])],
    ids=["train", "inference", "evaluate"],
)
def test_config_workflow_properties_complete(workflow_type, configs, tmp_path):
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=[str(REPO / "configs" / c) for c in configs],
        meta_file=str(META),
        logging_file=str(REPO / "configs" / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(REPO),
        output_dir=str(tmp_path / "out"),
        ckpt_dir=str(tmp_path / "models"),
        device=torch.device("cpu"),
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    # the keys MONAI Label's bundle tasks and the zoo naming rules read are real components
    if workflow_type == "train":
        assert workflow.parser["train#trainer#max_epochs"] == "@epochs"
        assert isinstance(workflow.parser.get_parsed_content("train#dataset#data"), list)
        assert isinstance(workflow.parser["train#handlers"], list)
        assert "run" in workflow.parser and "training" in workflow.parser
    else:
        for key in ("network_def", "preprocessing", "postprocessing", "inferer", "dataset", "evaluator"):
            assert workflow.parser.get_parsed_content(key) is not None, key
    workflow.finalize()


# ---------------------------------------------------------------------------------------------------------------
# large files


def test_committed_large_files_yml_is_honest():
    content = yaml.safe_load((REPO / "large_files.yml").read_text(encoding="utf-8"))
    for entry in content["large_files"]:
        assert set(entry) <= {"path", "url", "hash_val", "hash_type"}, entry
        assert entry["url"] and entry["hash_val"] and entry["hash_type"] in ("md5", "sha1", "sha256", "sha512")
        assert not Path(entry["path"]).is_absolute() and ".." not in Path(entry["path"]).parts
    published = content["published_weights"]
    assert published["doi"] == "10.6084/m9.figshare.27965493"
    assert [f["name"] for f in published["files"]] == ["gen_diffusive_1.pth", "gen_diffusive_2.pth"]
    assert all(f["hash_val"] == "unknown" for f in published["files"]), "a published hash must come from the file"
    assert "python -m scripts convert_weights published" in published["convert"]


def test_large_file_entry_downloads_with_its_hash(tmp_path):
    """release.add_large_file records a weights file; monai's download_large_files fetches and checks it."""
    from monai.apps.utils import HashCheckError
    from monai.bundle import download_large_files

    hosted = tmp_path / "host" / "model.pt"
    state = _tiny_weights(hosted)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    shutil.copy(REPO / "large_files.yml", bundle / "large_files.yml")
    entry = add_large_file(hosted, hosted.as_uri(), bundle_root=bundle, path="models/model.pt")
    assert entry["hash_val"] == file_hash(hosted, "sha256")
    text = (bundle / "large_files.yml").read_text(encoding="utf-8")
    assert "published_weights:" in text and "# The authors' published MU-Diff weights" in text  # rest kept
    # monai 1.6.1: `python -m monai.bundle download_large_files --bundle_path <bundle>`, without --large_file_name
    download_large_files(bundle_path=str(bundle))
    fetched = bundle / "models" / "model.pt"
    assert file_hash(fetched) == entry["hash_val"]
    loaded = torch.load(fetched, map_location="cpu", weights_only=True)
    assert same_state(loaded, state)
    # recording the entry again replaces it; a wrong hash is refused by the download
    add_large_file(hosted, hosted.as_uri(), bundle_root=bundle, path="models/model.pt", hash_type="md5")
    content = yaml.safe_load((bundle / "large_files.yml").read_text(encoding="utf-8"))
    assert len(content["large_files"]) == 1 and content["large_files"][0]["hash_type"] == "md5"
    content["large_files"][0]["hash_val"] = "0" * 32
    (bundle / "large_files.yml").write_text(yaml.safe_dump(content), encoding="utf-8")
    fetched.unlink()
    with pytest.raises(HashCheckError):
        download_large_files(bundle_path=str(bundle))
    with pytest.raises(ReleaseError, match="not found"):
        add_large_file(tmp_path / "missing.pt", hosted.as_uri(), bundle_root=bundle)
    with pytest.raises(ReleaseError, match="url"):
        add_large_file(hosted, "models/model.pt", bundle_root=bundle)


# ---------------------------------------------------------------------------------------------------------------
# the release zip


@pytest.fixture(scope="module")
def staged_bundle(tmp_path_factory) -> Path:
    """A copy of exactly what a release packs (no weights), plus tiny weights at models/model.pt."""
    stage = tmp_path_factory.mktemp("stage") / "bundle"
    for rel in release_entries(REPO, models=[]):
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, stage / rel)
    _tiny_weights(stage / "models" / "model.pt")
    return stage


def test_release_zip_is_deterministic_and_packs_only_the_bundle(staged_bundle, tmp_path):
    first = build_release_zip(staged_bundle, tmp_path / "a", models=["models/model.pt"])
    os.utime(staged_bundle / "configs" / "inference.yaml", (0, 0))  # file times must not matter
    second = build_release_zip(staged_bundle, tmp_path / "b", models=["models/model.pt"])
    version = _metadata()["version"]
    assert first.name == f"{BUNDLE_NAME}_v{version}.zip"
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        names = archive.namelist()
        assert archive.testzip() is None
    assert names == sorted(names) and all(n.startswith(f"{BUNDLE_NAME}/") for n in names)
    rel = {n.split("/", 1)[1] for n in names}
    for needed in ("LICENSE", "large_files.yml", "configs/metadata.json", "configs/inference.yaml",
                   "configs/logging.conf", "docs/data_license.txt", "scripts/__init__.py",
                   "sample_data/datalist.json", "models/model.pt"):  # fmt: skip
        assert needed in rel, needed
    setup = re.findall(r"-r (\S+)", README.read_text(encoding="utf-8").split("## Quick start", 1)[1].split("```")[1])
    assert setup and all(name in rel for name in setup), setup  # the README's set-up works from the zip alone
    assert "monailabel_app/main.py" in rel and "requirements.txt" in rel
    skipped = ("tests/", "tools/", "eval/", ".")  # the developer tools do not ship
    assert not any(n.startswith(skipped) or "__pycache__" in n or n.endswith(".pyc") for n in rel)
    assert not any(n.endswith("resume.pt") for n in rel)
    without = build_release_zip(staged_bundle, tmp_path / "c", models=[], sample_data=False)
    with zipfile.ZipFile(without) as archive:
        assert not any("/models/model.pt" in n or "/sample_data/" in n for n in archive.namelist())


def test_release_leaves_out_what_the_checkout_ignores(staged_bundle, tmp_path):
    """A MONAI Label server run in the bundle writes monailabel_app/logs/; a release built afterwards must not ship
    them (the app's .gitignore says so), while a new file that is not ignored is packed."""
    repo = tmp_path / "checkout"
    shutil.copytree(staged_bundle, repo)
    shutil.copy(REPO / "monailabel_app" / ".gitignore", repo / "monailabel_app" / ".gitignore")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "monailabel_app" / "logs").mkdir()
    (repo / "monailabel_app" / "logs" / "app.log").write_text("a server ran here\n", encoding="utf-8")
    (repo / "monailabel_app" / "lib" / "new_helper.py").write_text("VALUE = 1\n", encoding="utf-8")
    entries = release_entries(repo, models=[])
    assert "monailabel_app/lib/new_helper.py" in entries and "monailabel_app/main.py" in entries
    assert not any(e.startswith("monailabel_app/logs/") for e in entries)


def test_release_refuses_what_it_cannot_ship(staged_bundle, tmp_path):
    with pytest.raises(ReleaseError, match="under"):
        build_release_zip(staged_bundle, tmp_path / "o", models=[str(tmp_path / "elsewhere.pt")])
    (staged_bundle / "models" / "resume.pt").write_bytes(b"x")
    try:
        with pytest.raises(ReleaseError, match="resume"):
            build_release_zip(staged_bundle, tmp_path / "o", models=["models/resume.pt"])
    finally:
        (staged_bundle / "models" / "resume.pt").unlink()
    with pytest.raises(ReleaseError, match="inside the packed folder"):
        build_release_zip(staged_bundle, staged_bundle / "docs" / "dist", models=[])
    broken = tmp_path / "broken"
    shutil.copytree(staged_bundle / "configs", broken / "configs")
    shutil.copy(staged_bundle / "LICENSE", broken / "LICENSE")
    shutil.copy(staged_bundle / "large_files.yml", broken / "large_files.yml")
    meta = json.loads((broken / "configs" / "metadata.json").read_text(encoding="utf-8"))
    meta["version"] = "9.9.9"
    (broken / "configs" / "metadata.json").write_text(json.dumps(meta), encoding="utf-8")
    with pytest.raises(ReleaseError, match="changelog"):
        build_release_zip(broken, tmp_path / "o")
    (broken / "LICENSE").unlink()
    with pytest.raises(ReleaseError, match="LICENSE"):
        release_entries(broken)


@pytest.mark.slow
def test_release_zip_installs_with_monai_download_and_runs_inference(staged_bundle, tmp_path):
    """The distribution round trip: build, `monai.bundle download --url file://`, synthesize the embedded sample
    from the installed copy only (its own scripts, configs, sample data and weights)."""
    archive = build_release_zip(staged_bundle, tmp_path / "dist", models=["models/model.pt"])
    install = tmp_path / "install"
    version = _metadata()["version"]
    args = ["monai.bundle", "download", "--name", BUNDLE_NAME, "--version", version, "--bundle_dir", str(install)]
    result = _cli([*args, "--url", archive.as_uri()], cwd=tmp_path, pythonpath=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    bundle = install / BUNDLE_NAME
    assert (bundle / "configs" / "metadata.json").is_file() and (bundle / "models" / "model.pt").is_file()

    out = tmp_path / "out"
    run = ["monai.bundle", "run", "--config_file", "configs/inference.yaml", "--meta_file", "configs/metadata.json"]
    run += ["--logging_file", "configs/logging.conf", "--bundle_root", str(bundle), "--output_dir", str(out)]
    run += _overrides({**TINY_NET, **TINY_DATA, "infer_batch_size": 4})
    result = _cli(run, cwd=bundle, pythonpath=bundle)
    assert result.returncode == 0, result.stderr[-4000:]
    made_for = sorted(p.name for p in out.iterdir() if p.name.endswith("_syn_t1ce.nii.gz"))
    assert made_for == ["Brats18_2013_20_1_syn_t1ce.nii.gz", "Brats18_2013_2_1_syn_t1ce.nii.gz"]  # the test split
    synthesis = out / "Brats18_2013_2_1_syn_t1ce.nii.gz"
    reference = nib.load(bundle / "sample_data" / "brats18" / "Brats18_2013_2_1" / "Brats18_2013_2_1_flair.nii.gz")
    image = nib.load(synthesis)
    assert image.shape == reference.shape
    np.testing.assert_allclose(image.affine, reference.affine, atol=1e-5)
    data = np.asarray(image.dataobj, dtype=np.float32)
    assert np.isfinite(data).all() and data.min() >= 0.0 and data.max() <= 1.0
    made = np.flatnonzero(data.reshape(-1, data.shape[-1]).any(axis=0))
    assert len(made) == TINY_DATA["num_slices"], f"expected {TINY_DATA['num_slices']} synthesized slices: {made}"
    assert data[..., made].std() > 1e-3, "the synthesis is flat"


# ---------------------------------------------------------------------------------------------------------------
# code format, docs


def test_ruff_lint_and_format_clean():
    ruff = [sys.executable, "-m", "ruff"]
    if subprocess.run([*ruff, "--version"], capture_output=True).returncode != 0:
        pytest.skip("ruff is not installed (requirements-dev.txt)")
    for args in (["check", "scripts", "tools", "tests"], ["format", "--check", "scripts", "tools", "tests"]):
        result = subprocess.run([*ruff, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"ruff {' '.join(args)}:\n{result.stdout[-3000:]}{result.stderr[-1000:]}"


def test_architecture_figure_draws(tmp_path):
    from PIL import Image
    from tools.draw_architecture import draw_architecture

    drawn = draw_architecture(tmp_path / "arch.png")
    committed = REPO / "docs" / "architecture.png"
    with Image.open(drawn) as fresh, Image.open(committed) as shipped:
        assert fresh.size == shipped.size and fresh.size[0] > 1000
        assert np.asarray(fresh.convert("L")).std() > 10  # not blank


def test_readme_links_and_commands_point_at_real_files():
    readme = (REPO / "docs" / "README.md").read_text(encoding="utf-8")
    assert BUNDLE_NAME in readme, "the README must name the bundle folder that release.py and download use"
    for section in ("Model Overview", "Data", "Training configuration", "Input and output", "Performance",
                    "MONAI Bundle Commands", "Limitations", "Citation", "License"):  # fmt: skip
        assert re.search(rf"^#+ .*{section}", readme, flags=re.MULTILINE | re.IGNORECASE), section
    links = re.findall(r"\]\(([^)#]+?)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not re.match(r"^[a-z]+://", link)]
    assert local, "docs/README.md links no local documents"
    for link in local:
        assert (REPO / "docs" / link).exists(), f"docs/README.md links a missing file: {link}"
    for config in set(re.findall(r"configs/[A-Za-z0-9_]+\.(?:yaml|json|conf)", readme)):
        assert (REPO / config).is_file(), f"docs/README.md names a missing config: {config}"
    for module in set(re.findall(r"python -m (scripts(?:\.[a-z_]+)+)", readme)):
        assert (REPO / (module.replace(".", "/") + ".py")).is_file(), f"docs/README.md runs a missing module: {module}"


# ---------------------------------------------------------------------------------------------------------------
# the Model Zoo's own CI, its quick checks (python -m tools.zoo_checks runs all: full verify, unit tests, pre-commit)


@pytest.mark.slow
def test_model_zoo_quick_checks_pass(tmp_path):
    """The zoo's verify_bundle (min: files, version, metadata against the official schema), its runtests.sh
    isort/black/flake8 and its pre-commit hooks pass on the bundle as a release ships it, laid out as models/<name>/
    in a zoo-shaped tree. Files over the zoo's 1 MB limit (the weights) are not committed there: large_files.yml
    lists them and the zoo's own download step fetches them."""
    import yaml

    zoo_ci = require_shared("tools", "model_zoo_ci")
    from tools.zoo_checks import prepare_scratch, run_checks

    root = prepare_scratch(tmp_path / "zoo", zoo_ci=zoo_ci)
    bundle = root / "models" / BUNDLE_NAME
    assert (bundle / "models" / "model.pt").is_file()
    listed = {e["path"]: e for e in yaml.safe_load((bundle / "large_files.yml").read_text())["large_files"]}
    assert listed["models/model.pt"]["url"].startswith("file://") and listed["models/model.pt"]["hash_type"] == "sha256"
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout
    assert f"models/{BUNDLE_NAME}/models/model.pt" not in tracked.split()
    results = run_checks(root, ["verify_min", "isort", "black", "flake8", "pre_commit"], echo=None)
    assert [r.check for r in results] == ["verify_bundle min", "isort", "black", "flake8", "pre-commit"]
    missing = [r.note for r in results if r.result == "skip"]
    if missing:
        pytest.skip("; ".join(missing))
    failed = [r for r in results if r.result != "pass"]
    assert not failed, "\n\n".join(f"{r.check}: {r.note}\n" + "\n".join(r.tail) for r in failed)
