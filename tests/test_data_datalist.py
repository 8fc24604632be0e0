"""Dataset discovery on folders named like BraTS2019, BraTS 2023, ISLES2015 SISS and a generic layout."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
import pytest
from conftest import SAMPLE_DIR, sample_item
from scripts.commands.prepare_datalist import prepare as prepare_cli
from scripts.data.datalist import load_datalist, paper_split_lists, prepare_datalist, split_subjects
from scripts.data.errors import DataError
from scripts.data.pipeline import build_slice_dataset

BRATS19_SUFFIX = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "lesion": "seg"}
BRATS23_SUFFIX = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "lesion": "seg"}


def link_subject(folder, source: dict, names: dict[str, str]) -> None:
    os.makedirs(folder, exist_ok=True)
    for key, name in names.items():
        if key in source:
            os.symlink(source[key], os.path.join(folder, name))


@pytest.fixture()
def brats19_dir(tmp_path):
    root = tmp_path / "MICCAI_BraTS_2019_Data_Training"
    subjects = {  # paper split: ANP_1 test, TCIA08_105_1 validation, AAB_1 training; 2013_0_1 is not in the lists
        "HGG/BraTS19_CBICA_ANP_1": "TCGA-DU-7294",
        "LGG/BraTS19_TCIA08_105_1": "BraTS-GLI-00001-000",
        "HGG/BraTS19_CBICA_AAB_1": "patient07",
        "HGG/BraTS19_2013_0_1": "patient19",
    }
    for rel, source in subjects.items():
        sid = os.path.basename(rel)
        link_subject(root / rel, sample_item(source), {k: f"{sid}_{v}.nii.gz" for k, v in BRATS19_SUFFIX.items()})
    return root


def test_brats2019_folder_uses_the_paper_split(brats19_dir, tmp_path):
    out = tmp_path / "lists" / "brats19.json"
    datalist = prepare_datalist(str(brats19_dir), output=str(out))
    assert datalist["layout"] == "brats2019" and datalist["split_method"] == "paper"
    ids = {k: [it["subject"] for it in datalist[k]] for k in ("training", "validation", "test", "unused")}
    assert ids == {
        "training": ["BraTS19_CBICA_AAB_1"],
        "validation": ["BraTS19_TCIA08_105_1"],
        "test": ["BraTS19_CBICA_ANP_1"],
        "unused": ["BraTS19_2013_0_1"],
    }
    on_disk = json.loads(out.read_text())
    item = on_disk["test"][0]
    assert set(item) == {"subject", "t1", "t1ce", "t2", "flair", "lesion"}
    assert not os.path.isabs(item["t1"])  # portable: relative to the JSON's folder
    assert [f for f in os.listdir(out.parent) if f.startswith(".tmp_")] == []
    loaded = load_datalist(str(out), "test")[0]
    assert loaded["t1ce"] == str(brats19_dir / "HGG/BraTS19_CBICA_ANP_1/BraTS19_CBICA_ANP_1_t1ce.nii.gz")
    assert all(os.path.isfile(v) for k, v in loaded.items() if k != "subject")
    assert len(build_slice_dataset(str(out), split="test", task="brats_t1ce")) == 80  # counted from headers


def test_brats2018_naming_is_found_and_matched_to_the_paper_lists(tmp_path):
    """``Brats18_<id>/Brats18_<id>_t1.nii.gz`` (the official BraTS 2018 layout, lower-case "rats") is the BraTS2019
    layout; its subjects are matched to the paper's ``BraTS19_<id>`` lists by ``<id>``."""
    root = tmp_path / "brats18"
    for sid in ("Brats18_2013_2_1", "Brats18_2013_20_1"):  # real, embedded; named as the paper's lists' subjects
        link_subject(root / sid, sample_item(sid), {k: f"{sid}_{v}.nii.gz" for k, v in BRATS19_SUFFIX.items()})
    os.rename(root / "Brats18_2013_20_1", root / "Brats18_TCIA10_628_1")  # a paper validation subject
    for name in os.listdir(root / "Brats18_TCIA10_628_1"):
        os.rename(
            root / "Brats18_TCIA10_628_1" / name, root / "Brats18_TCIA10_628_1" / name.replace("2013_20", "TCIA10_628")
        )
    datalist = prepare_datalist(str(root), output=str(tmp_path / "d.json"))
    assert datalist["layout"] == "brats2019" and datalist["split_method"] == "paper"
    assert [it["subject"] for it in datalist["validation"]] == ["Brats18_TCIA10_628_1"]
    assert [it["subject"] for it in datalist["unused"]] == ["Brats18_2013_2_1"]  # in none of the paper's lists
    assert set(datalist["unused"][0]) == {"subject", "t1", "t1ce", "t2", "flair", "lesion"}
    assert prepare_datalist(str(root), layout="brats2019")["num_subjects"]["validation"] == 1


def test_fixed_split_file(tmp_path):
    """``split=<file>`` assigns subjects exactly as a recorded split (the demo model's brats18 split); subjects the
    file names but the folder lacks, or a subject in two splits, are refused by name."""
    root = tmp_path / "brats18"
    for sid in ("Brats18_2013_2_1", "Brats18_2013_20_1"):
        link_subject(root / sid, sample_item(sid), {k: f"{sid}_{v}.nii.gz" for k, v in BRATS19_SUFFIX.items()})
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"reason": "a test", "training": ["Brats18_2013_20_1"], "test": ["Brats18_2013_2_1"]}))
    datalist = prepare_datalist(str(root), split=str(split))
    assert datalist["split_method"] == "fixed" and datalist["split_file"] == str(split)
    assert datalist["num_subjects"] == {"training": 1, "validation": 0, "test": 1, "unused": 0}
    split.write_text(json.dumps({"training": ["Brats18_2013_20_1", "Brats18_CBICA_AAA_1"]}))
    with pytest.raises(
        DataError, match=r"subjects of the split file are not in the dataset folder: \['Brats18_CBICA_AAA_1'\]"
    ):
        prepare_datalist(str(root), split=str(split))
    split.write_text(json.dumps({"training": ["Brats18_2013_20_1"], "test": ["Brats18_2013_20_1"]}))
    with pytest.raises(DataError, match="listed in more than one split: \\['Brats18_2013_20_1'\\]"):
        prepare_datalist(str(root), split=str(split))
    with pytest.raises(DataError, match="nowhere.json: split file not found"):
        prepare_datalist(str(root), split=str(tmp_path / "nowhere.json"))


def test_demo_split_file_covers_the_shared_brats18_folder(repo_root):
    """The recorded demo split: 11 / 2 / 2 of the 15 BraTS 2018 subjects, test subjects in none of the paper's
    lists, validation = the paper's own validation subjects; the embedded test subjects are exactly its test."""
    from scripts.data.datalist import read_split_file

    split = read_split_file(str(repo_root / "scripts/data/splits/brats18_demo.json"))
    assert [len(split[k]) for k in ("training", "validation", "test")] == [11, 2, 2]
    paper = {s.split("_", 1)[1]: k for k, ids in paper_split_lists("brats").items() for s in ids}
    assert all(s.split("_", 1)[1] not in paper for s in split["test"])
    assert all(paper.get(s.split("_", 1)[1]) == "validation" for s in split["validation"])
    embedded = json.loads((SAMPLE_DIR / "datalist.json").read_text())
    assert [it["subject"] for it in embedded["test"]] == split["test"]


def test_paper_split_lists_match_the_paper():
    brats, isles = paper_split_lists("brats"), paper_split_lists("isles")
    assert [len(brats[k]) for k in ("training", "validation", "test")] == [214, 61, 30]
    assert not set(brats["training"]) & set(brats["test"])
    assert sorted(isles["training"], key=int) == [str(i) for i in range(1, 21)]
    assert isles["validation"] == ["21", "22"] and isles["test"] == ["23", "24", "25", "26", "27"]


def test_brats2023_folder_gets_a_seeded_split(tmp_path):
    root = tmp_path / "brats2023"
    sources = {
        "BraTS-GLI-00001-000": "BraTS-GLI-00001-000",
        "BraTS-GLI-00002-000": "TCGA-DU-7294",
        "BraTS-MEN-00003-000": "patient07",
        "BraTS-GLI-00004-001": "patient19",
    }
    for sid, source in sources.items():
        item = sample_item(source)
        names = {k: f"{sid}-{v}.nii.gz" for k, v in BRATS23_SUFFIX.items() if k != "lesion" or source == "patient07"}
        link_subject(root / sid, item, names)
    a = prepare_datalist(str(root), val_fraction=0.25, test_fraction=0.25, seed=3)
    b = prepare_datalist(str(root), val_fraction=0.25, test_fraction=0.25, seed=3)
    assert a["layout"] == "brats2023" and a["split_method"] == "random"
    assert a["num_subjects"] == {"training": 2, "validation": 1, "test": 1, "unused": 0}
    ids = [it["subject"] for k in ("training", "validation", "test") for it in a[k]]
    assert sorted(ids) == sorted(sources)
    assert a == b
    seeds = {
        tuple(
            it["subject"] for it in prepare_datalist(str(root), seed=s, val_fraction=0.25, test_fraction=0.25)["test"]
        )
        for s in range(6)
    }
    assert len(seeds) > 1  # the seed matters
    men = next(it for k in ("training", "validation", "test") for it in a[k] if it["subject"] == "BraTS-MEN-00003-000")
    assert men["t1ce"].endswith("BraTS-MEN-00003-000-t1c.nii.gz") and "lesion" in men


def _tiny_nii(src: str, dst: str) -> None:
    img = nib.load(src)
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[30:40, 30:40, 30:35], img.affine), dst)


def test_isles2015_siss_folder_uses_the_paper_split(tmp_path):
    root = tmp_path / "SISS2015_Training"
    dwi = sample_item("sub-strokecase0009")["dwi"]
    for case, base in (("1", 70610), ("21", 70710), ("23", 70810), ("28", 70910)):
        for offset, part in enumerate(("MR_Flair", "MR_T1", "MR_T2", "MR_DWI", "OT")):
            name = f"VSD.Brain.XX.O.{part}.{base + offset}"
            os.makedirs(root / case / name)
            _tiny_nii(dwi, str(root / case / name / f"{name}.nii"))
    datalist = prepare_datalist(str(root))
    assert datalist["layout"] == "isles2015" and datalist["split_method"] == "paper"
    ids = {k: [it["subject"] for it in datalist[k]] for k in ("training", "validation", "test", "unused")}
    assert ids == {"training": ["1"], "validation": ["21"], "test": ["23"], "unused": ["28"]}
    item = datalist["test"][0]
    assert item["flair"].endswith("VSD.Brain.XX.O.MR_Flair.70810.nii")
    assert item["lesion"].endswith("VSD.Brain.XX.O.OT.70814.nii")
    assert set(item) == {"subject", "flair", "t1", "t2", "dwi", "lesion"}


OPEN_MS_PATTERNS = {
    "t1": "T1_*.nii.gz",
    "t1ce": "T1POST_*.nii.gz",
    "t2": "T2_*.nii.gz",
    "flair": "FLAIR_*.nii.gz",
    "lesion": "GOLD_STANDARD_*.nii.gz",
}


def test_generic_layout_with_patterns(tmp_path, capsys):
    out = tmp_path / "open_ms.json"
    datalist = prepare_cli(
        data_dir=str(SAMPLE_DIR / "open_ms"),
        output=str(out),
        patterns=json.dumps(OPEN_MS_PATTERNS),
        val_fraction=0.5,
        test_fraction=0.0,
    )
    assert "layout generic, random split: training 1, validation 1, test 0" in capsys.readouterr().out
    assert datalist["layout"] == "generic"
    items = load_datalist(str(out), "all")
    assert sorted(it["subject"] for it in items) == ["patient07", "patient19"]
    assert all(os.path.basename(it["t1"]).startswith("T1_N4") for it in items)
    pattern_file = tmp_path / "patterns.yaml"
    pattern_file.write_text("\n".join(f"{k}: '{v}'" for k, v in OPEN_MS_PATTERNS.items()))
    again = prepare_datalist(str(SAMPLE_DIR / "open_ms"), layout="generic", patterns=str(pattern_file))
    assert sorted(it["subject"] for k in ("training", "validation", "test") for it in again[k]) == [
        "patient07",
        "patient19",
    ]


def test_generic_layout_problems_are_named(tmp_path):
    with pytest.raises(DataError, match=r"pattern 'T1\*' for 't1' matches several files"):
        prepare_datalist(str(SAMPLE_DIR / "open_ms"), patterns={"t1": "T1*"})
    with pytest.raises(DataError, match=r"2 subject\(s\) miss required files: patient07: \['dwi'\]"):
        prepare_datalist(str(SAMPLE_DIR / "open_ms"), patterns={**OPEN_MS_PATTERNS, "dwi": "*dwi*"})
    with pytest.raises(DataError, match="no subject has all"):
        prepare_datalist(str(SAMPLE_DIR / "open_ms"), patterns={**OPEN_MS_PATTERNS, "dwi": "*dwi*"}, on_missing="skip")
    with pytest.raises(DataError, match="unknown layout 'brats2021'"):
        prepare_datalist(str(SAMPLE_DIR), layout="brats2021")


def test_incomplete_subject_is_reported_or_skipped(brats19_dir):
    os.remove(brats19_dir / "HGG/BraTS19_CBICA_AAB_1/BraTS19_CBICA_AAB_1_flair.nii.gz")
    with pytest.raises(DataError, match=r"BraTS19_CBICA_AAB_1: \['flair'\]"):
        prepare_datalist(str(brats19_dir))
    datalist = prepare_datalist(str(brats19_dir), on_missing="skip")
    assert datalist["skipped"] == [{"subject": "BraTS19_CBICA_AAB_1", "missing": ["flair"]}]
    assert datalist["training"] == []


def test_random_split_sizes():
    method, groups = split_subjects([f"s{i}" for i in range(10)], "random", val_fraction=0.2, test_fraction=0.1)
    assert method == "random" and [len(groups[k]) for k in ("training", "validation", "test")] == [7, 2, 1]
    _, one = split_subjects(["only"], "random")
    assert one["training"] == ["only"]
    with pytest.raises(DataError, match="no paper split for layout 'generic'"):
        split_subjects(["a"], "paper", layout="generic")


def test_sample_datalist_is_complete(sample_datalist):
    for split in ("training", "validation", "test"):
        for item in load_datalist(str(sample_datalist), split):
            assert {"t1", "t1ce", "t2", "flair", "lesion"} <= set(item)
            assert all(os.path.isfile(v) for k, v in item.items() if k != "subject")
    isles = load_datalist(str(sample_datalist), "isles22")
    assert [it["subject"] for it in isles] == ["sub-strokecase0009"]


def test_an_unwritable_output_is_one_line_before_the_folder_is_searched(tmp_path, capsys):
    """A file where the output's folder should be: the command names the datalist and the blocking file (it used to
    print a bare "[Errno 17] File exists" after searching the whole dataset), and writes nothing."""
    from scripts.commands.prepare_datalist import main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "datalist.json"
    assert main(["--data_dir", str(tmp_path / "nowhere"), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err
        == f"error: datalist {out}: its folder {blocker} is not writable: {blocker} is a file, not a folder; "
        + ("choose another --output")
    )
    assert blocker.read_text() == "not a folder"
