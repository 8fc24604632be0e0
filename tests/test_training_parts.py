"""Loss terms and the resume-checkpoint machinery of the trainer, tested in isolation."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from scripts.training.checkpoint import (
    BestMetricState,
    ResumeCheckpoint,
    ResumeCheckpointError,
    rng_state,
    set_rng_state,
)
from scripts.training.losses import mutual_consistency_loss, r1_penalty


def test_r1_penalty_matches_the_analytic_gradient():
    """For a linear critic D(x) = <w, x>, dD/dx = w, so R1 = gamma/2 * ||w||^2 for every sample."""
    w = torch.randn(1, 1, 8, 8, requires_grad=True)
    x = torch.randn(3, 1, 8, 8, requires_grad=True)
    logit = (x * w).flatten(1).sum(1)
    penalty = r1_penalty(logit, x, gamma=2.0)
    assert torch.allclose(penalty, w.detach().pow(2).sum(), rtol=1e-6)
    assert penalty.requires_grad  # the critic update needs its graph


def test_mutual_consistency_is_the_map_weighted_bce_of_each_sample_against_the_other():
    s1, s2 = torch.randn(2, 1, 6, 6), torch.randn(2, 1, 6, 6)
    m1, m2 = torch.rand(2, 1, 6, 6), torch.rand(2, 1, 6, 6)
    expected = (m2 * (F.softplus(s1) - torch.sigmoid(s2) * s1)).mean() + (
        m1 * (F.softplus(s2) - torch.sigmoid(s1) * s2)
    ).mean()
    assert torch.allclose(mutual_consistency_loss(s1, s2, m1, m2), expected, atol=1e-6)
    zero = torch.zeros_like(m1)
    assert mutual_consistency_loss(s1, s2, zero, zero) == 0


def test_rng_state_round_trip_reproduces_every_generator(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = rng_state()
    torch.save(state, tmp_path / "rng.pt")
    first = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    second = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(first[0], second[0])
    assert np.array_equal(first[1], second[1])
    assert first[2] == second[2]


def _engine() -> Engine:
    engine = Engine(lambda e, b: None)
    engine.state.max_epochs = 2
    return engine


def test_resume_checkpoint_restores_objects_and_refuses_another_configuration(tmp_path):
    path = str(tmp_path / "resume.pt")
    net = torch.nn.Linear(3, 2)
    ResumeCheckpoint(path, {"net": net}, fingerprint={"nf": 64}).save(_engine())
    restored = torch.nn.Linear(3, 2)
    ResumeCheckpoint(path, {"net": restored}, fingerprint={"nf": 64}).load(_engine())
    assert torch.equal(restored.weight, net.weight)

    with pytest.raises(ResumeCheckpointError, match=r"another configuration \(nf: checkpoint 64 vs config 32\)"):
        ResumeCheckpoint(path, {"net": restored}, fingerprint={"nf": 32}).check()
    with pytest.raises(ResumeCheckpointError, match="lacks"):
        ResumeCheckpoint(path, {"net": restored, "critic": net}, fingerprint={"nf": 64}).check()


def test_resume_keeps_the_best_validation_metric_so_a_worse_epoch_cannot_replace_the_best_model(tmp_path):
    """Without it a resumed run took its first validated epoch for the best and overwrote the best model."""
    path = str(tmp_path / "resume.pt")
    evaluator = _engine()
    evaluator.state.best_metric, evaluator.state.best_metric_epoch = 24.63, 9
    ResumeCheckpoint(path, {"validation": BestMetricState(evaluator)}).save(_engine())
    fresh = _engine()
    fresh.state.best_metric, fresh.state.best_metric_epoch = -1, -1  # what MONAI's evaluator starts with
    ResumeCheckpoint(path, {"validation": BestMetricState(fresh)}).load(_engine())
    assert (fresh.state.best_metric, fresh.state.best_metric_epoch) == (pytest.approx(24.63), 9)
    # a checkpoint written before the entry existed still resumes (weights restored), the best metric is not
    old = str(tmp_path / "old.pt")
    net = torch.nn.Linear(3, 2)
    ResumeCheckpoint(old, {"net": net}).save(_engine())
    restored, later = torch.nn.Linear(3, 2), _engine()
    later.state.best_metric = -1
    ResumeCheckpoint(old, {"net": restored, "validation": BestMetricState(later)}).load(_engine())
    assert torch.equal(restored.weight, net.weight) and later.state.best_metric == -1


def test_resume_checkpoint_names_an_unreadable_file(tmp_path):
    path = tmp_path / "resume.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ResumeCheckpointError, match=r"resume checkpoint file .*resume\.pt cannot be read"):
        ResumeCheckpoint(str(path), {"net": torch.nn.Linear(1, 1)}).check()


def test_ema_restarts_from_the_weights_the_run_starts_with():
    """Under DDP the EMA copy is made before rank 0's weights are broadcast: a fresh run must average from the
    broadcast weights, a resumed one must keep its saved average."""
    from scripts.training.handlers import GeneratorEMA

    def run(resumed: bool) -> tuple[torch.nn.Module, GeneratorEMA]:
        torch.manual_seed(1)
        net = torch.nn.Linear(4, 2)
        ema = GeneratorEMA(net, decay=0.9, enabled=True)
        with torch.no_grad():  # what DDP's broadcast does to the network on rank > 0
            for p in net.parameters():
                p.add_(1.0)
        engine = Engine(lambda e, b: None)
        if resumed:  # the resume checkpoint is loaded at STARTED, before the EMA's own handler (attached later)
            engine.add_event_handler(Events.STARTED, lambda e: setattr(e.state, "iteration", 3))
        ema.attach(engine)
        engine.run([0, 1, 2], max_epochs=1)
        return net, ema

    net, ema = run(resumed=False)
    for a, b in zip(ema.eval_network.parameters(), net.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    net, ema = run(resumed=True)
    diffs = [(a - b).abs().max().item() for a, b in zip(ema.eval_network.parameters(), net.parameters(), strict=True)]
    assert min(diffs) > 0.5  # the (pretend) saved average was kept, not replaced by the current weights
