"""User mistakes: one line naming the fix, a non-zero exit, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TINY, Workspace, write_ray_config


def assert_refused(workspace: Workspace, *args: str, says: str) -> None:
    done = workspace.run(*args)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert says in lines[0], lines[0]
    assert not workspace.exp_dir.exists() or not any(workspace.exp_dir.iterdir()), "something was written"


@pytest.mark.parametrize("args, says", [
    (["-g", "digits/r9/clasify"], "did you mean: digits/r9/classify"),
    (["-p", "Nothing.here = 1"], "No configurable matching 'Nothing'"),
    (["-p", "dataloader.batchsize = 1"], "doesn't have a parameter named 'batchsize'"),
    (["-p", "dataloader.batch_size 128"], "write it as 'Name.param = value'"),
    (["-p", "dataloader.batch_size = "], "write it as 'Name.param = value'"),
    (["-r", "grid_serch"], "choose from: grid_search"),
    (["-p", 'init_resnet.choice = "resnet7"'], "unknown init_resnet.choice 'resnet7'; choose from: resnet9"),
    (["-p", 'Wrapper.pretrained = "nowhere/at_all"'], "no snapshot at"),
    (["-p", "BaseDataset.semisupervised = 100000"], "exceeds the"),
    (["-e", "never_ran", "--resume"], "nothing to resume"),
    (["-p", "session.precision = 'fp8'"], "unknown session.precision 'fp8'"),
    (["-e", "../escape"], "experiment name"),
    (["-p", "ClassifyTask.is_pose = True"], "ClassifyTask.is_pose = True needs pose labels, but "
                                            "BaseDataset.predict_pose is False for DigitsDataset"),
    (["-p", "BaseDataset.predict_pose = True"], "BaseDataset.predict_pose = True needs rot_mat in the dataset, "
                                                "but DigitsDataset has none"),
    (["-g", "digits/r9/simclr", "-p", "BaseDataset.double_sample = False"], "SimCLRTask compares two views"),
    (["-p", "Wrapper.out_classes = [10, 5]"], "Wrapper.out_classes' second head learns the 5-way pose: set "
                                             "BaseDataset.predict_pose = True"),
    (["-p", "Wrapper.out_classes = [10, 5, 3]"], "asks for 3 heads, but ClassifyTask trains 2 (class, pose)"),
    (["-p", "Wrapper.out_classes = [10, 0]"], "must be a positive number of outputs or a list of them"),
    (["-g", "digits/r9/rotate", "-p", "Wrapper.out_classes = [10, 5]"], "asks for several heads"),
    (["-g", "digits/r9/cmc", "-p", "DigitsDataset.to_lab = False"], "CMCTask contrasts the L and ab channels of "
                                                                    "LAB images, but DigitsDataset stores rgb"),
])
def test_cli_mistakes(workspace: Workspace, args: list[str], says: str) -> None:
    assert_refused(workspace, *args, says=says)


def test_missing_and_corrupt_dataset_files(workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    assert_refused(workspace, "-p", f"session.dataset = @FolderDataset()", f"FolderDataset.path = '{folder}'",
                   says=f"missing dataset file {folder / 'train.h5'}")
    folder.mkdir()
    for name in ("train.h5", "test.h5"):
        (folder / name).write_bytes(b"\x89HDF\r\n not really")
    assert_refused(workspace, "-p", "session.dataset = @FolderDataset()", f"FolderDataset.path = '{folder}'",
                   says=f"corrupt dataset file {folder / 'train.h5'}")


def test_pretrained_weights_that_do_not_fit_name_the_layer(workspace: Workspace) -> None:
    done = workspace.run("-e", "source", "-l", "-q", "-p", *TINY, "BaseDataset.semisupervised = 60",
                         "scheduler.milestones = [1]", "scheduler.target_lrs = [0.0]")
    assert done.returncode == 0, done.stderr
    snapshot = next((workspace.exp_dir / "source").glob("trial_*/checkpoint_*"))
    name = f"source/{snapshot.parent.name}/{snapshot.name}"
    done = workspace.run("-e", "wide", "-l", "-q", "-p", *TINY, f'Wrapper.pretrained = "{name}"', "ResNet.width = 8")
    assert done.returncode == 2
    assert "layer 'backbone.prep.0.weight' is (4, 3, 3, 3) in the snapshot but (8, 3, 3, 3) here" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (workspace.exp_dir / "wide").exists()
    done = workspace.run("-e", "more", "-l", "-q", "-p", *TINY, f'Wrapper.pretrained = "{name}"',
                         "Wrapper.out_classes = 12")
    assert "layer 'classifier.weight'" in done.stderr and "Wrapper.ignore_pretrained_fc = True" in done.stderr


def test_a_bad_variant_of_a_sweep_stops_it_before_ray_starts(workspace: Workspace, tmp_path: Path) -> None:
    config = write_ray_config(tmp_path, """
from ray import tune
search_space = {"init_resnet.choice": tune.grid_search(["resnet9", "resnet7"])}
""")
    assert_refused(workspace, "-r", str(config), says="unknown init_resnet.choice 'resnet7'")
    config.write_text('search_space = {"batch_size": 3}\n')
    assert_refused(workspace, "-r", str(config), says="unknown key 'batch_size'")
    config.write_text('search_space = {"dataloader.batch_size": 3}\n')
    assert_refused(workspace, "-r", str(config), "-p", "dataloader.batch_size = 4", says="drop one of them")
