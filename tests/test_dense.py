"""Dense tasks on multi-object scenes: metrics by hand, training through main.py beats the
trivial baselines, and dense tasks refuse classification sets."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import TINY, Workspace
from selfstudy.data import DividedSplit, FolderDataset, data_options, hdf5
from selfstudy.data.budget import budget_keys
from selfstudy.tasks.classify import ClassifyTask, mean_iou, segmentation_loss
from selfstudy.tasks.depth import DepthTask, depth_loss, depth_metrics
from selfstudy.train import MetricSums


def test_depth_metrics_by_hand() -> None:
    target = torch.tensor([[[2.0, 4.0], [0.0, 3.0]]])  # one background pixel (0) is ignored
    loss, sums = depth_loss(target.clone(), target)
    metrics = depth_metrics(sums["depth_sums"])
    assert loss.item() == 0 and metrics["delta_1.25"].item() == 1 and metrics["rmse"].item() == 0
    loss, sums = depth_loss(target * 1.2, target)
    metrics = depth_metrics(sums["depth_sums"])
    assert sums["depth_sums"][0].item() == 3  # pixels with depth
    assert loss.item() == pytest.approx(0.2 * 3.0) == metrics["mae"].item()  # mean of 0.4, 0.8, 0.6
    assert metrics["delta_1.25"].item() == 1 and metrics["delta_1.1"].item() == 0
    assert metrics["rmse"].item() == pytest.approx(np.sqrt((0.16 + 0.64 + 0.36) / 3))


def test_depth_rmse_is_computed_over_the_split_not_averaged_over_batches() -> None:
    """Batch 1 (one image): errors 0.1, 0.5, 0.2 on depths 2, 4, 3 (its background pixel's 5 is
    ignored). Batch 2 (two images): one pixel with depth, error 1 on depth 2. Over the split's
    4 pixels the RMSE is sqrt((0.01 + 0.25 + 0.04 + 1) / 4); the batches' RMSEs averaged by
    images, (sqrt(0.30 / 3) + 2 * 1) / 3, would be 0.772 instead of 0.570."""
    first = torch.tensor([[[2.0, 4.0], [0.0, 3.0]]])
    second = torch.tensor([[[0.0, 0.0], [0.0, 2.0]], [[0.0, 0.0], [0.0, 0.0]]])
    errors = (torch.tensor([[[0.1, 0.5], [5.0, 0.2]]]), torch.tensor([[[0.0, 0.0], [0.0, 1.0]], [[0.0] * 2] * 2]))
    task, sums = DepthTask(), MetricSums()
    for target, error in zip((first, second), errors):
        loss, metrics = depth_loss(target + error, target)
        sums.add({"loss": loss, **metrics}, len(target))
    result = sums.means("valid", task)
    assert result["valid_rmse"] == pytest.approx(np.sqrt(1.30 / 4), rel=1e-6)
    assert result["valid_rmse"] < 0.6 < (np.sqrt(0.30 / 3) + 2 * 1.0) / 3  # not the batches' mean
    assert result["valid_mae"] == pytest.approx((0.1 + 0.5 + 0.2 + 1) / 4, rel=1e-6)
    assert result["valid_delta_1.25"] == result["valid_accuracy"] == 3 / 4  # 1.05, 1.125, 1.067 pass; 1.5 fails
    assert result["valid_delta_1.1"] == 2 / 4
    assert result["valid_loss"] == pytest.approx((0.8 / 3 + 2 * 1.0) / 3, rel=1e-6)  # the objective, per batch
    assert "valid_depth_sums" not in result


def one_hot_logits(predicted: torch.Tensor, classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(predicted, classes).permute(0, 3, 1, 2).float() * 10


def test_segmentation_metrics_by_hand() -> None:
    targets = torch.tensor([[[0, 0], [1, 2]]])
    _, metrics = segmentation_loss(one_hot_logits(targets, 3), targets)
    assert metrics["pixel_accuracy"].item() == 1 and mean_iou(metrics["confusion"]).item() == 1
    _, metrics = segmentation_loss(one_hot_logits(torch.zeros_like(targets), 3), targets)
    assert metrics["pixel_accuracy"].item() == 0.5
    assert metrics["confusion"].tolist() == [[2, 0, 0], [1, 0, 0], [1, 0, 0]]  # target rows, predicted columns
    assert mean_iou(metrics["confusion"]).item() == pytest.approx((2 / 4 + 0 + 0) / 3)  # classes 1, 2 missed


def test_mean_iou_is_computed_over_the_split_not_averaged_over_batches() -> None:
    """Two batches: (targets 0 0 / 1 1, all predicted 0) and (all 1, all predicted 1). Summed
    confusion [[2, 0], [2, 4]]: IoU 2/4 for class 0 and 4/6 for class 1. Averaging the batches'
    IoUs would give (0.25 + 1) / 2 instead."""
    first, second = torch.tensor([[[0, 0], [1, 1]]]), torch.ones(1, 2, 2, dtype=torch.long)
    sums = MetricSums()
    for targets, predicted in ((first, torch.zeros_like(first)), (second, second)):
        _, metrics = segmentation_loss(one_hot_logits(predicted, 2), targets)
        sums.add(metrics, len(targets))
    assert sums.sums["confusion"].tolist() == [[2, 0], [2, 4]]
    result = sums.means("valid", ClassifyTask())
    assert result["valid_mean_iou"] == pytest.approx((2 / 4 + 4 / 6) / 2)
    assert result["valid_pixel_accuracy"] == pytest.approx(6 / 8) and "valid_confusion" not in result


def write_dense(folder: Path, n: int = 40, test: int = 10, res: int = 8) -> None:
    """A tiny dense set: image i's map holds a 10-pixel block of class i % 3 + 1 (its most frequent
    object class), a 4-pixel block of the next class and background; depth 2 + row / 8 on
    objects, 0 on background; the image's first channel is the map, the second the depth."""
    for name, count in (("train", n), ("test", test)):
        maps = np.zeros((count, res, res), dtype=np.int64)
        for i in range(count):
            maps[i, 0, :5] = maps[i, 1, :5] = i % 3 + 1
            maps[i, 5, :4] = (i + 1) % 3 + 1
        depth = np.where(maps > 0, 2 + np.arange(res)[None, :, None] / 8, 0).astype(np.float32)
        images = np.stack([maps, depth, np.zeros_like(depth)], axis=1).astype(np.float16)
        with h5py.File(folder / f"{name}.h5", "w") as f:
            hdf5.create_split(f, images.shape, ["a", "b", "c"], "rgb", target_shape=(res, res))
            f["data"][...], f["targets"][...], f["depth"] = images, maps, depth
            hdf5.set_statistics(f, np.zeros(3), np.ones(3))


def test_label_budget_on_a_dense_set_balances_the_dominant_classes(tmp_path: Path) -> None:
    write_dense(tmp_path)
    dataset = FolderDataset(str(tmp_path))
    rows = np.array([0, 1, 2, 3, 7, 8])
    assert budget_keys(dataset.train.path, rows, chunk_size=4).tolist() == [1, 2, 3, 1, 2, 3]
    options = data_options(semisupervised=9, num_valid=10, chunk_size=8)
    train = dataset.load(options, torch.device("cpu"), ("train",))["train"]
    assert len(train) == 9 and train.targets.shape == (9, 8, 8)
    dominant = train.targets[:, 0, 0]
    assert torch.bincount(dominant, minlength=4).tolist() == [0, 3, 3, 3]
    assert len(set(dataset.split_rows(options)["train"]) & set(dataset.split_rows(options)["valid"])) == 0


def test_divisions_carry_their_own_depth_maps(tmp_path: Path) -> None:
    """A divided dense split reads each division's depth maps with its images: batches (some
    spanning two divisions) hold the depth of their own images, and the device holds the depth
    of one division, not of the split."""
    write_dense(tmp_path)
    dataset = FolderDataset(str(tmp_path))
    split = dataset.load(data_options(max_images=8, chunk_size=4, num_valid=0), torch.device("cpu"), ("train",),
                         extras=("depth",))["train"]
    assert isinstance(split, DividedSplit) and "depth" not in split.extra
    batches = list(split.batches(6, -1, shuffle=(0, 1)))
    assert len(batches) == 6 and len(torch.cat([b.index for b in batches]).unique()) == 36
    for batch in batches:
        assert torch.equal(batch.depth, batch.images[:, 1]) and torch.equal(batch.targets.float(), batch.images[:, 0])
    assert split._fields["depth"].shape == (8, 8, 8)  # one division's worth
    split.close()
    resident = dataset.load(data_options(num_valid=0), torch.device("cpu"), ("train",), extras=("depth",))["train"]
    batch = next(resident.batches(40, 1))
    assert torch.equal(batch.depth, batch.images[:, 1].float())


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny multi-object set rendered through the CLI."""
    data = tmp_path_factory.mktemp("dense_data")
    workspace = Workspace(data / "exp", data)
    made = workspace.run("--code", "0000", "--n", "600", "--res", "32", "--multi", "--objects", "3", "--test", "200",
                         "-o", "scenes", script="misc/render_syn.py")
    assert made.returncode == 0, made.stderr
    return data


def train(workspace: Workspace, scenes: Path, name: str, config: str) -> dict:
    workspace.data_dir = scenes
    done = workspace.run("-l", "-q", "-e", name, "-g", config, "-p", *TINY, "init_resnet.choice = 'resnet9'",
                         "ResNet.width = 16", "SynDataset.dataset_choice = 'scenes'", "BaseDataset.num_valid = 100",
                         "scheduler.milestones = [2, 14]", "scheduler.target_lrs = [0.1, 0.0]", "augment.crop = 2")
    assert done.returncode == 0, done.stderr
    return json.loads(next(workspace.exp_dir.glob(f"{name}/*/result.json")).read_text().splitlines()[-1])


def test_segmentation_beats_predicting_background(workspace: Workspace, scenes: Path) -> None:
    result = train(workspace, scenes, "segment", "dense/r50/segment")
    with h5py.File(scenes / "syn" / "scenes" / "test.h5") as f:
        background = float((f["targets"][...] == 0).mean())
    print(f"segmentation: test pixel accuracy {result['test_pixel_accuracy']:.3f}, mean IoU "
          f"{result['test_mean_iou']:.3f}; all-background baseline {background:.3f}")
    assert result["test_pixel_accuracy"] > background + 0.02, (result["test_pixel_accuracy"], background)


def test_depth_beats_predicting_the_mean(workspace: Workspace, scenes: Path) -> None:
    result = train(workspace, scenes, "depth", "dense/r50/depth")
    with h5py.File(scenes / "syn" / "scenes" / "train.h5") as f:
        mean_depth = f["depth"][...][f["depth"][...] > 0].mean()
    with h5py.File(scenes / "syn" / "scenes" / "test.h5") as f:
        depth = f["depth"][...]
        baseline = np.abs(depth[depth > 0] - mean_depth).mean()
    print(f"depth: test L1 {result['test_loss']:.3f}, delta<1.25 {result['test_delta_1.25']:.3f}; "
          f"mean-depth baseline L1 {baseline:.3f}")
    assert result["test_loss"] < 0.9 * baseline, (result["test_loss"], baseline)


@pytest.mark.parametrize("config, says", [
    ("dense/r50/depth", "DepthTask needs depth maps, but DigitsDataset has none (a classification set)"),
    ("dense/r50/segment", "Wrapper.dense_pred = True predicts a class per pixel, but DigitsDataset has one class "
                          "per image (a classification set)"),
])
def test_dense_tasks_refuse_classification_sets(workspace: Workspace, config: str, says: str) -> None:
    done = workspace.run("-l", "-e", "refused", "-g", config, "-p", "session.dataset = 'DigitsDataset'",
                         "augment.transform_targets = False")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == f"error: {says}" + (
        ": render a multi-object set with misc/render_syn.py --multi" if "DepthTask" in says
        else ": use a --multi synthetic set or set it to False")
    assert not (workspace.exp_dir / "refused").exists()
