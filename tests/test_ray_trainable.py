"""The Ray Trainable: a checkpoint restored into a new Trainable continues exactly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import ray.tune.trainable.trainable as ray_trainable
from conftest import TINY, Workspace
from selfstudy.config import split_binding
from selfstudy.ray_trainable import RayTrial


@pytest.fixture(autouse=True)
def scratch_logdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Trainable made outside Tune keeps a scratch log folder; keep it out of ~/ray_results."""
    monkeypatch.setattr(ray_trainable, "DEFAULT_STORAGE_PATH", str(tmp_path / "ray_results"))


def trial_config(*bindings: str) -> dict:
    return {"gin_config": ["digits/r9/classify"], "seed": 3,
            "gin_params": dict(split_binding(b) for b in (*TINY, *bindings))}


def test_restored_trainable_continues_with_identical_metrics(workspace: Workspace, tmp_path: Path) -> None:
    config = trial_config("BaseDataset.semisupervised = 100", "augment.cutout = 6", "augment.color_jitter = 0.3",
                          "scheduler.milestones = [1, 3]", "scheduler.target_lrs = [0.05, 0.0]",
                          "session.deterministic = True")
    first = RayTrial(config=config)
    first.train()
    first.save(str(tmp_path / "checkpoint"))
    expected = [first.train(), first.train()]
    first.stop()

    second = RayTrial(config=config)
    second.restore(str(tmp_path / "checkpoint"))
    resumed = [second.train(), second.train()]
    second.stop()
    for want, got in zip(expected, resumed):
        for key in ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "epoch", "lr", "best_accuracy"):
            assert got[key] == want[key], key
    assert resumed[-1]["done"] and resumed[-1]["epoch"] == 3


def test_one_step_is_one_epoch_with_train_valid_test(workspace: Workspace) -> None:
    session = RayTrial(config=trial_config("session.test_iters = -1", "session.train_iters = 3"))
    result = session.train()
    session.stop()
    assert result["epoch"] == 1 and not result["done"]
    for split in ("train", "valid", "test"):
        assert 0.0 <= result[f"{split}_accuracy"] <= 1.0 and result[f"{split}_loss"] > 0
    assert result["mean_accuracy"] == result["valid_accuracy"]
    assert session.trial.step == 3  # train_iters batches per epoch


def test_bf16_autocast_trains(workspace: Workspace) -> None:
    session = RayTrial(config=trial_config("session.precision = 'bf16'", "session.train_iters = 4",
                                          "BaseDataset.semisupervised = 100"))
    first, second = session.train(), session.train()
    session.stop()
    assert session.trial.prep.amp_dtype is torch.bfloat16
    assert math.isfinite(first["train_loss"]) and second["train_loss"] < first["train_loss"]
