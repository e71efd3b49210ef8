"""Weighted kNN on frozen features: the classifier by hand, online (knn.every) and offline
(knn_grid.*) agreeing on one backbone, and the settings refused in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import TINY, Workspace
from selfstudy.config import split_binding
from selfstudy.errors import UserError
from selfstudy.knn import knn_predict, knn_predict_grid
from selfstudy.knn_trial import KNN_GRID_FILE
from selfstudy.trials import check_trial, open_trial
from test_dense import write_dense
from test_user_errors import assert_refused
from util import vis

# Four training points in 2-D (x3 is not unit length: the features are normalised) and two queries.
TRAIN = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-3.0, 0.0]])
LABELS = torch.tensor([0, 1, 1, 0])
QUERIES = torch.tensor([[2.0, 0.0], [0.0, 2.0]])


def test_knn_predict_by_hand() -> None:
    """Cosine similarities: q0 = (1, 0) to x0..x3 is 1, 0.8, 0.6, -1; q1 = (0, 1) is 0, 0.6, 0.8, 0.
    k = 3, T = 0.1: q0's neighbours x0 (class 0), x1, x2 (class 1) vote e^10 = 22026 for class 0
    against e^8 + e^6 = 2981 + 403 = 3384 for class 1: class 0, though most neighbours are class 1.
    k = 3, T = 1: class 0 gets e^1 = 2.72, class 1 e^0.8 + e^0.6 = 2.23 + 1.82 = 4.05: class 1.
    q1's neighbours x2, x1 (class 1) and one of x0, x3 (class 0, similarity 0): e^8 + e^6 against
    e^0 = 1 at T = 0.1, 4.05 against 1 at T = 1: class 1 either way. k = 1: the nearest, x0 and x2.
    k = 4, T = 1: q0's class 0 gets e^1 + e^-1 = 3.09 < 4.05: class 1. T = 0.001: e^1000 overflows
    float32, but the votes are weighed relative to the nearest (e^0 against e^-200 + e^-400): class 0."""
    assert knn_predict(TRAIN, LABELS, QUERIES, 2, k=3, temperature=0.1).tolist() == [0, 1]
    assert knn_predict(TRAIN, LABELS, QUERIES, 2, k=3, temperature=1.0).tolist() == [1, 1]
    assert knn_predict(TRAIN, LABELS, QUERIES, 3, k=1, temperature=1.0).tolist() == [0, 1]  # class 2 unseen
    assert knn_predict(TRAIN, LABELS, QUERIES, 2, k=4, temperature=1.0).tolist() == [1, 1]
    assert knn_predict(TRAIN, LABELS, QUERIES, 2, k=3, temperature=0.001).tolist() == [0, 1]
    points = [(3, 0.1), (3, 1.0), (1, 1.0), (4, 1.0)]  # one top-4 for all four
    grid = knn_predict_grid(TRAIN, LABELS, QUERIES, 2, points, chunk=1)  # a query at a time
    assert grid.tolist() == [[0, 1], [1, 1], [0, 1], [1, 1]]
    assert knn_predict(TRAIN.half(), LABELS, QUERIES.half(), 2, k=3, temperature=0.1).tolist() == [0, 1]
    if torch.cuda.is_available():
        on_gpu = knn_predict_grid(TRAIN.cuda(), LABELS.cuda(), QUERIES.cuda(), 2, points)
        assert on_gpu.tolist() == grid.tolist()
    with pytest.raises(ValueError, match="k = 5 is more than the 4 training features"):
        knn_predict(TRAIN, LABELS, QUERIES, 2, k=5)


# Rotation prediction, 2 short epochs of a ResNet-9 of width 4 on digits (300 validation images).
PRETRAIN = {"gin_config": ["digits/r9/rotate"], "gin_params": {
    **dict(split_binding(b) for b in TINY), "BaseDataset.num_valid": 300, "session.train_iters": 3}}


def run(config: dict[str, Any]) -> list[dict[str, Any]]:
    trial = open_trial(config)
    try:
        history = []
        while not trial.done:
            history.append(trial.run_epoch())
        return history
    finally:
        trial.close()


def test_online_and_offline_knn_agree_on_one_backbone(workspace: Workspace) -> None:
    """A pretraining run reports valid_knn_accuracy every epoch (knn.every = 1) without changing its
    training; a kNN trial through the CLI on its snapshot measures the same accuracy at the same
    k and T, and reports the point chosen on validation as a classify trial reports its accuracy."""
    plain = run(PRETRAIN)
    online = open_trial({**PRETRAIN, "gin_params": {**PRETRAIN["gin_params"], "knn.every": 1}})
    try:
        history = [online.run_epoch() for _ in range(2)]
        assert online.done
        online.save(workspace.exp_dir / "pretrain" / "rotate")
    finally:
        online.close()
    for without, with_knn in zip(plain, history):
        assert "valid_knn_accuracy" not in without
        assert {k: v for k, v in with_knn.items() if k != "valid_knn_accuracy"} == without  # training unchanged
    accuracy = history[-1]["valid_knn_accuracy"]
    assert 0.3 < accuracy <= 1  # far above chance (0.1) for digits

    done = workspace.run("-l", "-q", "-e", "knn", "-g", "digits/r9/knn", "-p", "ResNet.width = 4",
                         "dataloader.batch_size = 32", "BaseDataset.num_valid = 300",
                         'Wrapper.pretrained = "pretrain/rotate"', "knn_grid.k = [5, 20]",
                         "knn_grid.temperature = [0.07, 0.5]")
    assert done.returncode == 0, done.stdout + done.stderr
    trial_dir = next((workspace.exp_dir / "knn").glob("*/" + KNN_GRID_FILE)).parent
    record = json.loads((trial_dir / KNN_GRID_FILE).read_text())
    points = {(p["k"], p["temperature"]): p for p in record["points"]}
    assert list(points) == [(5, 0.07), (5, 0.5), (20, 0.07), (20, 0.5)]
    assert points[20, 0.07]["valid_accuracy"] == accuracy  # knn.k = 20, knn.temperature = 0.07 online
    chosen = record["points"][record["chosen"]]
    assert chosen["valid_accuracy"] == max(p["valid_accuracy"] for p in record["points"])  # on validation
    row = vis.load_experiment("knn").iloc[0]
    assert row["status"] == "finished" and row["source"] == "rotate"
    assert (row["knn_k"], row["knn_temperature"]) == (chosen["k"], chosen["temperature"])
    assert row["valid_accuracy"] == row["best_accuracy"] == chosen["valid_accuracy"]
    assert row["test_at_best"] == row["test_accuracy"] == chosen["test_accuracy"]
    assert row["valid_labels"] == 300


def test_more_neighbours_than_labelled_images_is_refused(workspace: Workspace) -> None:
    assert_refused(workspace, "-l", "-e", "refused", "-g", "digits/r9/knn", "-p", *TINY,
                   "BaseDataset.semisupervised = 20",
                   says="knn_grid.k asks for 50 neighbours, more than the 20 labelled training images "
                        "(BaseDataset.semisupervised = 20): lower it to 20 or less, or give a larger budget")


def dense_set(folder: Path) -> dict[str, Any]:
    folder.mkdir()
    write_dense(folder, n=40, test=10, res=32)
    return {"session.dataset": "'FolderDataset'", "FolderDataset.path": f"'{folder}'", "BaseDataset.num_valid": 8,
            "augment.crop": 0}


@pytest.mark.parametrize("settings, says", [
    ({"knn.every": 1, "knn.k": 0}, "knn.k = 0: the number of neighbours must be a positive whole number, e.g. 20"),
    ({"knn.every": 1, "knn.temperature": 0}, "knn.temperature = 0: the votes' temperature must be a positive number"),
    ({"knn.every": -1}, "knn.every = -1: give a whole number of epochs (0: off)"),
    ({"knn.every": 2, "BaseDataset.semisupervised": 10},
     "knn.k asks for 20 neighbours, more than the 10 labelled training images (BaseDataset.semisupervised = 10)"),
    ({"knn_grid.k": [10, 10]}, "knn_grid.k = [10, 10] repeats a value: give each once"),
    ({"knn_grid.temperature": [0.07, -1]}, "knn_grid.temperature = -1: the votes' temperature must be a positive"),
    ({"knn_grid.k": []}, "knn_grid.k = [] must be a non-empty list, e.g. [10, 20, 50]"),
    ({"knn_grid.k": [20], "knn.every": 1}, "knn.every measures kNN accuracy while a backbone trains"),
    ({"knn_grid.k": [20], "probe_grid.lrs": [0.1]}, "probe_grid.* and knn_grid.* each make the trial"),
    ({"knn.every": 1, "dense": True}, "dense) has a class per pixel: use a set with a class per image, or drop the knn "
                                      "settings"),
], ids=["k", "temperature", "every", "budget", "repeated", "grid temperature", "empty", "online in a kNN trial",
        "two grids", "per-pixel classes"])
def test_bad_knn_settings_are_refused(workspace: Workspace, tmp_path: Path, settings: dict[str, Any],
                                      says: str) -> None:
    params = {**dict(split_binding(b) for b in TINY), **settings}
    if params.pop("dense", False):
        params.update(dense_set(tmp_path / "dense"))
    gin_config = ["digits/r9/knn" if any(key.startswith("knn_grid.") for key in settings) else "digits/r9/rotate"]
    with pytest.raises(UserError, match=re.escape(says)):
        check_trial({"gin_config": gin_config, "gin_params": params})
