"""Datasets: the HDF5 format, splits, label budgets, resident batches, CIFAR conversion."""

from __future__ import annotations

import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import paths
from conftest import Workspace, make_fake_cifar
from selfstudy.data import CIFARDataset, DigitsDataset, FolderDataset, ResidentSplit, data_options
from selfstudy.data import hdf5
from selfstudy.data.budget import balanced_subset
from selfstudy.errors import UserError


def test_digits_files(workspace: Workspace) -> None:
    digits = DigitsDataset()
    assert (digits.train.num_images, digits.test.num_images) == (1500, 297)
    assert digits.train.image_shape == (3, 32, 32) and digits.num_classes == 10
    with h5py.File(digits.train.path) as f:
        raw = f["data"][...].astype(np.float32)
        assert f["data"].dtype == np.float16 and raw.min() >= 0 and raw.max() <= 1  # pixel values
    assert raw.mean(axis=(0, 2, 3)) == pytest.approx(digits.train.mean, abs=1e-3)
    data = digits.load(data_options(num_valid=0), torch.device("cpu"), ("train",))["train"].images.float().numpy()
    assert np.abs(data.mean(axis=(0, 2, 3))).max() < 1e-2  # normalised on loading with the stored statistics
    assert np.abs(data.std(axis=(0, 2, 3)) - 1).max() < 1e-2


def test_valid_split_and_label_budget(workspace: Workspace) -> None:
    digits = DigitsDataset()
    rows = digits.split_rows(data_options(num_valid=200))
    assert len(rows["valid"]) == 200 and len(rows["train"]) == 1300
    assert not set(rows["train"]) & set(rows["valid"])
    assert np.array_equal(rows["valid"], digits.split_rows(data_options(num_valid=200, semisupervised=30))["valid"])
    budget = digits.split_rows(data_options(num_valid=200, semisupervised=35))["train"]
    assert len(budget) == 35 and set(budget) <= set(rows["train"])
    splits = digits.load(data_options(num_valid=200, semisupervised=35), torch.device("cpu"), ("train",))
    counts = torch.bincount(splits["train"].targets, minlength=10)
    assert counts.max() - counts.min() <= 1  # class-balanced


def test_balanced_subset_is_deterministic_and_balanced() -> None:
    targets = np.array([0] * 50 + [1] * 5 + [2] * 45)
    picked = balanced_subset(targets, 30, seed=0)
    assert np.array_equal(picked, balanced_subset(targets, 30, seed=0))
    assert np.bincount(targets[picked]).tolist() == [13, 5, 12]  # class 1 has only 5
    with pytest.raises(ValueError):
        balanced_subset(targets, 101, seed=0)


def test_label_subsets_differ_by_seed_and_nest_within_one(workspace: Workspace) -> None:
    digits = DigitsDataset()

    def rows(seed: int | None, budget: int, **more) -> dict[str, np.ndarray]:
        return digits.split_rows(data_options(num_valid=200, semisupervised=budget, subset_seed=seed, **more))

    first, second = rows(0, 100), rows(1, 100)
    assert len(set(first["train"]) ^ set(second["train"])) > 100  # mostly different labelled images
    assert set(first["train"]) < set(rows(0, 300)["train"])  # the 100 are among the 300
    assert np.array_equal(first["valid"], second["valid"])  # one validation split for every seed
    assert np.array_equal(rows(None, 100)["train"], first["train"])
    sized = [rows(seed, budget, valid_fraction=0.2)["valid"] for seed, budget in ((0, 100), (1, 100), (0, 300))]
    assert [len(v) for v in sized] == [20, 20, 60] and set(sized[0]) < set(sized[2]) <= set(first["valid"])
    assert not np.array_equal(sized[0], sized[1])
    targets = digits.load(data_options(num_valid=200, semisupervised=100, subset_seed=0, valid_fraction=0.2),
                          torch.device("cpu"), ("valid",))["valid"].targets
    assert torch.bincount(targets, minlength=10).tolist() == [2] * 10  # class-balanced too
    with pytest.raises(UserError, match="valid_fraction = 0.5 of 1000 labelled training images asks for 500 valid"):
        rows(0, 1000, valid_fraction=0.5)


def test_batches_visit_each_image_once_per_pass() -> None:
    split = ResidentSplit(torch.zeros(70, 3, 4, 4, dtype=torch.float16), torch.arange(70))
    train = list(split.batches(16, -1, shuffle=(0, 1)))
    assert len(train) == 4 and all(len(b.targets) == 16 for b in train)  # the partial batch is dropped
    seen = torch.cat([b.index for b in train])
    assert len(set(seen.tolist())) == 64 and torch.equal(seen, torch.cat([b.targets for b in train]))
    evaluation = list(split.batches(16, -1))
    assert torch.equal(torch.cat([b.index for b in evaluation]), torch.arange(70))
    assert len(list(split.batches(16, 9, shuffle=(0, 1)))) == 9  # more than one pass
    again = list(split.batches(16, -1, shuffle=(0, 1)))
    assert torch.equal(seen, torch.cat([b.index for b in again]))  # a function of (seed, epoch)
    assert not torch.equal(seen, torch.cat([b.index for b in split.batches(16, -1, shuffle=(0, 2))]))
    assert train[0].images.dtype == torch.float32


def test_resolution_is_resized_on_load(workspace: Workspace) -> None:
    splits = DigitsDataset().load(data_options(input_res=16, num_valid=10), torch.device("cpu"), ("valid",))
    assert splits["valid"].images.shape == (10, 3, 16, 16)


@pytest.mark.parametrize("lab", [False, True])
def test_cifar_release_converts_to_hdf5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lab: bool) -> None:
    monkeypatch.setattr(paths, "DATA_DIR", tmp_path)
    make_fake_cifar(tmp_path)
    cifar = CIFARDataset(to_lab=lab)
    assert (cifar.train.num_images, cifar.test.num_images) == (100, 30)
    assert cifar.train.classes == tuple(f"class{i}" for i in range(10))
    assert cifar.train.color_space == ("lab" if lab else "rgb")
    with open(tmp_path / "cifar" / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f)
    with h5py.File(cifar.test.path) as f:
        data, targets = f["data"][...].astype(np.float32), f["targets"][...]
    assert targets.tolist() == raw[b"labels"]
    if not lab:
        pixel = raw[b"data"][0].reshape(3, 32, 32)[:, 5, 7] / 255.0
        assert data[0, :, 5, 7] == pytest.approx(pixel, abs=2e-3)
    else:
        assert 20 < cifar.train.mean[0] < 80  # L of random colours, in [0, 100]


def test_cifar_absent_offline_says_where_to_put_it(workspace: Workspace, tmp_path: Path) -> None:
    workspace.data_dir = tmp_path / "empty"
    done = workspace.run("-g", "cifar/r9/classify")
    assert done.returncode == 2
    assert f"put the extracted 'cifar-10-batches-py' folder of the python release under {tmp_path / 'empty' / 'cifar'}" \
        in done.stderr
    assert not (tmp_path / "empty" / "cifar" / "cifar10").exists() and not workspace.exp_dir.exists()


def test_folder_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing dataset file"):
        FolderDataset(str(tmp_path))
    with h5py.File(tmp_path / "train.h5", "w") as f:
        f["data"] = np.zeros((2, 3, 4, 4), np.float16)
    (tmp_path / "test.h5").write_bytes(b"garbage")
    with pytest.raises(UserError, match="lacks targets"):
        FolderDataset(str(tmp_path))
    for name in ("train.h5", "test.h5"):
        with h5py.File(tmp_path / name, "w") as f:
            hdf5.create_split(f, (2, 3, 4, 4), ["a"], "rgb")
            f.attrs.update(mean=np.zeros(3), std=np.array([1.0, 0.0, 1.0]))
    with pytest.raises(UserError, match=r"stores channel std \[1.0, 0.0, 1.0\]"):
        FolderDataset(str(tmp_path))
