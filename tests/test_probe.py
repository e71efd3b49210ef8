"""Probe grids: K linear heads on features encoded once, each equal to its own probe trial."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from conftest import Workspace, write_ray_config
from selfstudy.checkpoint import save_snapshot
from selfstudy.models import Wrapper
from selfstudy.models.resnet import ResNet
from selfstudy.probe_trial import GridTrial
from selfstudy.trial import Trial
from selfstudy.trials import open_trial
from util import vis

# A linear probe of a random ResNet-9 (width 8) on digits: 3 epochs, plain images, test split too.
PROBE = {"seed": 3, "Wrapper.finetune_classifier": False, "augment.crop": 0, "ResNet.width": 8,
         "dataloader.batch_size": 64, "scheduler.milestones": [1, 3], "session.test_iters": -1}
GRID = {"probe_grid.lrs": [0.05, 0.3], "probe_grid.weight_decays": [0.0, 1e-3], "probe_grid.budgets": [60, 0]}
COMPARED = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "test_loss", "test_accuracy", "lr",
            "mean_accuracy", "best_accuracy")


def run(config: dict[str, Any]) -> tuple[Trial, list[dict[str, Any]]]:
    trial = open_trial(config)
    history = []
    while not trial.done:
        history.append(trial.run_epoch())
    return trial, history


SHORT = {"session.train_iters": 3, "session.valid_iters": 7, "session.test_when": "best"}  # passes wrap around


@pytest.mark.parametrize("settings", [{}, SHORT], ids=["full passes", "short epochs"])
def test_each_head_equals_its_own_probe_trial(workspace: Workspace, settings: dict[str, Any]) -> None:
    probe = {**PROBE, **settings}
    grid, history = run({**probe, **GRID})
    assert isinstance(grid, GridTrial) and len(grid.heads) == 8 and len(history) == 3
    assert grid.train_views.shape[:2] == (1, 1200)  # every training image encoded once
    for k, head in enumerate(grid.heads):
        _, alone = run({**probe, **head.bindings()})
        assert type(_) is Trial and len(alone) == 3
        for epoch, (together, separate) in enumerate(zip(history, alone), start=1):
            mine = together["heads"][str(k)]
            for name in COMPARED:  # test_* only at the end with test_when 'best', in both
                assert (name in mine) == (name in separate), (k, epoch, name)
                if name in separate:
                    assert abs(mine[name] - separate[name]) <= 1e-5, (k, head, epoch, name, mine[name], separate[name])
            assert ("test_at_best" in mine) == ("test_at_best" in separate)
        assert (mine["best_epoch"], mine["test_at_best"]) == (separate["best_epoch"], separate["test_at_best"])
    finals = history[-1]["heads"]
    assert len({round(head["valid_accuracy"], 6) for head in finals.values()}) >= 3  # the settings matter
    best = max(finals, key=lambda k: finals[k]["mean_accuracy"])
    assert history[-1]["best_head"] == int(best)
    assert history[-1]["mean_accuracy"] == finals[best]["mean_accuracy"]


def test_a_grid_continues_from_its_checkpoint_as_if_uninterrupted(workspace: Workspace, tmp_path: Path) -> None:
    config = {**PROBE, "probe_grid.lrs": [0.1, 0.3], "probe_grid.budgets": [100, 0]}
    _, straight = run(config)
    first = open_trial(config)
    first.run_epoch()
    first.save(tmp_path / "checkpoint")
    resumed = open_trial(config)
    resumed.restore(tmp_path / "checkpoint")
    rest = []
    while not resumed.done:
        rest.append(resumed.run_epoch())
    assert [epoch["heads"] for epoch in rest] == [epoch["heads"] for epoch in straight[1:]]


def test_augmented_views_are_encoded_once_each(workspace: Workspace) -> None:
    config = {**PROBE, "augment.crop": 2, "probe_grid.views": 2, "probe_grid.budgets": [200, 0]}
    grid, history = run(config)
    views = grid.train_views
    assert views.shape[:2] == (2, 1200) and not torch.allclose(views[0], views[1])
    plain, _ = run({**PROBE, "probe_grid.budgets": [200, 0]})
    assert not torch.allclose(views[0], plain.train_views[0])  # augmented, not the plain images
    assert all(math.isfinite(head["valid_loss"]) for epoch in history for head in epoch["heads"].values())


def test_a_study_pretrains_then_probes_each_backbone_with_a_grid(workspace: Workspace, tmp_path: Path) -> None:
    """Pretrain, then linear evaluation over label budgets in one declared sweep, read off as utility."""
    study = write_ray_config(tmp_path, """from ray import tune
stages = [{"name": "pretrain", "checkpoint_at_end": True, "search_space": {"gin_config": "digits/r9/rotate"}},
          {"name": "probe", "pretrained_from": "pretrain",
           "search_space": {"gin_config": "digits/r9/probe_grid", "seed": tune.grid_search([0, 1]),
                            "probe_grid.lrs": [0.1, 0.3], "probe_grid.weight_decays": [0.0]}}]
""")
    done = workspace.run("-r", str(study), "-e", "linear", "-q", "-p", "ResNet.width = 4", "scheduler.milestones = [1, 2]",
                         timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    frame = vis.load_experiment("linear")
    probe = frame[frame["stage"] == "probe"]
    assert len(probe) == 2 * 2 * 6 and (probe["status"] == "finished").all()  # (scratch, pretrained) x 2 seeds x 6 heads
    assert set(probe["source"]) == {"scratch", "pretrain"}  # one pretraining trial: named after its stage
    picked = vis.best_heads(probe)
    assert len(picked) == 4 * 3  # each trial's best head of each budget
    for _, row in picked.iterrows():
        rivals = probe[(probe["trial"] == row["trial"])
                       & (probe["BaseDataset.semisupervised"] == row["BaseDataset.semisupervised"])]
        assert len(rivals) == 2 and row["best_accuracy"] == rivals["best_accuracy"].max()
    table = vis.summary(probe)
    assert set(table.index) == {(source, budget) for source in ("pretrain", "scratch") for budget in (50, 200, 1200)}
    assert (table["seeds"] == 2).all() and table.loc["pretrain", "utility"].notna().all()


def test_a_diverged_head_is_reported_and_the_others_finish(workspace: Workspace) -> None:
    done = workspace.run("-g", "digits/r9/probe_grid", "-e", "grid", "-l", "-q", "-p", "ResNet.width = 4",
                         "scheduler.milestones = [1, 2]", "probe_grid.lrs = [0.1, 1e38]", "-p",  # -p again: both count
                         "probe_grid.budgets = [50, 0]", "session.train_iters = -1")
    assert done.returncode == 0, done.stdout + done.stderr  # a head's outcome, not the trial's failure
    assert "1 trial(s) (8 probe heads)" in done.stdout
    frame = vis.load_experiment("grid").sort_values("head")
    assert list(frame["head"]) == list(range(8))
    assert list(frame["BaseDataset.semisupervised"]) == [50] * 4 + [1200] * 4  # 0: all 1,200, by number
    assert list(frame["optimizer.weight_decay"]) == [0.0, 0.0, 5e-4, 5e-4] * 2
    assert list(frame["peak_lr"]) == [0.1, 1e38] * 4
    trial_dir = next((workspace.exp_dir / "grid").glob("trial_*"))
    labels = json.loads((trial_dir / "trial.json").read_text())["labels"]["per budget"]
    assert {budget: seen["train"]["images"] for budget, seen in labels.items()} == {"50": 50, "1200": 1200}  # 0: all 1,200
    assert list(frame["scheduler.scale"]) == [0.5, 5e38] * 4  # the schedule peaks at 0.2 (digits/r9/classify)
    trained, diverged = frame[frame["peak_lr"] == 0.1], frame[frame["peak_lr"] == 1e38]
    assert (trained["status"] == "finished").all() and (trained["epoch"] == 2).all()
    assert trained["valid_accuracy"].between(0, 1).all() and trained["best_epoch"].isin([1, 2]).all()
    assert (diverged["status"] == vis.DIVERGED).all()
    assert diverged["error"].str.contains("diverged at epoch").all()  # 2 for 50 images: epoch 1 is at rate 0
    assert diverged["error"].str.contains("lower its peak learning rate 1e+38", regex=False).all()
    notes = [line for line in done.stderr.splitlines() if "diverged at epoch" in line]
    assert len(notes) == 4 and all(line.startswith("note: trial trial_local_00000 (head=") for line in notes)
    assert "error:" not in done.stderr
    history = vis.load_history("grid")
    assert len(history[history["peak_lr"] == 0.1]) == 4 * 2  # two epochs of each trained head
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((workspace.exp_dir / "grid").glob("trial_*"))))
    events.Reload()  # each head's curves in TensorBoard, named as Ray's logger names them
    curve = [(event.step, event.value) for event in events.Scalars("ray/tune/heads/0/valid_accuracy")]
    head0 = history[history["head"] == 0].sort_values("training_iteration")["valid_accuracy"].tolist()
    assert [step for step, _ in curve] == [1, 2] and [value for _, value in curve] == pytest.approx(head0, abs=1e-6)
    picked = vis.best_heads(frame)  # of each budget, the head that trained
    assert list(picked["peak_lr"]) == [0.1, 0.1]


def test_best_heads_keeps_other_trials_and_skips_heads_that_did_not_complete() -> None:
    frame = pd.DataFrame({"stage": "", "trial": ["t0", "t1", "t1", "t1", "t1"], "head": [None, 0, 1, 2, 3],
                          "BaseDataset.semisupervised": [50, 50, 50, 50, 100],
                          "best_accuracy": [0.8, 0.5, 0.9, 0.7, 0.6],
                          "status": ["finished", "finished", vis.DIVERGED, "finished", vis.DIVERGED]})
    picked = vis.best_heads(frame)
    assert list(picked["trial"]) == ["t0", "t1", "t1"]
    assert list(picked["head"].iloc[1:]) == [2, 3]  # 0.9 diverged; 100 images had no other head (left to the caller)


def test_a_frozen_probe_measures_its_feature_statistics_afresh(tmp_path: Path) -> None:
    """A snapshot's feature statistics (a pretraining's, or another budget's) are not a probe's."""
    source = Wrapper(ResNet("resnet9", input_res=32), num_classes=10, finetune_classifier=False)
    weights = source.state_dict()
    weights["feature_norm.running_mean"] += 5.0
    weights["feature_norm.num_batches_tracked"] += 1000
    path = save_snapshot(tmp_path, {"model": weights})
    probe = Wrapper(ResNet("resnet9", input_res=32), num_classes=10, finetune_classifier=False, pretrained=str(path))
    assert torch.equal(probe.classifier.weight, source.classifier.weight)  # the classifier is taken
    assert probe.feature_norm.running_mean.abs().max() == 0 and probe.feature_norm.num_batches_tracked == 0
    assert probe.feature_norm.momentum is None  # then the mean over every batch the probe sees
