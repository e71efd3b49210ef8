"""Every method added with the ViTs runs in a two-stage study (pretraining, then transfer at two
label budgets) through the real CLI, and its trials come out of `vis.calc_utility`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import Workspace, write_ray_config
from selfstudy import folders
from util import vis

STUDY = """
from ray import tune

metric, mode = "mean_accuracy", "max"
stages = [
    {{"name": "pretrain",
     "search_space": {{"gin_config": tune.grid_search({methods}), "session.train_iters": 2,
                      "scheduler.milestones": [1], "scheduler.target_lrs": [{lr}]}}}},
    {{"name": "transfer", "pretrained_from": "pretrain",
     "search_space": {{"gin_config": "{transfer}", "BaseDataset.semisupervised": tune.grid_search([40, 80]),
                      "Wrapper.ignore_pretrained_fc": True, "session.train_iters": 2, "session.test_iters": -1,
                      "session.test_when": "best", "scheduler.milestones": [1], "scheduler.target_lrs": [{lr}]}}}},
]
"""
TINY = ["BaseDataset.num_valid = 64", "dataloader.batch_size = 32"]


@pytest.mark.parametrize("backbone, methods, options", [
    ("r9", ["barlow", "vicreg", "simsiam", "mocov3", "dino"], ["ResNet.width = 4"]),
    ("vit", ["mae", "mocov3", "dino"], ["ViT.depth = 1"]),
])
def test_each_new_method_pretrains_transfers_and_has_a_utility(workspace: Workspace, tmp_path: Path, backbone: str,
                                                               methods: list[str], options: list[str]) -> None:
    configs = [f"digits/{backbone}/{method}" for method in methods]
    lr = 0.02 if backbone == "r9" else 0.001
    config = write_ray_config(tmp_path, STUDY.format(methods=configs, transfer=f"digits/{backbone}/classify", lr=lr))
    done = workspace.run("-e", "study", "-l", "-q", "-r", str(config), "-p", *TINY, *options, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    study_dir = workspace.exp_dir / "study"
    assert json.loads((study_dir / folders.EXPERIMENT_FILE).read_text())["completed"] == ["pretrain", "transfer"]
    frame = vis.load_experiment(study_dir)
    assert (frame["status"] == "finished").all() and len(frame) == len(methods) + 2 * (len(methods) + 1)
    transfer = frame[frame["stage"] == "transfer"]
    assert sorted(set(transfer["source"])) == sorted([*methods, "scratch"])
    utility = vis.calc_utility(transfer)
    assert sorted(set(utility["source"])) == sorted(methods)
    assert sorted(utility["BaseDataset.semisupervised"].unique()) == [40, 80]
    # a utility where the scratch curve brackets the pretrained accuracy, else a bound said as such
    assert all(np.isfinite(row["utility"]) or row["bound"] == "?" for _, row in utility.iterrows())
    assert transfer["test_at_best"].between(0, 1).all()
