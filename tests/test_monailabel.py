"""MONAI Label integration: finding a subject's contrasts from one requested image, the app's configuration, the
studies-folder helper, and the request path end to end on the embedded real sample, in process (App.infer, as the
server's infer endpoint calls it) and through the server's own FastAPI routes (in-process HTTP client, no socket).

The MONAI Label tests need `pip install --no-deps -r requirements-monailabel.txt` and are skipped without it; the
rest runs everywhere. A tiny random MU-Diff keeps each synthesis to about a second."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scripts.commands.monailabel_studies import main as monailabel_studies_main
from scripts.data import DataError
from scripts.monailabel_task import BUNDLE_ROOT, find_study, make_studies, match_study, parse_conf, subject_of
from test_inference_helpers import SAMPLE_DIR, file_hashes, tiny_network, write_overlay

APP_DIR = BUNDLE_ROOT / "monailabel_app"
TCGA = SAMPLE_DIR / "tcga_brats_space" / "TCGA-DU-7294"
BRATS = SAMPLE_DIR / "brats2023_naming" / "BraTS-GLI-00001-000"
OPEN_MS = SAMPLE_DIR / "open_ms" / "patient07"
INPUTS = ("flair", "t2", "t1")  # brats_t1ce, in channel order


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks run fastest single-threaded, and the CI machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------------------
# one image -> the subject's input contrasts (no MONAI Label needed)


@pytest.mark.parametrize(
    ("name", "subject"),
    [
        ("BraTS-GLI-00001-000-t2f.nii.gz", "BraTS-GLI-00001-000"),
        ("TCGA-DU-7294_fla_bet.nii.gz", "TCGA-DU-7294"),
        ("sub-strokecase0009_ses-0001_dwi.nii.gz", "sub-strokecase0009_ses-0001"),
        ("BraTS20_Training_001_t1ce.nii", "BraTS20_Training_001"),
        ("FLAIR_N4_brain.nii.gz", None),  # starts with its contrast: the folder names the subject
        ("simple.nii.gz", None),
    ],
)
def test_subject_is_the_name_before_its_first_contrast_token(name, subject):
    assert subject_of(name.split(".nii")[0]) == subject


@pytest.mark.parametrize(
    ("folder", "opened", "expected"),
    [
        (TCGA, "TCGA-DU-7294_t2_bet.nii.gz", {"flair": "_fla_", "t2": "_t2_", "t1": "_t1_"}),
        (BRATS, "BraTS-GLI-00001-000-t1c.nii.gz", {"flair": "-t2f", "t2": "-t2w", "t1": "-t1n"}),
        (
            OPEN_MS,
            "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz",
            {"flair": "FLAIR_", "t2": "T2_", "t1": "T1_"},
        ),
    ],
    ids=["tcga_prefix", "brats2023_any_contrast_opened", "open_ms_folder_per_subject"],
)
def test_find_study_on_the_sample_layouts(folder, opened, expected):
    study = find_study(folder / opened, INPUTS)
    assert study.subject == (folder.name if folder != TCGA else "TCGA-DU-7294")
    assert list(study.files) == list(INPUTS)  # channel order of the task
    for contrast, marker in expected.items():
        assert marker in Path(study.files[contrast]).name, (contrast, study.files[contrast])
    assert "t1c" not in Path(study.files["t1"]).name.lower() and "POST" not in study.files["t1"]  # T1 is not T1ce
    assert study.item() == {"subject": study.subject, **study.files}


def test_match_study_in_a_flat_datastore_of_several_subjects():
    ids = [f"{s}_{c}" for s in ("S1", "S10", "S1-b") for c in ("flair", "t2", "t1", "t1ce")]
    candidates = {i: f"/data/{i}.nii.gz" for i in ids + ["S1_syn_t1ce", "S1_lesion"]}
    study = match_study("S1_t1ce", candidates, INPUTS, where=" in the datastore")
    assert study.files == {"flair": "/data/S1_flair.nii.gz", "t2": "/data/S1_t2.nii.gz", "t1": "/data/S1_t1.nii.gz"}
    # explicit files win; the subject can be given when the name does not start with it
    study = match_study("scan.nii.gz", candidates, INPUTS, subject="S10", explicit={"t1": "/other/t1.nii.gz"})
    assert study.subject == "S10" and study.files["t1"] == "/other/t1.nii.gz"
    assert study.files["flair"] == "/data/S10_flair.nii.gz"


def test_match_study_errors_name_the_subject_contrast_and_files():
    candidates = {"S1_flair": "/d/S1_flair.nii.gz", "S1_t2": "/d/S1_t2.nii.gz", "S1_t1ce": "/d/S1_t1ce.nii.gz"}
    with pytest.raises(DataError, match=r"subject S1: no 't1' image in /d .*S1_flair.*S1_t1ce.*S1_t2"):
        match_study("S1_flair", candidates, INPUTS, where=" in /d")
    twice = {**candidates, "S1_t1": "/d/S1_t1.nii.gz", "S1_t1w": "/d/S1_t1w.nii.gz"}
    with pytest.raises(DataError, match=r"several 't1' images.*S1_t1', 'S1_t1w'"):
        match_study("S1_flair", twice, INPUTS)
    with pytest.raises(DataError, match=r"image upload_3f2a\.nii\.gz: cannot tell its subject"):
        match_study("upload_3f2a.nii.gz", twice, INPUTS)
    # an upload with every input given explicitly needs no name matching
    files = {c: f"/d/S1_{c}.nii.gz" for c in INPUTS}
    assert match_study("upload_3f2a.nii.gz", {}, INPUTS, explicit=files).files == files


def test_find_study_ignores_subfolders_and_refuses_a_missing_image(tmp_path):
    for c in ("flair", "t2"):
        (tmp_path / f"S1_{c}.nii.gz").write_bytes(b"")
    (tmp_path / "labels" / "final").mkdir(parents=True)
    (tmp_path / "labels" / "final" / "S1_t1.nii.gz").write_bytes(b"")  # MONAI Label's saved labels: never an input
    with pytest.raises(DataError, match="no 't1' image"):
        find_study(tmp_path / "S1_flair.nii.gz", INPUTS)
    with pytest.raises(DataError, match=r"S1_t1ce\.nii\.gz not found"):
        find_study(tmp_path / "S1_t1ce.nii.gz", INPUTS)


# ---------------------------------------------------------------------------------------------------------------
# app configuration


def test_parse_conf_reads_start_server_strings():
    settings = parse_conf(
        {
            "config_file": "configs/inference.yaml, configs/evaluate.yaml",
            "weights": "models/brats_flair/model.pt",
            "num_samples": "4",
            "spatial_size": "null",
            "amp": "true",
            "task": "flair,t2,t1->t1ce",
            "output_dir": "/data/out",
            "preload": "false",
            "use_pretrained_model": "false",  # MONAI Label's own keys are left alone
        }
    )
    assert settings.config_files == [
        str(BUNDLE_ROOT / "configs" / "inference.yaml"),
        str(BUNDLE_ROOT / "configs" / "evaluate.yaml"),
    ]
    assert settings.overrides == {
        "ckpt_path": str(BUNDLE_ROOT / "models" / "brats_flair" / "model.pt"),
        "num_samples": 4,
        "spatial_size": None,
        "amp": True,
        "task": "flair,t2,t1->t1ce",
    }
    assert settings.output_dir == "/data/out" and settings.preload is False
    assert parse_conf({}).config_files == [str(BUNDLE_ROOT / "configs" / "inference.yaml")]


def test_parse_conf_errors():
    with pytest.raises(DataError, match=r"config_file: .*configs/nope\.yaml not found"):
        parse_conf({"config_file": "configs/inference.yaml,configs/nope.yaml"})
    with pytest.raises(DataError, match="preload: expected true or false"):
        parse_conf({"preload": "sometimes"})


# ---------------------------------------------------------------------------------------------------------------
# datalist -> studies folder


def test_make_studies_links_each_contrast_and_never_overwrites(tmp_path):
    out = tmp_path / "studies"
    before = file_hashes(sorted(TCGA.iterdir()))
    paths = make_studies(str(SAMPLE_DIR / "datalist.json"), str(out), "other")
    names = sorted(Path(p).name for p in paths)
    assert names == [f"TCGA-DU-7294_{c}.nii.gz" for c in ("flair", "t1", "t1ce", "t2")]
    assert (out / "TCGA-DU-7294_flair.nii.gz").resolve() == (TCGA / "TCGA-DU-7294_fla_bet.nii.gz").resolve()
    assert make_studies(str(SAMPLE_DIR / "datalist.json"), str(out), "other") == paths  # again: kept as they are
    # the folder is a valid layout for the task
    assert find_study(out / "TCGA-DU-7294_t1ce.nii.gz", INPUTS).files["t2"] == str(out / "TCGA-DU-7294_t2.nii.gz")
    (out / "TCGA-DU-7294_t2.nii.gz").unlink()
    (out / "TCGA-DU-7294_t2.nii.gz").write_bytes(b"something else")
    with pytest.raises(DataError, match=r"TCGA-DU-7294_t2\.nii\.gz already exists"):
        make_studies(str(SAMPLE_DIR / "datalist.json"), str(out), "other")
    copied = tmp_path / "copied"
    assert (
        monailabel_studies_main(
            ["--out_dir", str(copied), "--split", "other", "--contrasts", "flair,t2", "--copy", "true"]
        )
        == 0
    )
    assert sorted(p.name for p in copied.iterdir()) == ["TCGA-DU-7294_flair.nii.gz", "TCGA-DU-7294_t2.nii.gz"]
    assert not (copied / "TCGA-DU-7294_t2.nii.gz").is_symlink()
    assert file_hashes(sorted(TCGA.iterdir())) == before  # inputs untouched
    assert monailabel_studies_main(["--datalist", str(tmp_path / "none.json"), "--out_dir", str(copied)]) == 2


# ---------------------------------------------------------------------------------------------------------------
# the MONAI Label request path (needs monailabel)


@pytest.fixture(scope="module")
def monailabel_env(tmp_path_factory):
    """Tiny weights, a studies folder holding the sample's test subject, and MONAI Label settings for a test run."""
    if importlib.util.find_spec("monailabel") is None:  # only a missing monailabel skips; a broken install fails
        pytest.skip("MONAI Label is not installed: .venv/bin/pip install --no-deps -r requirements-monailabel.txt")
    from monailabel.config import settings
    from monailabel.interfaces.app import MONAILabelApp  # noqa: F401 - every package the app needs imports

    root = tmp_path_factory.mktemp("monailabel")
    weights = root / "model.pt"
    torch.save(tiny_network().state_dict(), weights)
    studies = root / "studies"
    make_studies(str(SAMPLE_DIR / "datalist.json"), str(studies), "other")
    conf = {"config_file": f"configs/inference.yaml,{write_overlay(root)}", "weights": str(weights)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(settings, "MONAI_LABEL_DATASTORE_AUTO_RELOAD", False)  # no file-watcher thread
        mp.setattr(settings, "MONAI_LABEL_SESSIONS", False)  # nothing written to the home folder
        mp.setattr(settings, "MONAI_LABEL_TASKS_STRATEGY", False)
        mp.setattr(settings, "MONAI_LABEL_TASKS_SCORING", False)
        yield {"root": root, "studies": studies, "conf": conf, "weights": str(weights), "settings": settings}


def _app(env, studies=None, **conf):
    """The app as the server loads it: monailabel's app_instance on monailabel_app/main.py."""
    from monailabel.interfaces.utils.app import app_instance, clear_cache

    clear_cache()
    return app_instance(str(APP_DIR), str(studies or env["studies"]), {**env["conf"], **conf})


def _load(path) -> tuple[np.ndarray, nib.Nifti1Image]:
    img = nib.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32), img


def _check_synthesis(data: np.ndarray, img, grid_file: Path, slices: list[int]) -> None:
    grid = nib.load(str(grid_file))
    assert img.shape == grid.shape
    np.testing.assert_allclose(img.affine, grid.affine, atol=1e-5)
    assert int(img.header["sform_code"]) == int(grid.header["sform_code"])
    assert img.get_data_dtype() == np.float32 and np.all(np.isfinite(data))
    assert data.min() >= 0.0 and data.max() <= 1.0
    brain = np.zeros(grid.shape, bool)
    for p in grid_file.parent.iterdir():
        if any(t in p.name.lower() for t in ("fla", "t2", "t1_", "t1n")):
            brain |= np.asarray(nib.load(str(p)).dataobj) != 0
    assert not np.any(data[~brain])  # background stays exactly 0
    covered = np.zeros(grid.shape, bool)
    covered[:, :, slices] = True
    assert not np.any(data[~covered])  # only the synthesized window holds values
    inside = data[brain & covered]
    assert np.count_nonzero(inside) > 0.9 * inside.size and float(inside.std()) > 0


def test_app_info_offers_one_synthesis_model(monailabel_env):
    app = _app(monailabel_env)
    info = app.info()
    assert info["name"] == "MU-Diff contrast synthesis" and info["trainers"] == {}
    model = info["models"]["mudiff_t1ce"]
    assert model["type"] == "others" and model["dimension"] == 3
    assert model["inputs"] == list(INPUTS) and model["target"] == "t1ce"
    assert model["config"]["num_samples"] == 1 and model["config"]["seed"] == 0
    assert sorted(app.datastore().list_images()) == [f"TCGA-DU-7294_{c}" for c in ("flair", "t1", "t1ce", "t2")]


def test_infer_request_returns_the_synthesis_on_the_input_grid(monailabel_env):
    app = _app(monailabel_env)
    before = file_hashes(sorted(TCGA.iterdir()))
    # the request the infer endpoint builds: model + the datastore image id the client opened (here: the real T1ce,
    # which is never read) + the task's config defaults
    result = app.infer({"model": "mudiff_t1ce", "image": "TCGA-DU-7294_t1ce", "device": "cpu"})
    out = Path(result["file"])
    try:
        assert result["label"] == str(out) and out.name.startswith("TCGA-DU-7294_syn_t1ce_")
        data, img = _load(out)
        _check_synthesis(data, img, TCGA / "TCGA-DU-7294_fla_bet.nii.gz", [38, 39, 40, 41])
        assert "slices 38-41 of 80" in img.header["descrip"].tobytes().decode()
        params = result["params"]
        assert params["subject"] == "TCGA-DU-7294" and params["contrast"] == "t1ce"
        assert {c: Path(p).name for c, p in params["inputs"].items()} == {
            "flair": "TCGA-DU-7294_fla_bet.nii.gz",
            "t2": "TCGA-DU-7294_t2_bet.nii.gz",
            "t1": "TCGA-DU-7294_t1_bet.nii.gz",
        }
        assert params["shape"] == list(img.shape) and params["value_range"] == [0.0, 1.0]
        assert params["coverage"]["first"] == 38 and params["coverage"]["count"] == 4
        assert params["num_samples"] == 1 and params["seed"] == 0 and params["saved"] == {}
        assert params["weights"] == monailabel_env["weights"] and 0 < params["mean_in_brain"] < 1
        assert params["latencies"]["infer"] > 0 and "FindStudyd" in params["latencies"]["transform"]["pre"]
        json.dumps(params)  # the server sends it as JSON
        # the same request with the same seed gives the same volume (per-slice seeded draws)
        again = app.infer({"model": "mudiff_t1ce", "image": "TCGA-DU-7294_flair", "device": "cpu"})
        np.testing.assert_array_equal(_load(again["file"])[0], data)
        Path(again["file"]).unlink()
    finally:
        out.unlink(missing_ok=True)
    assert file_hashes(sorted(TCGA.iterdir())) == before  # inputs untouched


def test_infer_by_file_path_with_samples_and_a_kept_copy(monailabel_env, tmp_path):
    """A server-side path in a subject-per-folder layout (open_ms, LAS), 2 samples, output_dir kept."""
    app = _app(monailabel_env, studies=tmp_path / "empty_studies", output_dir=str(tmp_path / "kept"))
    image = OPEN_MS / "T2_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
    result = app.infer({"model": "mudiff_t1ce", "image": str(image), "device": "cpu", "num_samples": "2", "seed": 7})
    out = Path(result["file"])
    try:
        params = result["params"]
        assert params["subject"] == "patient07" and params["num_samples"] == 2 and params["seed"] == 7
        grid = OPEN_MS / "FLAIR_N4_noneck_reduced_winsor_regtoFLAIR_brain_N4_regtoMNI.nii.gz"
        data, img = _load(out)
        _check_synthesis(data, img, grid, list(range(38, 42)))
        assert nib.aff2axcodes(img.affine) == ("L", "A", "S")
        kept = {k: Path(v) for k, v in params["saved"].items()}
        assert set(kept) == {"syn", "unc"} and kept["syn"].name == "patient07_syn_t1ce.nii.gz"
        np.testing.assert_array_equal(_load(kept["syn"])[0], data)
        std = _load(kept["unc"])[0]
        assert std.min() >= 0 and std.max() > 0 and not np.any(std[data == 0] > 0)
    finally:
        out.unlink(missing_ok=True)


def test_infer_an_upload_with_the_other_contrasts_given(monailabel_env, tmp_path):
    """An uploaded file gets a temporary name: the request says which contrast it is and where the others are."""
    upload = tmp_path / "tmpk2j4x9.nii.gz"
    shutil.copyfile(TCGA / "TCGA-DU-7294_fla_bet.nii.gz", upload)
    app = _app(monailabel_env)
    others = {"t2": "TCGA-DU-7294_t2", "t1": str(TCGA / "TCGA-DU-7294_t1_bet.nii.gz")}  # an image id and a path
    request = {"model": "mudiff_t1ce", "image": str(upload), "device": "cpu", "contrast": "FLAIR", "inputs": others}
    result = app.infer({**request, "subject": "TCGA-upload"})
    out = Path(result["file"])
    try:
        params = result["params"]
        assert params["subject"] == "TCGA-upload" and params["inputs"]["flair"] == str(upload)
        assert Path(params["inputs"]["t2"]).name == "TCGA-DU-7294_t2_bet.nii.gz"
        data, img = _load(out)
        _check_synthesis(data, img, TCGA / "TCGA-DU-7294_fla_bet.nii.gz", [38, 39, 40, 41])
    finally:
        out.unlink(missing_ok=True)
    from monailabel.interfaces.exception import MONAILabelException

    with pytest.raises(
        MONAILabelException, match=r"'contrast': 'pd' is not an input contrast of \['flair', 't2', 't1'\]"
    ):
        app.infer({**request, "contrast": "pd"})


def test_bad_requests_get_one_line_reasons(monailabel_env, tmp_path):
    from monailabel.interfaces.exception import MONAILabelError, MONAILabelException

    studies = tmp_path / "studies"
    studies.mkdir()
    for c in ("flair", "t2"):  # no T1 for this subject
        (studies / f"TCGA-DU-7294_{c}.nii.gz").symlink_to(monailabel_env["studies"] / f"TCGA-DU-7294_{c}.nii.gz")
    app = _app(monailabel_env, studies=studies)
    with pytest.raises(MONAILabelException) as err:
        app.infer({"model": "mudiff_t1ce", "image": "TCGA-DU-7294_flair", "device": "cpu"})
    assert err.value.error == MONAILabelError.INVALID_INPUT
    assert "subject TCGA-DU-7294: no 't1' image in the datastore" in err.value.msg
    # T1 given explicitly (a server-side file), and a bad sampler argument
    t1 = str(TCGA / "TCGA-DU-7294_t1_bet.nii.gz")
    with pytest.raises(MONAILabelException) as err:
        app.infer(
            {
                "model": "mudiff_t1ce",
                "image": "TCGA-DU-7294_flair",
                "device": "cpu",
                "inputs": {"t1": t1},
                "num_samples": 0,
            }
        )
    assert "'num_samples' must be >= 1" in err.value.msg
    # weights of another network configuration: the checked loader's message, not a torch stack trace
    other = tmp_path / "other.pt"
    torch.save(tiny_network(nf=16).state_dict(), other)
    app = _app(monailabel_env, studies=studies, weights=str(other))
    with pytest.raises(MONAILabelException) as err:
        app.infer({"model": "mudiff_t1ce", "image": "TCGA-DU-7294_flair", "device": "cpu", "inputs": {"t1": t1}})
    assert err.value.error == MONAILabelError.INFERENCE_ERROR and "do not fit the configured network" in err.value.msg


def test_server_routes_info_and_infer(monailabel_env):
    """The server's FastAPI app (monailabel.app) with its startup hook, driven by an in-process HTTP client."""
    from fastapi.testclient import TestClient
    from monailabel.interfaces.utils.app import clear_cache

    env = monailabel_env
    clear_cache()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(env["settings"], "MONAI_LABEL_APP_DIR", str(APP_DIR))
        mp.setattr(env["settings"], "MONAI_LABEL_STUDIES", str(env["studies"]))
        mp.setattr(env["settings"], "MONAI_LABEL_APP_CONF", env["conf"])
        from monailabel.app import app

        with TestClient(app) as client:
            info = client.get("/info/")
            assert info.status_code == 200 and info.json()["models"]["mudiff_t1ce"]["type"] == "others"
            reply = client.post(
                "/infer/mudiff_t1ce",
                params={"image": "TCGA-DU-7294_t2", "output": "image"},
                data={"params": json.dumps({"device": "cpu"})},
            )
            assert reply.status_code == 200, reply.text[:500]
            img = nib.Nifti1Image.from_bytes(gzip.decompress(reply.content))
            data = np.asarray(img.dataobj, dtype=np.float32)
            _check_synthesis(data, img, TCGA / "TCGA-DU-7294_fla_bet.nii.gz", [38, 39, 40, 41])
            reply = client.post(
                "/infer/mudiff_t1ce", params={"image": "TCGA-DU-7294_t2", "output": "json"}, data={"params": "{}"}
            )
            assert reply.status_code == 200 and reply.json()["subject"] == "TCGA-DU-7294"
            # a refused request: HTTP 400 whose detail is the one-line reason (MONAI Label alone answers a bare 500)
            reply = client.post("/infer/mudiff_t1ce", params={"image": "TCGA-DU-7249_flair", "output": "json"})
            assert reply.status_code == 400
            detail = reply.json()["detail"]
            assert detail.startswith("INVALID_INPUT: image 'TCGA-DU-7249_flair' is neither a file on the server nor")
            assert "TCGA-DU-7294_flair" in detail  # the datastore's images are listed
    clear_cache()


@pytest.mark.slow
def test_client_cli_gets_a_synthesis_over_http(monailabel_env, tmp_path):
    """scripts.monailabel_client against the real server (uvicorn on a local port): a study on the server, and a
    study sent from the client; the saved NIfTI is the synthesis on the input grid; refusals are one line."""
    import socket
    import threading
    import time

    import uvicorn
    from monailabel.interfaces.utils.app import clear_cache
    from scripts.commands.monailabel_client import main as client_main

    env = monailabel_env
    clear_cache()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(env["settings"], "MONAI_LABEL_APP_DIR", str(APP_DIR))
        mp.setattr(env["settings"], "MONAI_LABEL_STUDIES", str(env["studies"]))
        mp.setattr(env["settings"], "MONAI_LABEL_APP_CONF", env["conf"])
        from monailabel.app import app

        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.time() + 120
            while not server.started and time.time() < deadline:
                time.sleep(0.1)
            url = f"http://127.0.0.1:{port}"
            out = tmp_path / "on_server.nii.gz"
            assert client_main(["--server", url, "--image", "TCGA-DU-7294_t2", "--out", str(out)]) == 0
            data, img = _load(out)
            _check_synthesis(data, img, TCGA / "TCGA-DU-7294_fla_bet.nii.gz", [38, 39, 40, 41])
            sent = tmp_path / "sent"  # the same subject under another name, sent from here
            sent.mkdir()
            files = []
            for contrast in ("flair", "t2", "t1"):
                src = env["studies"] / f"TCGA-DU-7294_{contrast}.nii.gz"
                files.append(sent / f"SENT-01_{contrast}.nii.gz")
                shutil.copyfile(src, files[-1])
            out2 = tmp_path / "sent.nii.gz"
            argv = ["--server", url, "--files", ",".join(map(str, files)), "--out", str(out2)]
            assert client_main(argv) == 0
            np.testing.assert_allclose(_load(out2)[0], data, atol=1e-6)  # same inputs, same seed: same synthesis
            assert client_main(["--server", url, "--image", "NOBODY_t2", "--out", str(tmp_path / "x.nii.gz")]) == 2
            assert not (tmp_path / "x.nii.gz").exists()
        finally:
            server.should_exit = True
            thread.join(timeout=30)
    clear_cache()


def test_conf_models_selects_the_shipped_weights_of_a_synthesis(monailabel_env):
    settings = parse_conf({"models": "mudiff_t1ce"})
    assert settings.overrides["ckpt_path"] == str(BUNDLE_ROOT / "models" / "model.pt")
    assert parse_conf({"models": "mudiff_flair"}).overrides["ckpt_path"].endswith("models/brats_flair/model.pt")
    assert "ckpt_path" not in parse_conf({"models": "all"}).overrides
    with pytest.raises(DataError, match=r"--conf models: unknown model\(s\) \['segmentation'\]; this app serves one"):
        parse_conf({"models": "segmentation"})
    # a weights file that is not there stops the app at start-up, naming the file
    from monailabel.interfaces.exception import MONAILabelException

    with pytest.raises(MONAILabelException, match=r"nowhere\.pt: weights file not found"):
        _app(monailabel_env, weights=str(monailabel_env["root"] / "nowhere.pt"))
