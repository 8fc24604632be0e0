"""End-to-end training through the bundle configs, at a tiny size, on the embedded real sample.

Covers: a run that learns, exact resumption after a kill, two-process DDP (gloo) through torchrun, a NaN loss that
stops the run without touching the last checkpoint, and clear errors for a bad dataset or resume checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import same_state
from monai.bundle import ConfigWorkflow
from scripts.training.preflight import TrainingSetupError
from scripts.training.trainer import NonFiniteLossError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [str(REPO / "configs" / "train.yaml")]
TINY = {
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
    "epochs": 3,
    "cosine_epochs": 3,
    "lazy_reg": 2,
}


def _cli_overrides(values: dict) -> list[str]:
    out = []
    for key, value in values.items():
        out += [f"--{key}", str(value).replace(" ", "") if isinstance(value, list) else str(value)]
    return out


def _bundle_cmd(tmp: Path, extra: dict | None = None, configs: list[str] | None = None) -> list[str]:
    values = {**TINY, "ckpt_dir": str(tmp / "models"), "output_dir": str(tmp / "eval"), **(extra or {})}
    files = configs or CONFIGS
    return [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        str(files),
        "--bundle_root",
        str(REPO),
        *_cli_overrides(values),
    ]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _workflow(tmp: Path, tracking: str | None = None, **overrides) -> ConfigWorkflow:
    values = {**TINY, "bundle_root": str(REPO), "ckpt_dir": str(tmp / "models"), "output_dir": str(tmp / "eval")}
    values.update(overrides)
    return ConfigWorkflow(config_file=CONFIGS, workflow_type="train", tracking=tracking, **values)


def _network_state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["objects"]


def _epochs_done(objects: dict) -> int:
    return objects["trainer"]["iteration"] // objects["trainer"]["epoch_length"]


def _one_step(tmp: Path, **overrides) -> tuple[dict, dict, dict, int]:
    """One critic step with the R1 penalty and one generator step on a real batch; returns the losses, the updated
    weights and the bytes the generators' forward keeps for the backward pass."""
    wf = _workflow(tmp, **overrides)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("train#trainer")
    network, critic = wf.parser.get_parsed_content("network"), wf.parser.get_parsed_content("critic")
    cond, x0 = trainer.prepare_batch(next(iter(trainer.data_loader)), torch.device("cpu"), False)[:2]
    kept = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[0] += t.numel() * t.element_size()
        return t

    torch.manual_seed(0)
    losses = trainer.critic_step(cond, x0, apply_r1=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        losses.update(trainer.generator_step(cond, x0))
    losses = {k: v.item() for k, v in losses.items() if k != "pred"}
    return losses, network.state_dict(), critic.state_dict(), kept[0]


def test_activation_checkpointing_keeps_the_step_and_saves_memory(tmp_path):
    """The switch changes what is kept for the backward pass, not the result: same losses (R1 included, a gradient
    of a gradient through checkpointed critic blocks) and the same updated weights."""
    plain = _one_step(tmp_path / "plain")
    ckpt = _one_step(tmp_path / "ckpt", activation_checkpointing=True)
    for key, value in plain[0].items():
        assert ckpt[0][key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    for a, b in ((plain[1], ckpt[1]), (plain[2], ckpt[2])):
        for name, tensor in a.items():
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                torch.testing.assert_close(b[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert ckpt[3] < 0.5 * plain[3], (ckpt[3], plain[3])  # far less kept between forward and backward


def test_bf16_autocast_trains_on_the_cpu_close_to_float32(tmp_path):
    """amp on the CPU runs the forward passes in bf16 (8-bit mantissa): the step's losses stay within a few percent
    of float32's, and the weights move the same way."""
    plain = _one_step(tmp_path / "fp32")
    bf16 = _one_step(tmp_path / "bf16", amp=True)
    for key in ("g_loss", "g_l1", "d_real", "d_fake", "d_r1"):
        assert bf16[0][key] == pytest.approx(plain[0][key], rel=0.05, abs=1e-3), (key, bf16[0][key], plain[0][key])
    assert any(bf16[1][k].dtype == torch.float32 for k in bf16[1] if isinstance(bf16[1][k], torch.Tensor))


@pytest.mark.slow
def test_tiny_run_learns_logs_and_writes_a_plain_best_model(tmp_path):
    wf = _workflow(tmp_path, tracking=str(REPO / "configs" / "mlflow.yaml"), epochs=4, cosine_epochs=4, lr_g=2e-3)
    wf.initialize()
    wf.run()
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    history = evaluator.state.best_metric, evaluator.state.best_metric_epoch
    wf.finalize()
    # PSNR must improve after the first validation: the best epoch is a later one
    assert history[1] > 1, f"validation PSNR never rose above its epoch-1 value (best {history})"
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(k.startswith(("g1.", "g2.")) or k == "_extra_state" for k in state), "model.pt: a MUDiff state dict"
    assert state["_extra_state"]["config"]["nf"] == TINY["nf"]  # the weights describe their network
    resume = torch.load(tmp_path / "models" / "resume.pt", weights_only=True)
    assert set(resume["objects"]) >= {"network", "critic", "uncertainty", "g_optimizer", "d_optimizer", "trainer"}
    trainer_state = resume["objects"]["trainer"]
    assert trainer_state["iteration"] == 4 * trainer_state["epoch_length"]
    # --tracking configs/mlflow.yaml wrote every loss term and every validation to a local store; R1 only where it ran
    with sqlite3.connect(tmp_path / "eval" / "mlruns.db") as db:
        counts = dict(db.execute("select key, count(*) from metrics group by key").fetchall())
    iterations = trainer_state["iteration"]
    assert counts.get("val_psnr") == 4 and counts.get("d_real") == counts.get("g_l1") == iterations, counts
    assert 0 < counts.get("d_r1", 0) < iterations, counts
    # and TensorBoard has one event file holding losses, learning rates and image grids
    assert len(list((tmp_path / "eval").glob("events.out.tfevents.*"))) == 1


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_bundle_cmd(straight), env=_env(), check=True, capture_output=True, timeout=300)

    proc = subprocess.Popen(_bundle_cmd(killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resume = killed / "models" / "resume.pt"
    deadline = time.time() + 240
    while not resume.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(signal.SIGKILL)  # mid-epoch 2: no chance to clean up
    proc.wait()
    assert _epochs_done(_network_state(resume)) < TINY["epochs"]

    done = subprocess.run(_bundle_cmd(killed), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout + done.stderr

    a, b = _network_state(straight / "models" / "resume.pt"), _network_state(resume)
    assert _epochs_done(a) == _epochs_done(b) == TINY["epochs"]
    for name in ("network", "critic"):
        assert same_state(a[name], b[name]), f"{name} differs after resume"


@pytest.mark.slow
def test_torchrun_two_processes_on_gloo(tmp_path):
    cmd = _bundle_cmd(
        tmp_path, {"epochs": 1, "cosine_epochs": 1}, configs=[*CONFIGS, str(REPO / "configs" / "multi_gpu_train.yaml")]
    )
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2"]
    done = subprocess.run(torchrun + cmd[1:], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
    resume = torch.load(tmp_path / "models" / "resume.pt", weights_only=True)
    assert len(resume["rng"]) == 2, "each process's RNG state is kept"


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    """A finished 1-epoch run (its models/ folder holds resume.pt and model.pt), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("one_epoch")
    wf = _workflow(tmp, epochs=1)
    wf.initialize()
    wf.run()
    wf.finalize()
    return tmp


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "models", dst / "models")
    return dst


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__
    return exc


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, one_epoch_run):
    run = _copy_run(one_epoch_run, tmp_path)
    resume = run / "models" / "resume.pt"
    before = hashlib.sha256(resume.read_bytes()).hexdigest()

    wf = _workflow(run, epochs=2, lambda_l1=math.nan)
    wf.initialize()
    with pytest.raises(Exception) as info:
        wf.run()
    cause = _root_cause(info.value)
    assert isinstance(cause, NonFiniteLossError)
    assert re.search(r"non-finite loss at iteration \d+ \(epoch 2\)", str(cause)), str(cause)
    assert hashlib.sha256(resume.read_bytes()).hexdigest() == before


def test_missing_dataset_fails_before_training(tmp_path):
    wf = _workflow(tmp_path, dataset_dir=str(tmp_path / "nowhere"))
    with pytest.raises(TrainingSetupError, match="datalist file not found"):
        wf.initialize()


def test_unwritable_checkpoint_folder_fails_before_the_first_epoch(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    wf = _workflow(tmp_path, ckpt_dir=str(blocker / "models"))
    with pytest.raises(
        TrainingSetupError,
        match=r"checkpoint folder \(ckpt_dir\) .*a_file/models is not writable: .*a_file is a file, not a folder; "
        r"set --ckpt_dir",
    ):
        wf.initialize()


def test_subject_lacking_a_contrast_is_named(tmp_path, sample_datalist):
    content = sample_datalist.read_text()
    broken = tmp_path / "datalist.json"
    data = json.loads(content)
    base = sample_datalist.parent
    for split in ("training", "validation"):
        data[split] = [{k: (v if k == "subject" else str(base / v)) for k, v in it.items()} for it in data[split]]
    del data["training"][0]["t2"]
    broken.write_text(json.dumps(data))
    wf = _workflow(tmp_path, datalist_file=str(broken))
    with pytest.raises(
        TrainingSetupError, match=r"subject 'patient07' in split 'training' lacks contrast\(s\) \['t2'\]"
    ):
        wf.initialize()


@pytest.mark.slow
def test_worker_count_and_a_resume_leave_the_run_unchanged(tmp_path):
    """Data loading never touches the training RNG: 0 or 2 workers, straight or stopped after epoch 1 and resumed,
    the weights after 2 epochs are bit-identical."""

    def run(folder: Path, epochs: int, workers: int) -> dict:
        wf = _workflow(folder, epochs=epochs, num_workers=workers)
        wf.initialize()
        wf.run()
        wf.finalize()
        return _network_state(folder / "models" / "resume.pt")

    straight0 = run(tmp_path / "w0", 2, 0)
    straight2 = run(tmp_path / "w2", 2, 2)
    run(tmp_path / "r2", 1, 2)
    resumed2 = run(tmp_path / "r2", 2, 2)
    assert _epochs_done(straight0) == _epochs_done(straight2) == _epochs_done(resumed2) == 2
    for name in ("network", "critic"):
        for other in (straight2, resumed2):
            diffs = {
                k: (v - other[name][k]).abs().max().item()
                for k, v in straight0[name].items()
                if isinstance(v, torch.Tensor) and v.is_floating_point()
            }
            assert max(diffs.values()) == 0.0, (name, max(diffs.items(), key=lambda kv: kv[1]))


def test_resuming_a_finished_run_says_there_is_nothing_to_train(tmp_path, one_epoch_run, capfd):
    run = _copy_run(one_epoch_run, tmp_path)
    wf = _workflow(run, epochs=1)  # the bundle's logging.conf replaces the root handlers: read the console
    wf.initialize()
    wf.run()
    wf.finalize()
    out = "".join(capfd.readouterr())
    assert "has already finished epoch 1 of 1 (--epochs), so there is nothing left to train" in out, out[-2000:]
    assert "--ckpt_dir" in out


@pytest.mark.slow
def test_a_nan_loss_on_the_command_line_is_one_line(tmp_path):
    done = subprocess.run(
        _bundle_cmd(tmp_path, {"lambda_l1": "nan", "epochs": 1}),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1 and "Traceback" not in output, output[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith("error: non-finite loss at iteration 1 (epoch 1)")


def test_resume_checkpoint_of_another_configuration_is_refused(tmp_path, one_epoch_run):
    run = _copy_run(one_epoch_run, tmp_path)
    wf = _workflow(run, epochs=2, nf=16)
    with pytest.raises(TrainingSetupError, match=r"written by another configuration \(network: checkpoint \[8,"):
        wf.initialize()


def test_finetuning_starts_from_the_given_weights(tmp_path, one_epoch_run):
    """With both learning rates at 0 the weights cannot move, so the saved model must equal the fine-tuning file."""
    start = one_epoch_run / "models" / "model.pt"
    wf = _workflow(tmp_path, epochs=1, finetune_ckpt=str(start), lr_g=0.0, lr_d=0.0, lr_min=0.0)
    wf.initialize()
    wf.run()
    wf.finalize()
    expected = torch.load(start, weights_only=True)
    saved = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert same_state(expected, saved)


def test_a_two_input_task_trains_and_synthesizes_without_hand_edits(tmp_path):
    """The number of input contrasts follows the task everywhere (networks, sampler, inference) from one key."""
    from monai.bundle import ConfigParser

    task = "t1,flair->t1ce"
    wf = _workflow(tmp_path, epochs=1, cosine_epochs=1, task=task)
    wf.initialize()
    wf.run()
    wf.finalize()
    weights = tmp_path / "models" / "model.pt"
    record = torch.load(weights, weights_only=True)["_extra_state"]
    assert record["config"]["cond_channels"] == 2 and record["record"]["task"] == task
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(REPO), "ckpt_path": str(weights)})
    assert parser.get_parsed_content("task") == task  # inference follows the weights
    sampler, network = parser.get_parsed_content("sampler"), parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(weights, weights_only=True))
    cond = torch.zeros(2, 2, TINY["spatial_size"], TINY["spatial_size"])
    assert sampler(cond, network).shape == (2, 1, TINY["spatial_size"], TINY["spatial_size"])


def test_missing_finetuning_file_is_named(tmp_path):
    wf = _workflow(tmp_path, finetune_ckpt=str(tmp_path / "published.pt"))
    with pytest.raises(TrainingSetupError, match="finetune_ckpt not found: .*published.pt"):
        wf.initialize()


def test_ema_weights_are_validated_saved_and_resumable(tmp_path):
    wf = _workflow(tmp_path, epochs=1, use_ema=True, ema_decay=0.5)
    wf.initialize()
    wf.run()
    ema = wf.parser.get_parsed_content("ema").eval_network.state_dict()
    raw = wf.parser.get_parsed_content("network").state_dict()
    wf.finalize()
    saved = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    resume = torch.load(tmp_path / "models" / "resume.pt", weights_only=True)["objects"]
    assert same_state(saved, ema), "model.pt must hold the EMA weights"
    assert not same_state(ema, raw), "the EMA copy must differ from the raw weights"
    assert same_state(resume["ema"], ema)
