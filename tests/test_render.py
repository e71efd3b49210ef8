"""Synthetic datasets: deterministic, each factor varies exactly when its digit says, dense maps
agree with the images, and the sets load as datasets."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from conftest import TINY, Workspace
from selfstudy.data import SynDataset, data_options
from selfstudy.data.syn import render_split
from selfstudy.errors import UserError
from selfstudy.render import (STANDARD_CODES, Code, mirrored_pose_label, mirrored_rotation, pose_label, render,
                              render_batches)
from selfstudy.render.factors import rotation_matrix
from selfstudy.render.scene import BACKGROUND, CAMERA_Z

CPU = torch.device("cpu")


def rendered(code: str, n: int = 200, seed: int = 0, res: int = 16, objects: int = 1):
    scenes, renderings = zip(*render_batches(code, n, res, seed, CPU, objects))
    return scenes[0], renderings[0]


def per_class_variance(values: torch.Tensor, classes: torch.Tensor) -> float:
    """Mean over classes of the variance of `values` (N x ...) among that class's images."""
    flat = values.reshape(len(values), -1).double()
    return float(np.mean([flat[classes == k].var(dim=0).mean() for k in classes.unique() if (classes == k).sum() > 1]))


def test_same_seed_same_images() -> None:
    a, b, c = rendered("1111", 64, seed=5)[1], rendered("1111", 64, seed=5)[1], rendered("1111", 64, seed=6)[1]
    assert torch.equal(a.images, b.images) and torch.equal(a.class_map, b.class_map)
    assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("code", STANDARD_CODES)
def test_each_factor_varies_exactly_when_its_digit_is_one(code: str) -> None:
    scene, _ = rendered(code)
    classes = scene.classes[:, 0]
    measured = {
        "texture": per_class_variance(scene.texture[:, 0, 0] ** 2 / 8, classes),  # energy of amplitude * wave
        "colour": per_class_variance(scene.colour[:, 0], classes),
        "viewpoint": per_class_variance(scene.rotation[:, 0], classes),
        "lighting": per_class_variance(scene.light, classes),
    }
    switches = Code.parse(code)
    for factor, variance in measured.items():
        if getattr(switches, factor):
            assert variance > 1e-5, (code, factor, variance)  # off is exactly 0
        else:
            assert variance < 1e-12, (code, factor, variance)


@pytest.mark.parametrize("code", ["1000", "0100", "0010", "0001"])
def test_each_factor_changes_the_images(code: str) -> None:
    fixed_scene, fixed = rendered("0000")
    assert per_class_variance(fixed.images, fixed_scene.classes[:, 0]) < 1e-10  # one image per class
    scene, varied = rendered(code)
    assert per_class_variance(varied.images, scene.classes[:, 0]) > 1e-3


def test_classes_are_distinct_shapes() -> None:
    scene, out = rendered("0000", 400, res=24)
    classes = scene.classes[:, 0]
    silhouettes = torch.stack([(out.class_map[classes == k][0] > 0).float() for k in range(10)])
    differences = (silhouettes[:, None] - silhouettes[None]).abs().mean(dim=(2, 3))
    assert (differences + torch.eye(10)).min() > 0.01  # no two classes share a silhouette


def test_pose_labels_from_rotations() -> None:
    identity = torch.eye(3)
    top = rotation_matrix([(0, math.pi / 2)], CPU)  # the object's y axis turned towards the camera
    assert pose_label(top).item() == 0
    quadrants = {pose_label(rotation_matrix([(1, a)], CPU)).item() for a in (0.3, 1.9, 3.5, 5.1)}
    assert quadrants == {1, 2, 3, 4}
    assert pose_label(identity).item() in (1, 2, 3, 4)
    labels = pose_label(rendered("0010", 400)[0].rotation[:, 0])
    assert torch.bincount(labels, minlength=5).min() > 20  # random viewpoints reach every pose


def test_a_flipped_image_shows_the_mirrored_rotation_with_the_mirrored_pose() -> None:
    """The left-right flip of a rendering is the rendering of the mirrored scene (rotation M R M,
    light and centre mirrored in x), and its pose label is the mirrored label of the original."""
    scene, out = rendered("0010", 32, res=16)
    flip_x = torch.tensor([-1.0, 1.0, 1.0])
    mirrored = dataclasses.replace(scene, rotation=mirrored_rotation(scene.rotation), centre=scene.centre * flip_x,
                                   light=torch.cat([scene.light[:, :3] * flip_x, scene.light[:, 3:]], dim=1))
    seen = render(mirrored, 16)
    assert (seen.class_map == out.class_map.flip(-1)).float().mean() > 0.99
    assert (seen.images - out.images.flip(-1)).abs().mean() < 0.01
    assert torch.allclose(torch.linalg.det(mirrored.rotation), torch.ones(32, 1), atol=1e-5)  # still a rotation
    labels = pose_label(scene.rotation[:, 0])
    assert torch.equal(pose_label(mirrored.rotation[:, 0]), mirrored_pose_label(labels))
    assert (mirrored_pose_label(labels) != labels).sum() > 10  # the flip changes most labels


def test_random_viewpoints_keep_objects_upright() -> None:
    rotations = rendered("0010", 400)[0].rotation[:, 0]
    assert torch.allclose(rotations @ rotations.transpose(1, 2), torch.eye(3).expand(400, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(rotations), torch.ones(400), atol=1e-5)
    up = rotations[:, :, 1]  # where the object's up axis points (x right, y up, z at the camera)
    assert up[:, 1].min() > 0.2  # never upside down or on its side: the image's up means something
    assert up[:, 2].max() > 0.9 and up[:, 2].min() < -0.4  # from nearly overhead to below
    spin = torch.atan2(rotations[:, 0, 2], rotations[:, 0, 0])  # azimuth, when elevation and roll are small
    assert spin.max() - spin.min() > 5.5  # all the way round


def test_multi_object_maps_agree_with_the_image() -> None:
    scene, out = rendered("1111", 64, res=48, objects=4)
    obj = out.class_map > 0
    assert torch.isfinite(out.depth).all() and (out.depth[obj] > CAMERA_Z - 2).all() and (out.depth[~obj] == 0).all()
    background = torch.full_like(out.images, BACKGROUND)
    assert torch.allclose(out.images.permute(0, 2, 3, 1)[~obj], background.permute(0, 2, 3, 1)[~obj])
    assert (out.images - background).abs().sum(1)[obj].gt(1e-4).float().mean() > 0.95  # objects show
    visible = [len(out.class_map[i].unique()) - 1 for i in range(64)]
    assert max(visible) >= 2 and min(visible) >= 1
    for i in range(8):  # every visible class is one placed in that scene
        placed = set((scene.classes[i][scene.present[i]] + 1).tolist())
        assert set(out.class_map[i].unique().tolist()) - {0} <= placed


def test_rendered_set_loads_with_pose_labels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import paths

    monkeypatch.setattr(paths, "DATA_DIR", tmp_path)
    with pytest.raises(UserError, match="python misc/render_syn.py --code 1011 --n 20000 --res 32 -o 1011"):
        SynDataset("1011")
    folder = tmp_path / "syn" / "1011"
    folder.mkdir(parents=True)
    stats = render_split(folder / "train.h5", "1011", 300, 16, 0, CPU, 1, "train")
    render_split(folder / "test.h5", "1011", 40, 16, 1, CPU, 1, "test", stats)
    dataset = SynDataset("1011")
    assert dataset.num_classes == 10 and "rot_mat" in dataset.train.extras
    split = dataset.load(data_options(predict_pose=True, num_valid=50), CPU, ("train",))["train"]
    batch = next(split.batches(64, 1))
    with h5py.File(folder / "train.h5") as f:
        rows = dataset.split_rows(data_options(num_valid=50))["train"][:64]
        expected = pose_label(torch.from_numpy(f["rot_mat"][...][rows]))
        assert f.attrs["display"] == "T-VL"
        assert np.allclose(f.attrs["mean"], read_test_mean(folder))
    assert torch.equal(batch.pose, expected)
    with pytest.raises(UserError, match="predict_pose = True needs rot_mat"):
        from selfstudy.data import DigitsDataset

        DigitsDataset().check(data_options(predict_pose=True), 32)


def test_two_heads_learn_class_and_pose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import paths
    from selfstudy.config import split_binding
    from selfstudy.tasks.classify import classify_loss
    from selfstudy.trial import Trial

    monkeypatch.setattr(paths, "DATA_DIR", tmp_path)
    monkeypatch.setattr(paths, "EXP_DIR", tmp_path / "exp")
    folder = tmp_path / "syn" / "0010"
    folder.mkdir(parents=True)
    stats = render_split(folder / "train.h5", "0010", 200, 16, 0, CPU, 1, "train")
    render_split(folder / "test.h5", "0010", 20, 16, 1, CPU, 1, "test", stats)
    bindings = [*TINY, "SynDataset.dataset_choice = '0010'", "BaseDataset.predict_pose = True",
                "Wrapper.out_classes = [10, 5]", "ResNet.width = 8"]
    trial = Trial({"gin_config": ["syn/r9/classify"], "seed": 0,
                   "gin_params": dict(split_binding(b) for b in bindings)})
    batch = trial.prep(next(trial.splits["train"].batches(64, 1, shuffle=(0, 1))), "train")

    def losses() -> tuple[float, float]:  # on batch statistics, as in training
        trial.model.train()
        with torch.no_grad():
            output = trial.model(batch.images)
        assert output.logits.shape == (64, 10) and output.more_logits[0].shape == (64, 5)
        return classify_loss(output.logits, batch.targets)[0].item(), classify_loss(output.more_logits[0],
                                                                                    batch.pose)[0].item()

    before = losses()
    for _ in range(20):
        trial.model.train()
        loss, metrics = trial.task.loss(trial.model, batch)
        trial.opt.optimizer.zero_grad()
        loss.backward()
        for group in trial.opt.optimizer.param_groups:
            group["lr"] = 0.05
        trial.opt.optimizer.step()
    assert {"accuracy", "pose_accuracy"} <= set(metrics)
    after = losses()
    assert after[0] < before[0] * 0.9 and after[1] < before[1] * 0.9, (before, after)
    trial.close()


def read_test_mean(folder: Path) -> np.ndarray:
    with h5py.File(folder / "test.h5") as f:
        return f.attrs["mean"]  # the test split carries the training statistics


def test_render_cli_and_training_through_main(workspace: Workspace) -> None:
    made = workspace.run("--code", "0000", "--n", "400", "--res", "32", "-o", "tiny0000", script="misc/render_syn.py")
    assert made.returncode == 0, made.stderr
    assert "400 + 40 images of code 0000 (----)" in made.stdout
    again = workspace.run("--code", "0000", "--n", "400", "-o", "tiny0000", script="misc/render_syn.py")
    assert again.returncode == 2 and "exists: pass --force" in again.stderr
    bad = workspace.run("--code", "2000", "--n", "4", "-o", "bad", script="misc/render_syn.py")
    assert bad.returncode == 2 and "must be four digits 0/1" in bad.stderr
    done = workspace.run("-l", "-q", "-e", "syn", "-g", "syn/r9/classify", "-p", *TINY,
                         "SynDataset.dataset_choice = 'tiny0000'", "BaseDataset.predict_pose = True")
    assert done.returncode == 0, done.stderr
    result = json.loads(next(workspace.exp_dir.glob("syn/*/result.json")).read_text().splitlines()[-1])
    assert result["epoch"] == 2 and 0 <= result["test_accuracy"] <= 1
    done = workspace.run("-l", "-q", "-e", "two_heads", "-g", "syn/r9/classify", "-p", *TINY,
                         "SynDataset.dataset_choice = 'tiny0000'", "BaseDataset.predict_pose = True",
                         "Wrapper.out_classes = [10, 5]")
    assert done.returncode == 0, done.stderr
    result = json.loads(next(workspace.exp_dir.glob("two_heads/*/result.json")).read_text().splitlines()[-1])
    assert 0 <= result["test_pose_accuracy"] <= 1 and 0 <= result["test_accuracy"] <= 1
