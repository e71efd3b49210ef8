"""Device-resident splits served as whole batches by index.

A dataset on disk is a pair of HDF5 split files (train, test; see `hdf5.py`). Loading it
for a trial reads the images once into one float16 tensor per split on the training
device; a batch is then a single indexing operation, with no per-sample Python.
The validation split is the last `num_valid` images of a fixed permutation of the
training file (the same for every trial); `semisupervised = N` keeps N class-balanced
labelled images of the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple

import gin
import numpy as np
import torch
import torch.nn.functional as F

import paths
from selfstudy.data import hdf5
from selfstudy.errors import UserError

SPLIT_SEED = 0  # fixes the valid split and label subsets across trials


class Batch(NamedTuple):
    images: torch.Tensor  # B x C x H x W, compute dtype, normalised
    targets: torch.Tensor  # B, int64
    index: torch.Tensor  # B, int64: row of each image in its split


@dataclass(frozen=True)
class DataOptions:
    input_res: int | None
    semisupervised: int | None
    num_valid: int | None


@gin.configurable("BaseDataset")
def data_options(input_res: int | None = None, semisupervised: int | None = None,
                 num_valid: int | None = None) -> DataOptions:
    """`BaseDataset.*`: resolution (pixels; None keeps the stored one), labelled-image
    budget (None or 0: all), validation images (None: a tenth of the training file)."""
    for name, value in (("input_res", input_res), ("semisupervised", semisupervised), ("num_valid", num_valid)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise UserError(f"BaseDataset.{name} must be a non-negative integer or None, got {value!r}")
    return DataOptions(input_res, semisupervised or None, num_valid)


@gin.configurable("dataloader")
def batch_size_option(batch_size: int = 512) -> int:
    """`dataloader.batch_size`: images per training and evaluation batch."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"dataloader.batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


@dataclass(frozen=True)
class DatasetFiles:
    """A dataset on disk: its split files, checked but not loaded."""

    name: str
    train: hdf5.SplitInfo
    test: hdf5.SplitInfo

    @classmethod
    def open(cls, name: str, train_path: Path, test_path: Path) -> "DatasetFiles":
        train, test = hdf5.read_info(train_path), hdf5.read_info(test_path)
        if train.image_shape[0] != test.image_shape[0] or train.classes != test.classes:
            raise UserError(f"{train_path} and {test_path} disagree on channels or classes: rebuild them together")
        return cls(name, train, test)

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def channels(self) -> int:
        return self.train.image_shape[0]

    def resolution(self, options: DataOptions) -> int:
        return options.input_res or self.train.image_shape[1]

    def split_rows(self, options: DataOptions) -> dict[str, np.ndarray]:
        """Row indices into the train file for the train and valid splits (sorted)."""
        n = self.train.num_images
        num_valid = n // 10 if options.num_valid is None else options.num_valid
        if num_valid >= n:
            raise UserError(f"BaseDataset.num_valid = {num_valid} leaves no training image of {n} in {self.name}")
        order = np.random.default_rng(SPLIT_SEED).permutation(n)
        rows = {"train": np.sort(order[: n - num_valid]), "valid": np.sort(order[n - num_valid:])}
        if options.semisupervised:
            _, targets = hdf5.read_arrays(self.train.path, rows["train"])
            rows["train"] = rows["train"][balanced_subset(targets, options.semisupervised, self.name)]
        return rows

    def load(self, options: DataOptions, device: torch.device, splits: tuple[str, ...]) -> dict[str, "DeviceSplit"]:
        """Read the requested splits onto `device` at the requested resolution."""
        rows = self.split_rows(options)
        loaded = {}
        for split in splits:
            if split == "test":
                images, targets = hdf5.read_arrays(self.test.path)
            else:
                images, targets = hdf5.read_arrays(self.train.path, rows[split])
            loaded[split] = DeviceSplit.from_arrays(images, targets, self.resolution(options), device)
        return loaded


@gin.configurable
def HDF5Dataset(path: str) -> DatasetFiles:  # noqa: N802  (the gin name users write)
    """Any dataset in the project's format: a folder holding train.h5 and test.h5
    (absolute, or relative to DATA_DIR)."""
    folder = Path(path).expanduser()
    folder = folder if folder.is_absolute() else paths.DATA_DIR / folder
    return DatasetFiles.open(f"HDF5Dataset({path})", folder / "train.h5", folder / "test.h5")


def balanced_subset(targets: np.ndarray, budget: int, name: str) -> np.ndarray:
    """Positions of `budget` images, as equal per class as possible (sorted)."""
    if budget > len(targets):
        raise UserError(f"BaseDataset.semisupervised = {budget} exceeds the {len(targets)} training images of {name}")
    rng = np.random.default_rng(SPLIT_SEED)
    by_class = [rng.permutation(np.flatnonzero(targets == c)) for c in np.unique(targets)]
    picked: list[int] = []
    depth = 0
    while len(picked) < budget:  # round-robin over classes, so each gets budget // classes or one more
        for members in by_class:
            if depth < len(members) and len(picked) < budget:
                picked.append(int(members[depth]))
        depth += 1
    return np.sort(np.array(picked))


@dataclass
class DeviceSplit:
    """One split held on the training device."""

    images: torch.Tensor  # N x C x H x W float16, normalised
    targets: torch.Tensor  # N int64

    @classmethod
    def from_arrays(cls, images: np.ndarray, targets: np.ndarray, res: int, device: torch.device) -> "DeviceSplit":
        x = torch.from_numpy(images).to(device)
        if x.shape[-1] != res or x.shape[-2] != res:
            x = F.interpolate(x.float(), size=(res, res), mode="bilinear", antialias=True, align_corners=False)
        return cls(x.to(torch.float16).contiguous(), torch.from_numpy(targets).long().to(device))

    def __len__(self) -> int:
        return len(self.targets)

    def num_batches(self, batch_size: int, iters: int, train: bool) -> int:
        """Batches per epoch: `iters`, or a full pass when `iters == -1`.

        A training pass drops a last partial batch when at least one full batch exists.
        """
        if iters >= 0:
            return iters
        full, rest = divmod(len(self), batch_size)
        return full if (train and full) else full + bool(rest)

    def batches(self, batch_size: int, iters: int, train: bool, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32) -> Iterator[Batch]:
        """Yield the epoch's batches; training order is a fresh permutation per pass."""
        n = len(self)
        device = self.targets.device

        def new_pass() -> torch.Tensor:  # drawn on the CPU generator, moved once per pass
            return (torch.randperm(n, generator=generator) if train else torch.arange(n)).to(device)

        order, position = new_pass(), 0
        for _ in range(self.num_batches(batch_size, iters, train)):
            if position + (batch_size if train else 1) > n:  # start another pass
                order, position = new_pass(), 0
            index = order[position: position + batch_size]
            position += batch_size
            yield Batch(self.images[index].to(dtype), self.targets[index], index)
