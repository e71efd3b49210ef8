"""User mistakes: one line naming the fix, a non-zero exit, nothing written."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np
import pytest

from conftest import TINY, Workspace, write_ray_config
from selfstudy.data import hdf5


def tree(directory: Path) -> dict[str, int]:
    """Every file under `directory` with its modification time (nothing if it does not exist)."""
    return {str(p): p.stat().st_mtime_ns for p in sorted(directory.rglob("*"))} if directory.exists() else {}


def assert_refused(workspace: Workspace, *args: str, says: str, env: dict[str, str] | None = None) -> None:
    """The CLI refuses `args`: exit 2, one line on stderr, no traceback, nothing written in EXP_DIR or DATA_DIR."""
    exp_dir = Path((env or {}).get("SELFSTUDY_EXP_DIR", workspace.exp_dir))
    data_dir = Path((env or {}).get("SELFSTUDY_DATA_DIR", workspace.data_dir))
    before = tree(data_dir)
    done = workspace.run(*args, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert says in lines[0], lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert not exp_dir.exists() or not any(exp_dir.iterdir()), "something was written in EXP_DIR"
    assert tree(data_dir) == before, "something was written in DATA_DIR"


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[Path]:
    """`directory`, made read-only for this user (root too: the immutable attribute where chattr works)."""
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o555)
    immutable = os.geteuid() == 0 and subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode == 0
    try:
        yield directory
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)


def crafted_pickle(path: Path, marker: Path) -> Path:
    """A file that runs code when unpickled: loading it creates `marker`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"format": 2, "model": Planted(str(marker))}))
    return path


class Planted:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


def corrupt_copy(data_dir: Path, target: Path) -> Path:
    """A copy of the digits files with bytes in the middle of the image data overwritten."""
    shutil.copytree(data_dir / "digits", target)
    path = target / "train.h5"
    with h5py.File(path, "r") as f:
        offset = f["data"].id.get_chunk_info(1).byte_offset
    with open(path, "r+b") as f:
        f.seek(offset + 1000)
        f.write(b"\xff" * 64)
    return target


Prepared = tuple[dict[str, str], list[str]]  # environment overrides, further CLI arguments


@dataclass
class Case:
    """A mistake: CLI arguments (and the setting they need, made by `prepare`) and what the one line says."""

    args: list[str]
    says: str
    prepare: Callable[[Workspace, Path, contextlib.ExitStack], Prepared] | None = None

    def __repr__(self) -> str:
        return " ".join(self.args) or (self.prepare.__name__ if self.prepare else "")


def unwritable_exp_dir(workspace: Workspace, tmp: Path, stack: contextlib.ExitStack) -> Prepared:
    return {"SELFSTUDY_EXP_DIR": str(stack.enter_context(read_only(tmp / "locked")) / "exp")}, []


def unwritable_data_dir(workspace: Workspace, tmp: Path, stack: contextlib.ExitStack) -> Prepared:
    return {"SELFSTUDY_DATA_DIR": str(stack.enter_context(read_only(tmp / "locked")) / "data")}, []


def damaged_digits(workspace: Workspace, tmp: Path, stack: contextlib.ExitStack) -> Prepared:
    corrupt_copy(workspace.data_dir, tmp / "data" / "digits")
    return {"SELFSTUDY_DATA_DIR": str(tmp / "data")}, []


def planted_pretrained(workspace: Workspace, tmp: Path, stack: contextlib.ExitStack) -> Prepared:
    path = crafted_pickle(tmp / "planted" / "snapshot", tmp / "code_ran")
    return {}, ["-p", f"Wrapper.pretrained = '{path}'"]


def odd_dataset(kind: str) -> Callable[[Workspace, Path, contextlib.ExitStack], Prepared]:
    """A prepare step: a FolderDataset of 40 images whose files are wrong in one way."""
    def prepare(workspace: Workspace, tmp: Path, stack: contextlib.ExitStack) -> Prepared:
        rng = np.random.default_rng(0)
        folder = tmp / "odd"
        for split in ("train", "test"):
            channels = 1 if kind == "test_channels" and split == "test" else 3
            images = rng.random((40, channels, 16, 16)).astype(np.float32)
            hdf5.write_split(folder / f"{split}.h5", images, np.arange(40) % 2, ["a", "b"], images.mean(axis=(0, 2, 3)),
                             images.std(axis=(0, 2, 3)))
        with h5py.File(folder / "train.h5", "r+") as f:
            if kind == "channels_last":
                data = np.moveaxis(f["data"][...], 1, -1)
                del f["data"]
                f["data"] = data
            if kind == "float_targets":
                targets = f["targets"][...].astype(np.float32)
                del f["targets"]
                f["targets"] = targets
        return {}, ["-g", "folder/r9/classify", "-p", f"FolderDataset.path = '{folder}'"]
    prepare.__name__ = f"odd_dataset_{kind}"
    return prepare


def study(name: str, text: str) -> Callable[[Workspace, Path, contextlib.ExitStack], Prepared]:
    """A prepare step that writes the study module `text` and names it with -r."""
    def prepare(workspace: Workspace, tmp: Path, stack: contextlib.ExitStack) -> Prepared:
        return {}, ["-r", str(write_ray_config(tmp, "from ray import tune\n" + text))]
    prepare.__name__ = f"study_{name}"
    return prepare


PRETRAIN = '{"name": "pretrain", "search_space": {"gin_config": "digits/r9/rotate"}}'
CASES = [
    Case(["-g", "digits/r9/clasify"], "did you mean: digits/r9/classify"),
    Case(["-p", "Nothing.here = 1"], "No configurable matching 'Nothing'"),
    Case(["-p", "dataloader.batchsize = 1"], "doesn't have a parameter named 'batchsize'"),
    Case(["-p", "dataloader.batch_size 128"], "write it as 'Name.param = value'"),
    Case(["-p", "dataloader.batch_size = "], "write it as 'Name.param = value'"),
    Case(["-p", "dataloader.batch_size = [1,"], "a value is cut short"),
    Case(["-r", "grid_serch"], "choose from: grid_search"),
    Case(["-p", 'init_resnet.choice = "resnet7"'], "unknown init_resnet.choice 'resnet7'; choose from: resnet9"),
    Case(["-p", 'Wrapper.pretrained = "nowhere/at_all"'], "no snapshot at"),
    Case(["-p", "BaseDataset.semisupervised = 100000"], "exceeds the"),
    Case(["-p", "BaseDataset.semisupervised = 1", "Wrapper.finetune_classifier = False"],
         "BaseDataset.semisupervised = 1: the probe standardises its features over each batch"),
    Case(["-p", "session.train_iters = 0"], "an epoch has no training step"),
    Case(["-p", "BaseDataset.num_valid = 0"], "has no validation images"),
    Case(["-p", "BaseDataset.num_valid = 1500"], "leaves no training image"),
    Case(["-p", "BaseDataset.subset_seed = -1"], "BaseDataset.subset_seed must be an integer from 0 to 2**32 - 1"),
    Case(["-p", "BaseDataset.valid_fraction = 1.5"], "BaseDataset.valid_fraction must be a fraction above 0 and at "
                                                     "most 1"),
    Case(["-p", "BaseDataset.semisupervised = 1200", "BaseDataset.valid_fraction = 0.3"],
         "valid_fraction = 0.3 of 1200 labelled training images asks for 360 validation images, but only 300 of the "
         "1500 images of DigitsDataset are held out"),
    Case(["-e", "never_ran", "--resume"], "nothing to resume"),
    Case(["-p", "session.precision = 'fp8'"], "unknown session.precision 'fp8'"),
    Case(["-e", "../escape"], "experiment name"),
    Case(["-e", "."], "experiment name"),
    Case(["-e", ".."], "experiment name"),
    Case(["-e", "a" * 300], "experiment name aaaaaaaaaaaaaaaaaaaa... is 300 characters long: give at most 100"),
    Case(["-p", "BaseDataset.input_res = 7"], "BaseDataset.input_res = 7: init_resnet.choice pools images smaller than 8 "
                                              "pixels away to nothing: set BaseDataset.input_res = 8 or more"),
    Case(["-g", "cifar/r9/classify"], "CIFAR files not found and not downloadable: put the extracted "
                                      "'cifar-10-batches-py' folder"),
    Case(["-p", "BaseDataset.input_res = 0"], "BaseDataset.input_res must be a positive number of pixels or None"),
    Case(["-p", "Wrapper.model_choice = 'amdim_ref'"], "Wrapper.model_choice = 'amdim_ref' chose the 2020 reference "
                                                       "AMDIM encoder, which selfstudy does not build"),
    Case(["-p", "ClassifyTask.is_pose = True"], "ClassifyTask.is_pose = True needs pose labels, but "
                                                "BaseDataset.predict_pose is False for DigitsDataset"),
    Case(["-p", "BaseDataset.predict_pose = True"], "BaseDataset.predict_pose = True needs rot_mat in the dataset, "
                                                    "but DigitsDataset has none"),
    Case(["-g", "digits/r9/simclr", "-p", "BaseDataset.double_sample = False"], "SimCLRTask compares two views"),
    Case(["-p", "Wrapper.out_classes = [10, 3]", "BaseDataset.predict_pose = True"],
         "Wrapper.out_classes' second head learns the 5-way pose: give it at least 5 outputs"),
    Case(["-p", "Wrapper.out_classes = [10, 5, 3]"], "asks for 3 heads, but ClassifyTask trains 2 (class, pose)"),
    Case(["-p", "Wrapper.out_classes = [10, 0]"], "must be a positive number of outputs or a list of them"),
    Case(["-p", "session.model = 'ResnetModel'"], "session.model = 'ResnetModel': the model is always 'Wrapper'"),
    Case(["-p", "Wrapper.model_choice = 'vgg'"], "unknown Wrapper.model_choice 'vgg'"),
    Case(["-p", "ResNet.width = -8"], "ResNet.width = -8 must be a whole number of channels, at least 1"),
    Case(["-g", "digits/r9/simclr", "-p", "SimCLRTask.temperature = 0"], "SimCLRTask.temperature = 0 must be a "
                                                                         "finite number above 0"),
    Case(["-g", "digits/r9/byol", "-p", "BYOLTask.base_momentum = 1.5"], "BYOLTask.base_momentum = 1.5 must be a "
                                                                         "number in [0, 1]"),
    Case(["-g", "digits/r9/vae", "-p", "VAETask.erase = 40"], "VAETask.erase = 40 blanks a square larger than the "
                                                                 "32x32 images of DigitsDataset: give at most 32"),
    Case(["-g", "digits/r9/amdim", "-p", "AMDIMTask.scales = 9"], "AMDIMTask.scales = 9 asks for more stages than"),
    Case(["-p", "scheduler.scheduler_fn = 'StepLR'"], "unknown scheduler.scheduler_fn 'StepLR'"),
    Case(["-g", "digits/vit/mae", "-p", "init_resnet.choice = 'resnet9'"], "MAETask masks the patches of a vision "
                                                                          "transformer, but the backbone is a ResNet"),
    Case(["-g", "digits/vit/dino", "-p", "augment.local_res = 14"], "augment.local_res = 14 does not split into "
                                                                    "ViT.patch_size = 4 pixel patches"),
    Case(["-g", "digits/r9/dino", "-p", "augment.local_res = 40"], "augment.local_res = 40 is above the images' 32 "
                                                                   "pixels"),
    Case(["-p", "gradients.max_norm = 0"], "gradients.max_norm = 0 must be positive"),
    Case(["-g", "digits/vit/mae", "-p", "MAETask.mask_ratio = 0.001"], "MAETask.mask_ratio = 0.001 masks none of "
                                                                       "the 64 patches"),
    Case(["-g", "digits/vit/classify", "-p", "ViT.patch_size = 5"], "ViT.patch_size = 5 does not divide the 32-pixel "
                                                                    "images into whole patches: choose one of 1, 2, 4"),
    Case(["-g", "digits/r9/cmc", "-p", "DigitsDataset.to_lab = False"], "CMCTask contrasts the L and ab channels of "
                                                                        "LAB images, but DigitsDataset stores rgb"),
    Case(["-g", "digits/r9/probe_grid", "-p", "probe_grid.budgets = [100, 5000]"],
         "probe_grid.budgets has 5000, more than the 1200 training images of DigitsDataset: lower it"),
    Case(["-p", "probe_grid.lrs = [0.1, 0.3]"], "probe_grid.* trains linear probes on a frozen backbone: set "
                                                "Wrapper.finetune_classifier = False"),
    Case(["-g", "digits/r9/probe_grid", "-p", "probe_grid.lrs = 0.1"], "probe_grid.lrs = 0.1 must be a non-empty list"),
    Case(["-g", "digits/r9/probe_grid", "-p", "BaseDataset.semisupervised = 100"],
         "BaseDataset.semisupervised = 100 and probe_grid.budgets both set the label budget"),
    Case(["-g", "digits/r9/probe_grid", "-p", "probe_grid.budgets = [0, 1200]"],
         "probe_grid.budgets = [0, 1200] asks for all 1200 training images twice"),
    Case(["-g", "digits/r9/probe_grid", "-p", "session.task = 'RotateTask'"],
         "probe_grid.* trains linear heads on each image's class, but session.task is RotateTask"),
    Case(["-g", "digits/r9/probe_grid", "-p", "scheduler.scale = 3.0"],
         "scheduler.scale and probe_grid.lrs both set each head's learning rates: keep one of them"),
    Case(["-g", "digits/r9/probe_grid", "-p", "probe_grid.views = 2"], "probe_grid.views = 2 encodes augmented views, "
                                                                        "but augment.* leaves the training images"),
    Case(["-a", "127.0.0.1:1"], "no Ray cluster answers at 127.0.0.1:1"),
    Case(["-a", "nowhere"], "give the head node's HOST:PORT"),
    Case(["-l", "-a", "127.0.0.1:6379"], "drop one of them"),
    Case([], "cannot write in", unwritable_exp_dir),
    Case([], "cannot write dataset file", unwritable_data_dir),
    Case([], "corrupt dataset file", damaged_digits),
    Case([], "has data (40, 16, 16, 3) (channels last?), but mean and std for 3 channels: store images as N x C x H x W",
         odd_dataset("channels_last")),
    Case([], "stores targets as float32: classes are whole numbers from 0; store them as int64",
         odd_dataset("float_targets")),
    Case([], "train.h5 has 3 channels, ", odd_dataset("test_channels")),
    Case([], "refusing", planted_pretrained),
    Case([], "pretrained_from = 'pretrian' names no earlier stage (stages before it: pretrain)", study("unknown_source",
        f'stages = [{PRETRAIN}, {{"name": "transfer", "pretrained_from": "pretrian", "search_space": {{}}}}]')),
    Case([], "BaseDataset.semisupervised = 5000 exceeds the", study("budget_too_large",
        f'stages = [{PRETRAIN}, {{"name": "transfer", "pretrained_from": "pretrain", "search_space": '
        '{"BaseDataset.semisupervised": tune.grid_search([100, 5000])}}]')),
    Case([], "stage 'transfer' selects on valid_loss (min), stage 'pretrain' on mean_accuracy (max)", study("metric_mismatch",
        f'stages = [{PRETRAIN}, {{"name": "transfer", "pretrained_from": "pretrain", "search_space": {{}}, '
        '"metric": "valid_loss", "mode": "min"}]')),
    Case([], "would select epochs and trials on the test split", study(
        "test_metric", f'metric = "test_accuracy"\nstages = [{PRETRAIN}]')),
    Case([], "stage 'transfer' builds backbone layer backbone.prep.0.weight as (8, 3, 3, 3), but stage 'pretrain' trains "
             "it as", study("backbone_mismatch", f'stages = [{PRETRAIN}, {{"name": "transfer", "pretrained_from": '
                                                 '"pretrain", "search_space": {"ResNet.width": 8}}]')),
    Case([], "two stages are named 'pretrain'", study("same_name", f"stages = [{PRETRAIN}, {PRETRAIN}]")),
    Case([], "the search_space gives no trials", study("empty_grid", "search_space = {'seed': tune.grid_search([])}")),
    Case([], "unknown key 'source'", study("unknown_key",
        f'stages = [{PRETRAIN}, {{"name": "transfer", "source": "pretrain", "search_space": {{}}}}]')),
]


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_cli_mistakes(workspace: Workspace, tmp_path: Path, case: Case) -> None:
    """The catalogue of user mistakes: each one line, exit 2, no traceback, nothing written."""
    with contextlib.ExitStack() as stack:
        env, more = case.prepare(workspace, tmp_path, stack) if case.prepare else ({}, [])
        assert_refused(workspace, *case.args, *more, says=case.says, env={**workspace.env(), **env} if env else None)
    assert not (tmp_path / "code_ran").exists(), "a crafted snapshot's code ran"


def test_missing_and_corrupt_dataset_files(workspace: Workspace, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    assert_refused(workspace, "-p", "session.dataset = @FolderDataset()", f"FolderDataset.path = '{folder}'",
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
    config.write_text("from ray import tune\nsearch_space = {'seed': tune.grid_search([0, -1])}\n")
    assert_refused(workspace, "-r", str(config), says="seed = -1: a trial's seed is a whole number from 0 to")
    config.write_text('search_space = {"batch_size": 3}\n')
    assert_refused(workspace, "-r", str(config), says="unknown key 'batch_size'")
    config.write_text('search_space = {"dataloader.batch_size": 3}\n')
    assert_refused(workspace, "-r", str(config), "-p", "dataloader.batch_size = 4", says="drop one of them")
