"""Divided splits: every image once per epoch, shuffled across divisions, read ahead in chunks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, Workspace
from selfstudy.data import DividedSplit, FolderDataset, ResidentSplit, data_options
from selfstudy.data import hdf5
from selfstudy.data.splits import evaluated_images

CPU = torch.device("cpu")


def write_numbered(folder: Path, n: int = 300, test: int = 50) -> None:
    """A dataset whose image at file row r is filled with r / 1000 (mean 0, std 1: loading keeps
    values), with target r % 10, so every batch says which rows it holds."""
    for name, count in (("train", n), ("test", test)):
        rows = np.arange(count)
        data = np.broadcast_to((rows / 1000.0)[:, None, None, None], (count, 3, 4, 4))
        hdf5.write_split(folder / f"{name}.h5", data, rows % 10, [str(c) for c in range(10)], np.zeros(3), np.ones(3))


def rows_of(batch) -> torch.Tensor:
    return (batch.images[:, 0, 0, 0].double() * 1000).round().long()


@pytest.fixture
def numbered(tmp_path: Path):
    write_numbered(tmp_path)
    return FolderDataset(str(tmp_path))


def test_divisions_visit_every_training_image_once_per_epoch(numbered) -> None:
    options = data_options(max_images=64, chunk_size=16, num_valid=0)
    split = numbered.load(options, CPU, ("train",))["train"]
    assert isinstance(split, DividedSplit) and len(split) == 300
    epochs = []
    for epoch in (1, 2):
        batches = list(split.batches(20, -1, shuffle=(7, epoch)))
        assert len(batches) == 15 and all(len(b.index) == 20 for b in batches)
        index = torch.cat([b.index for b in batches])
        assert sorted(index.tolist()) == list(range(300))  # each exactly once
        assert torch.equal(torch.cat([rows_of(b) for b in batches]), index)  # images are the rows they claim
        assert torch.equal(torch.cat([b.targets for b in batches]), index % 10)
        epochs.append(index)
    assert not torch.equal(epochs[0], epochs[1])
    first_division = [set(epoch[:64].tolist()) for epoch in epochs]
    assert first_division[0] != first_division[1]  # divisions hold different images each epoch
    spread = np.ptp(epochs[0][:64].numpy())
    assert spread > 128  # a division mixes chunks from across the file
    again = torch.cat([b.index for b in split.batches(20, -1, shuffle=(7, 1))])
    assert torch.equal(again, epochs[0])  # a function of (seed, epoch)
    split.close()


def test_divided_matches_resident_in_order_and_spans_passes(numbered) -> None:
    divided = numbered.load(data_options(max_images=64, chunk_size=16, num_valid=0), CPU, ("train", "test"))
    resident = numbered.load(data_options(num_valid=0), CPU, ("train", "test"))
    assert isinstance(resident["train"], ResidentSplit) and resident["train"].images.dtype == torch.float16
    full = numbered.load(data_options(num_valid=0, use_fp16=False), CPU, ("train",))["train"]
    assert full.images.dtype == torch.float32  # BaseDataset.use_fp16 = False
    ordered = list(divided["train"].batches(32, -1))  # evaluation order, last batch partial
    assert [len(b.index) for b in ordered] == [32] * 9 + [12]
    assert torch.equal(torch.cat([rows_of(b) for b in ordered]), torch.arange(300))
    expected = torch.cat([b.images for b in resident["train"].batches(32, -1)])
    assert torch.equal(torch.cat([b.images for b in ordered]), expected)
    assert len(list(divided["train"].batches(20, 40, shuffle=(0, 1)))) == 40  # more than two passes
    for iters in (-1, 3, 20):  # the distinct images an evaluation reads: what a trial reports as valid_labels
        read = torch.cat([rows_of(b) for b in resident["train"].batches(32, iters)])
        assert evaluated_images(300, 32, iters) == len(set(read.tolist())) == {-1: 300, 3: 96, 20: 300}[iters]
    assert isinstance(divided["test"], ResidentSplit)  # 50 test images fit
    divided["train"].close()


def test_next_epoch_is_read_ahead(numbered) -> None:
    split = numbered.load(data_options(max_images=100, chunk_size=10, num_valid=0), CPU, ("train",))["train"]
    list(split.batches(25, -1, shuffle=(0, 1)))
    ahead, future = split._pending
    assert np.array_equal(ahead, split.plan(np.random.default_rng([0, 2]))[0])
    images, _ = future.result()
    assert len(images) == 100  # host memory: one division
    list(split.batches(25, -1, shuffle=(0, 2)))
    split.close()


def test_reads_are_chunked(tmp_path: Path) -> None:
    write_numbered(tmp_path, n=1000)
    rows = np.sort(np.random.default_rng(0).choice(1000, 300, replace=False))
    images, targets = hdf5.read_rows(tmp_path / "train.h5", rows, chunk_size=64)
    assert np.array_equal(targets, rows % 10)
    assert np.allclose(images[:, 0, 0, 0].astype(np.float64) * 1000, rows, atol=0.6)


def test_training_through_main_with_divisions(workspace: Workspace) -> None:
    done = workspace.run("-l", "-q", "-e", "divided", "-p", *TINY, "BaseDataset.max_images = 400",
                         "BaseDataset.chunk_size = 64", "BaseDataset.use_fp16 = False")
    assert done.returncode == 0, done.stderr
    lines = next(workspace.exp_dir.glob("divided/*/result.json")).read_text().splitlines()
    results = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in results] == [1, 2]
    assert results[-1]["valid_accuracy"] > 0.3  # chance is 0.1: it learns from divisions
    refused = workspace.run("-l", "-e", "too_small", "-p", *TINY, "BaseDataset.max_images = 16")
    assert refused.returncode == 2
    assert "BaseDataset.max_images = 16 is smaller than dataloader.batch_size = 32" in refused.stderr
