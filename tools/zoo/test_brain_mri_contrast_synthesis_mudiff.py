"""Unit tests of the brain_mri_contrast_synthesis_mudiff bundle in the MONAI Model Zoo's style.

The zoo keeps this file as ci/unit_tests/test_brain_mri_contrast_synthesis_mudiff.py and runs it from its root with
``python ci/unit_tests/runner.py --b brain_mri_contrast_synthesis_mudiff`` (tools/zoo_checks.py lays out such a
root). Both configs run through monai.bundle's ConfigWorkflow, as a user would run them, on the bundle's embedded
real sample: inference with the shipped weights on a few slices of one held-out BraTS subject, and one tiny
training epoch. Together they take a couple of minutes on a CPU.
"""

import json
import os
import shutil
import sys
import tempfile
import unittest

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigWorkflow
from parameterized import parameterized
from utils import check_workflow

BUNDLE_ROOT = "models/brain_mri_contrast_synthesis_mudiff"
SUBJECT = "Brats18_2013_2_1"  # a held-out subject of the embedded sample (sample_data/datalist.json, split "test")

# the shipped weights carry their own network and slicing settings; only the amount of work is cut down here
TEST_CASE_INFER = [{"bundle_root": BUNDLE_ROOT, "num_slices": 4, "num_samples": 1, "infer_batch_size": 4}]

# a tiny network at 32 x 32 on 4 slices per subject (tests/test_training.py's configuration), one epoch
TEST_CASE_TRAIN = [
    {
        "bundle_root": BUNDLE_ROOT,
        "epochs": 1,
        "cosine_epochs": 1,
        "spatial_size": 32,
        "num_slices": 4,
        "nf": 8,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "ngf": 8,
        "critic_blocks": 3,
        "batch_size": 2,
        "val_batch_size": 4,
        "lazy_reg": 2,
    }
]


def _workflow(workflow_type, config, override):
    bundle_root = override["bundle_root"]
    sys.path = [bundle_root] + sys.path
    return ConfigWorkflow(
        workflow_type=workflow_type,
        config_file=os.path.join(bundle_root, "configs", config),
        logging_file=os.path.join(bundle_root, "configs/logging.conf"),
        meta_file=os.path.join(bundle_root, "configs/metadata.json"),
        **override,
    )


class TestMUDiffBundle(unittest.TestCase):
    def setUp(self):
        self.work_dir = tempfile.mkdtemp()
        sample_dir = os.path.join(BUNDLE_ROOT, "sample_data")
        with open(os.path.join(sample_dir, "datalist.json")) as f:
            sample = json.load(f)
        item = next(i for i in sample["test"] if i["subject"] == SUBJECT)
        # one subject, its paths made absolute, as a datalist of its own
        self.item = {k: v if k == "subject" else os.path.abspath(os.path.join(sample_dir, v)) for k, v in item.items()}
        self.datalist = os.path.join(self.work_dir, "datalist.json")
        with open(self.datalist, "w") as f:
            json.dump({"test": [self.item]}, f)

    def tearDown(self):
        shutil.rmtree(self.work_dir)

    @parameterized.expand([TEST_CASE_INFER])
    def test_inference_with_shipped_weights(self, override):
        output_dir = os.path.join(self.work_dir, "out")
        override = {**override, "datalist_file": self.datalist, "output_dir": output_dir}
        inferrer = _workflow("infer", "inference.yaml", override)
        check_workflow(inferrer, check_properties=True)

        synthesis = os.path.join(output_dir, f"{SUBJECT}_syn_t1ce.nii.gz")
        self.assertTrue(os.path.isfile(synthesis), f"no synthesis written: {sorted(os.listdir(output_dir))}")
        image, reference = nib.load(synthesis), nib.load(self.item["flair"])
        self.assertEqual(image.shape, reference.shape)  # on the input's own grid
        np.testing.assert_allclose(image.affine, reference.affine, atol=1e-5)
        data = np.asarray(image.dataobj, dtype=np.float32)
        self.assertTrue(np.isfinite(data).all())
        made = np.flatnonzero(data.reshape(-1, data.shape[-1]).any(axis=0))
        self.assertEqual(len(made), override["num_slices"])  # the middle slices were synthesized, the rest left empty
        self.assertGreater(float(data[..., made].std()), 1e-3)

    @parameterized.expand([TEST_CASE_TRAIN])
    def test_train_one_epoch(self, override):
        ckpt_dir = os.path.join(self.work_dir, "models")
        override = {**override, "ckpt_dir": ckpt_dir, "output_dir": os.path.join(self.work_dir, "eval")}
        trainer = _workflow("train", "train.yaml", override)
        check_workflow(trainer, check_properties=True)

        weights = os.path.join(ckpt_dir, "model.pt")
        self.assertTrue(os.path.isfile(weights), f"no model.pt written: {sorted(os.listdir(ckpt_dir))}")
        state = torch.load(weights, map_location="cpu", weights_only=True)
        self.assertTrue(any(k.startswith("g1.") for k in state) and any(k.startswith("g2.") for k in state))


if __name__ == "__main__":
    unittest.main()
