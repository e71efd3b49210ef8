"""scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes), offline.

Made once into `DATA_DIR/digits/{train,test}.h5`: upsampled to 32x32, grey replicated to
three channels, with the training split's mean/std; 297 images form the test split.
"""

from __future__ import annotations

import gin
import numpy as np
import torch
import torch.nn.functional as F

import paths
from selfstudy.data import hdf5
from selfstudy.data.base import DatasetFiles
from selfstudy.data.folder import to_lab

RESOLUTION = 32
NUM_TEST = 297


def make_digits(directory, lab: bool = False) -> None:
    """Write the digits train and test files into `directory` (CIELAB with `lab`)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # N x 1 x 8 x 8, in [0, 1]
    images = F.interpolate(images, size=(RESOLUTION, RESOLUTION), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1).repeat(1, 3, 1, 1).numpy()
    if lab:
        images = to_lab(images)
    targets = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(targets))
    test, train = order[:NUM_TEST], order[NUM_TEST:]
    mean = images[train].mean(axis=(0, 2, 3))
    std = images[train].std(axis=(0, 2, 3))
    classes = [str(c) for c in digits.target_names]
    for name, rows in (("train", train), ("test", test)):
        hdf5.write_split(directory / f"{name}.h5", images[rows], targets[rows], classes, mean, std,
                         "lab" if lab else "rgb")


@gin.configurable
def DigitsDataset(to_lab: bool = False) -> DatasetFiles:  # noqa: N802  (the gin name users write)
    """The digits dataset, made on first use; `to_lab` stores CIELAB (grey digits: a and b are
    nearly constant)."""
    directory = paths.DATA_DIR / ("digits_lab" if to_lab else "digits")
    if not (directory / "train.h5").exists() or not (directory / "test.h5").exists():
        make_digits(directory, to_lab)
    return DatasetFiles.open("DigitsDataset", directory / "train.h5", directory / "test.h5")
