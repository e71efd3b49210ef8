"""The project's HDF5 format: one file per split.

Datasets in a file:
    data     float16, N x C x H x W, already normalised with the stored mean/std
    targets  int64, N (class index)
Attributes:
    mean, std     per-channel statistics of the training split (before normalisation)
    classes       class names, in target order
    color_space   'rgb' or 'lab'
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from selfstudy.errors import UserError


@dataclass(frozen=True)
class SplitInfo:
    """What a split file holds, read without loading its images."""

    path: Path
    num_images: int
    image_shape: tuple[int, int, int]  # C, H, W
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    color_space: str


def write_split(
    path: Path,
    data: np.ndarray,
    targets: np.ndarray,
    classes: list[str],
    mean: np.ndarray,
    std: np.ndarray,
    color_space: str = "rgb",
) -> None:
    """Write a split atomically: a crash leaves either no file or a complete one."""
    if np.any(np.asarray(std) <= 0):
        raise UserError(f"refusing to write {path}: a channel has std {list(std)}; the images are constant")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("data", data=data.astype(np.float16), chunks=(min(len(data), 256),) + data.shape[1:])
        f.create_dataset("targets", data=targets.astype(np.int64))
        f.attrs["classes"] = list(classes)
        f.attrs["mean"] = np.asarray(mean, dtype=np.float64)
        f.attrs["std"] = np.asarray(std, dtype=np.float64)
        f.attrs["color_space"] = color_space
    os.replace(tmp, path)


def read_info(path: Path) -> SplitInfo:
    """Check a split file and read its metadata; a missing or corrupt file is a `UserError`."""
    if not path.is_file():
        raise UserError(f"missing dataset file {path}: create it with the dataset's maker or fix the path")
    try:
        with h5py.File(path, "r") as f:
            missing = [key for key in ("data", "targets") if key not in f]
            if missing:
                raise UserError(f"dataset file {path} lacks {', '.join(missing)}: rebuild it (delete it and rerun)")
            data, targets = f["data"], f["targets"]
            if data.ndim != 4 or targets.shape != (data.shape[0],):
                raise UserError(f"dataset file {path} has data {data.shape} and targets {targets.shape}; "
                                "expected N x C x H x W and N: rebuild it")
            return SplitInfo(
                path=path,
                num_images=int(data.shape[0]),
                image_shape=tuple(int(s) for s in data.shape[1:]),
                classes=tuple(str(c) for c in f.attrs["classes"]),
                mean=tuple(float(m) for m in f.attrs["mean"]),
                std=tuple(float(s) for s in f.attrs["std"]),
                color_space=str(f.attrs.get("color_space", "rgb")),
            )
    except (OSError, KeyError) as err:
        raise UserError(f"corrupt dataset file {path} ({err}): delete it and rebuild it") from None


def read_arrays(path: Path, index: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (float16) and targets of a split, all or the sorted rows in `index`."""
    try:
        with h5py.File(path, "r") as f:
            if index is None:
                return f["data"][...], f["targets"][...]
            return f["data"][index], f["targets"][index]
    except OSError as err:
        raise UserError(f"corrupt dataset file {path} ({err}): delete it and rebuild it") from None
