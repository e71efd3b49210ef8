"""Warm trials: a worker process runs a sweep's trials one after another (reuse_actors), with
the same numbers as one process per trial, and nothing of one trial's gin config in the next."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from conftest import Workspace, write_ray_config
from util import vis

SWEEP = """
from ray import tune
extra = {extra!r}
search_space = {{"gin_config": tune.grid_search([["digits/r9/classify", extra], ["digits/r9/classify"],
                                                ["digits/r9/classify"]]),
                 "seed": 3}}
reuse_actors = {reuse}
"""
TINY = ["ResNet.width = 4", "BaseDataset.num_valid = 64", "dataloader.batch_size = 32", "session.train_iters = 3",
        "session.valid_iters = 2", "scheduler.milestones = [1, 2]", "scheduler.target_lrs = [0.05, 0.0]"]


def run_sweep(workspace: Workspace, tmp_path: Path, name: str, reuse: bool) -> pd.DataFrame:
    extra = tmp_path / "mlp_head.gin"
    extra.write_text("Wrapper.classifier = 'mlp'\nWrapper.mlp_hidden = 16\n")
    config = write_ray_config(tmp_path, SWEEP.format(extra=str(extra), reuse=reuse))
    done = workspace.run("-e", name, "-q", "-r", str(config), "-p", *TINY, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    frame = vis.load_experiment(name).sort_values("gin_config", kind="stable").reset_index(drop=True)
    frame["pid"] = [json.loads((workspace.exp_dir / name / t / "trial.json").read_text())["pid"] for t in frame["trial"]]
    frame["operative"] = [(workspace.exp_dir / name / t / "operative_config.gin").read_text() for t in frame["trial"]]
    return frame


def test_warm_trials_give_the_numbers_of_cold_ones_and_forget_the_last_config(
        workspace: Workspace, tmp_path: Path) -> None:
    warm = run_sweep(workspace, tmp_path, "warm", reuse=True)
    cold = run_sweep(workspace, tmp_path, "cold", reuse=False)
    assert warm["pid"].nunique() == 1 and cold["pid"].nunique() == 3  # one worker ran all three, warm
    for column in ("train_loss", "valid_loss", "valid_accuracy", "best_epoch"):
        assert warm[column].tolist() == cold[column].tolist(), column
    with_mlp = warm["gin_config"].str.contains("mlp_head")
    assert with_mlp.sum() == 1
    assert all("Wrapper.classifier = 'mlp'" in text for text in warm.loc[with_mlp, "operative"])
    assert warm.loc[with_mlp, "timestamp"].max() <= warm.loc[~with_mlp, "timestamp"].min()  # it ran first
    for text in warm.loc[~with_mlp, "operative"]:  # the trials after it in the same process: no MLP head
        assert "Wrapper.classifier = 'linear'" in text and "Wrapper.mlp_hidden = 16" not in text


def test_packed_trials_share_a_gpu_and_its_cpus() -> None:
    from selfstudy.cluster import per_trial

    assert per_trial(16, 2, 4) == {"cpu": 2, "gpu": 0.25}
    assert per_trial(16, 2) == {"cpu": 8, "gpu": 1}
    assert per_trial(2, 1, 4) == {"cpu": 1, "gpu": 0.25}  # few CPUs: each trial still has one
    assert per_trial(2, 0, 4) == {"cpu": 2}


def test_a_rewritten_file_is_read_again(tmp_path: Path) -> None:
    """The per-process split cache serves a file's rows until the file changes."""
    import numpy as np
    import torch

    from selfstudy.data import cache, hdf5
    from selfstudy.data.base import DatasetFiles, data_options

    def write(value: float) -> DatasetFiles:
        for name in ("train", "test"):
            hdf5.write_split(tmp_path / f"{name}.h5", np.full((20, 3, 4, 4), value, np.float32), np.arange(20) % 2,
                             ["a", "b"], np.full(3, 0.5), np.full(3, 0.25))
        return DatasetFiles.open("tiny", tmp_path / "train.h5", tmp_path / "test.h5")

    options = data_options(num_valid=4)
    dataset = write(0.5)
    first = dataset.load(options, torch.device("cpu"), ("train",))["train"]
    assert dataset.load(options, torch.device("cpu"), ("train",))["train"] is first  # kept
    no_valid = data_options(num_valid=0)
    empty = dataset.load(no_valid, torch.device("cpu"), ("train", "valid"))["valid"]
    assert len(empty) == 0 and dataset.load(no_valid, torch.device("cpu"), ("train", "valid"))["valid"] is empty
    assert not (write(0.75).load(options, torch.device("cpu"), ("train",))["train"].images == first.images).all()
    other_rows = write(0.75).load(data_options(num_valid=5), torch.device("cpu"), ("train",))["train"]
    assert len(other_rows) == 15 and cache.get(next(iter(cache._kept))) is other_rows  # only this trial's kept
