"""A random backbone's BatchNorm statistics measured on the data: by hand, through a trial, a
probe grid and a restore."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import Workspace
from selfstudy import notes
from selfstudy.folders import SNAPSHOT
from selfstudy.models.calibrate import calibrate_batchnorm
from selfstudy.models.resnet import ResNet
from selfstudy.probe_trial import GridTrial
from selfstudy.trial import Trial
from selfstudy.trials import open_trial

# A linear probe of a random ResNet-9 (width 8) on digits' 1,200 training images, batches of 64.
PROBE = {"seed": 3, "Wrapper.finetune_classifier": False, "augment.crop": 0, "ResNet.width": 8,
         "dataloader.batch_size": 64, "scheduler.milestones": [1, 2]}


def pass_statistics(layer: nn.Module, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """What BatchNorm with momentum None accumulates over a pass: the mean of the per-batch
    channel means and the mean of the per-batch unbiased channel variances of `layer(batch)`."""
    outputs = [layer(batch) for batch in batches]
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in outputs])
    variances = torch.stack([x.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for x in outputs])
    return means.mean(dim=0), variances.mean(dim=0)


def test_calibration_gives_the_mean_of_the_batches_statistics_and_changes_nothing_else() -> None:
    torch.manual_seed(0)
    backbone = ResNet("resnet9", width=4, input_res=16, freeze_at_k=-1)  # a frozen stem is calibrated too
    backbone.eval()
    backbone.layer1.train()  # modes are put back, each as it was
    backbone.prep[1].momentum = 0.3
    weights = {name: value.clone() for name, value in backbone.named_parameters()}
    batches = [torch.randn(n, 3, 16, 16) * 2 + 1 for n in (5, 3, 2)]  # a short last batch counts as one batch
    rng = torch.get_rng_state()
    with torch.no_grad():
        mean, var = pass_statistics(backbone.prep[0], batches)
    assert calibrate_batchnorm(backbone, iter(batches)) == 3
    bn = backbone.prep[1]
    assert torch.allclose(bn.running_mean, mean, atol=1e-5) and torch.allclose(bn.running_var, var, rtol=1e-5)
    assert not torch.allclose(bn.running_var, torch.ones_like(var))  # not the initial statistics
    assert int(bn.num_batches_tracked) == 3 and bn.momentum == 0.3 and backbone.layer3[2].body[0][1].momentum == 0.1
    assert not backbone.training and backbone.layer1.training and not backbone.prep.training
    assert all(torch.equal(value, weights[name]) for name, value in backbone.named_parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_random_probe_is_calibrated_on_every_training_image(workspace: Workspace) -> None:
    notes.forget_printed()
    trial = open_trial(PROBE)
    assert type(trial) is Trial and trial.model.calibrate_random
    assert any("Wrapper.calibrate_random: the random backbone's BatchNorm statistics are those of one pass over "
               "the 1200 training images (19 batches)" in text for text in notes.seen())
    batches = [batch.images for batch in trial.splits["train"].batches(64, -1)]  # all 1,200 in file order, plain
    assert len(trial.splits["train"]) == 1200 and len(batches) == 19
    backbone = trial.model.backbone
    with torch.no_grad():
        mean, var = pass_statistics(backbone.prep[0], batches)
    bn = backbone.prep[1]
    assert torch.allclose(bn.running_mean, mean, atol=1e-5) and torch.allclose(bn.running_var, var, rtol=1e-4)
    before = {name: value.clone() for name, value in backbone.state_dict().items()}
    trial.run_epoch()  # the frozen backbone keeps them while its probe trains
    assert all(torch.equal(value, before[name]) for name, value in backbone.state_dict().items())
    budget = open_trial({**PROBE, "BaseDataset.semisupervised": 100})  # a budget labels 100; all calibrate
    assert len(budget.splits["train"]) == 100
    assert torch.equal(budget.model.backbone.prep[1].running_var, bn.running_var)


def test_calibration_draws_no_random_number_and_can_be_switched_off(workspace: Workspace) -> None:
    calibrated = open_trial(PROBE)
    streams = torch.get_rng_state(), calibrated.prep.generator.get_state()
    plain = open_trial({**PROBE, "Wrapper.calibrate_random": False})
    assert torch.equal(torch.get_rng_state(), streams[0])  # the same draws after setup, calibrated or not
    assert torch.equal(plain.prep.generator.get_state(), streams[1])
    bn = plain.model.backbone.prep[1]
    assert not plain.model.calibrate_random and bn.running_mean.abs().max() == 0 and (bn.running_var == 1).all()
    assert torch.equal(plain.model.backbone.prep[0].weight, calibrated.model.backbone.prep[0].weight)


@pytest.mark.parametrize("settings", [{"Wrapper.finetune_classifier": None},
                                      {"Wrapper.finetune_classifier": False, "Wrapper.run_selfsup": True,
                                       "session.task": "RotateTask"}],
                         ids=["trained backbone", "self-supervised"])
def test_only_a_frozen_random_probe_is_calibrated(workspace: Workspace, settings: dict[str, Any]) -> None:
    trial = open_trial({**PROBE, **settings})
    assert not trial.model.calibrate_random and trial.model.backbone.prep[1].running_mean.abs().max() == 0


def test_a_probe_grid_encodes_with_the_calibrated_statistics(workspace: Workspace) -> None:
    grid = open_trial({**PROBE, "probe_grid.lrs": [0.1, 0.3], "probe_grid.budgets": [100, 0]})
    assert isinstance(grid, GridTrial) and grid.model.calibrate_random
    alone = open_trial(PROBE)
    for name, value in alone.model.backbone.state_dict().items():
        assert torch.equal(grid.model.backbone.state_dict()[name], value), name
    assert grid.model.backbone.prep[1].running_mean.abs().max() > 0


def test_a_restored_probe_takes_the_statistics_of_its_snapshot(workspace: Workspace, tmp_path: Path) -> None:
    straight = open_trial(PROBE)
    history = [straight.run_epoch(), straight.run_epoch()]
    first = open_trial(PROBE)
    first.run_epoch()
    first.save(tmp_path / "checkpoint")
    resumed = open_trial(PROBE)
    resumed.restore(tmp_path / "checkpoint")
    assert resumed.run_epoch() == history[1]
    marked = torch.load(tmp_path / "checkpoint" / SNAPSHOT, weights_only=False)
    marked["model"]["backbone.prep.1.running_mean"] += 1.0  # as if calibrated otherwise: the snapshot's stay
    torch.save(marked, tmp_path / "checkpoint" / SNAPSHOT)
    again = open_trial(PROBE)
    again.restore(tmp_path / "checkpoint")
    assert torch.equal(again.model.backbone.prep[1].running_mean, marked["model"]["backbone.prep.1.running_mean"])
