"""CIFAR-10/100 from the standard python-pickle release, converted once to HDF5.

Expected under `DATA_DIR/cifar/`: the extracted `cifar-10-batches-py/` (data_batch_1..5,
test_batch) or `cifar-100-python/` (train, test). When they are absent the files are
downloaded if the network allows (never with SELFSTUDY_OFFLINE=1); otherwise the error
says where to put them.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import gin
import numpy as np

import paths
from selfstudy.data import hdf5
from selfstudy.data.base import DatasetFiles
from selfstudy.data.folder import to_lab
from selfstudy.errors import UserError

RELEASES = {
    False: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
            b"labels", b"label_names"),
    True: ("cifar-100-python", ["train"], ["test"], "meta", b"fine_labels", b"fine_label_names"),
}


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise UserError(f"cannot read CIFAR file {path} ({err}): extract the original release again") from None


def _fetch(root: Path, use_100: bool) -> None:
    """Download the release with torchvision; a clear error when offline."""
    folder = RELEASES[use_100][0]
    made = not root.exists()  # a failed download leaves nothing it made
    try:
        if os.environ.get("SELFSTUDY_OFFLINE") == "1":
            raise ConnectionError("SELFSTUDY_OFFLINE=1")
        from torchvision import datasets

        (datasets.CIFAR100 if use_100 else datasets.CIFAR10)(str(root), train=True, download=True)
    except Exception:  # any network failure means the same thing to the user
        if made:
            shutil.rmtree(root, ignore_errors=True)
        raise UserError(
            f"CIFAR files not found and not downloadable: put the extracted '{folder}' folder "
            f"of the python release under {root}"
        ) from None


def make_cifar(root: Path, target: Path, use_100: bool, lab: bool) -> None:
    """Convert the pickled release under `root` into HDF5 train/test files in `target`."""
    folder, train_files, test_files, meta_file, label_key, names_key = RELEASES[use_100]
    source = root / folder
    if not (source / train_files[0]).exists():
        _fetch(root, use_100)
    names = [n.decode() for n in _unpickle(source / meta_file)[names_key]]
    arrays = {}
    for split, files in (("train", train_files), ("test", test_files)):
        parts = [_unpickle(source / name) for name in files]
        images = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
        targets = np.concatenate([np.asarray(p[label_key]) for p in parts]).astype(np.int64)
        arrays[split] = (to_lab(images) if lab else images, targets)
    mean = arrays["train"][0].mean(axis=(0, 2, 3))
    std = arrays["train"][0].std(axis=(0, 2, 3))
    for split, (images, targets) in arrays.items():
        hdf5.write_split(target / f"{split}.h5", images, targets, names, mean, std, "lab" if lab else "rgb")


@gin.configurable
def CIFARDataset(to_lab: bool = False, use_100: bool = False) -> DatasetFiles:  # noqa: N802
    """CIFAR-10 (or CIFAR-100 with `use_100`), RGB or LAB (`to_lab`), made on first use."""
    root = paths.DATA_DIR / "cifar"
    target = root / f"cifar{100 if use_100 else 10}{'_lab' if to_lab else ''}"
    if not (target / "train.h5").exists() or not (target / "test.h5").exists():
        make_cifar(root, target, use_100, to_lab)
    return DatasetFiles.open("CIFARDataset", target / "train.h5", target / "test.h5")
