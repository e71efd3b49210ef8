"""The project's HDF5 format: one file per split.

Datasets in a file:
    data     float16, N x C x H x W: pixel values (RGB in [0, 1], or CIELAB)
    targets  int64, N (class index)
Attributes:
    mean, std     per-channel statistics of the training split, used to normalise on loading
    classes       class names, in target order
    color_space   'rgb' or 'lab'
    normalised    False; files of the first layout (absent attribute) hold normalised data
Synthetic sets (`misc/render_syn.py`) add per-image factor values: rot_mat (N x 3 x 3, or
N x S x 3 x 3 for S object slots), colour, light, texture, and depth for multi-object scenes.

Files are read in windows of rows, never whole: see `read_sorted`.
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
    target_shape: tuple[int, ...]  # () for a class per image, (H, W) for dense targets
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    color_space: str
    normalised: bool
    extras: tuple[str, ...]  # further per-image datasets, e.g. rot_mat


def write_split(
    path: Path,
    data: np.ndarray,
    targets: np.ndarray,
    classes: list[str],
    mean: np.ndarray,
    std: np.ndarray,
    color_space: str = "rgb",
) -> None:
    """Write a split of raw pixel values atomically: a crash leaves either no file or a complete one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp, "w") as f:
            create_split(f, data.shape, classes, color_space)
            f["data"][...] = data.astype(np.float16)
            f["targets"][...] = targets.astype(np.int64)
            set_statistics(f, mean, std)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write dataset file {path} ({err.strerror or err}): make its folder writable or "
                        "set SELFSTUDY_DATA_DIR to a writable folder") from None


def create_split(f: h5py.File, shape: tuple[int, ...], classes: list[str], color_space: str,
                 target_shape: tuple[int, ...] = ()) -> None:
    """Create the datasets and attributes of an empty split of `shape` (N x C x H x W) in `f`;
    targets are N (classes) or N x `target_shape` (dense). Every chunk carries a Fletcher-32
    checksum, so damaged bytes are detected when read instead of training on garbage."""
    f.create_dataset("data", shape=shape, dtype=np.float16, chunks=(min(shape[0], 256),) + tuple(shape[1:]),
                     fletcher32=True)
    f.create_dataset("targets", shape=(shape[0],) + tuple(target_shape), dtype=np.int64, chunks=True,
                     fletcher32=True)
    f.attrs["classes"] = list(classes)
    f.attrs["color_space"] = color_space
    f.attrs["normalised"] = False


def set_statistics(f: h5py.File, mean: np.ndarray, std: np.ndarray) -> None:
    """Store the per-channel mean/std that loading normalises with; a zero std is refused."""
    std = np.asarray(std, dtype=np.float64)
    if not np.all(std > 0):  # also catches NaN
        raise UserError(f"refusing to write {f.filename}: channel std {std.tolist()} is not positive, so the "
                        "images are constant in a channel; check the source images")
    f.attrs["mean"] = np.asarray(mean, dtype=np.float64)
    f.attrs["std"] = std


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
            if data.ndim != 4 or targets.shape[:1] != data.shape[:1]:
                raise UserError(f"dataset file {path} has data {data.shape} and targets {targets.shape}; "
                                "expected N x C x H x W and N (or N x H x W): rebuild it")
            channels = len(np.atleast_1d(f.attrs["mean"]))
            if data.shape[1] != channels:
                layout = " (channels last?)" if data.shape[-1] == channels else ""
                raise UserError(f"dataset file {path} has data {data.shape}{layout}, but mean and std for {channels} "
                                f"channels: store images as N x C x H x W, e.g. np.moveaxis(images, -1, 1)")
            if not np.issubdtype(targets.dtype, np.integer):
                raise UserError(f"dataset file {path} stores targets as {targets.dtype}: classes are whole numbers "
                                "from 0; store them as int64 (e.g. targets.astype(np.int64))")
            if not np.all(np.asarray(f.attrs["std"]) > 0):
                std = np.asarray(f.attrs["std"]).tolist()
                raise UserError(f"dataset file {path} stores channel std {std}: a std must be positive to "
                                "normalise; rebuild the file from images that vary")
            return SplitInfo(
                path=path,
                num_images=int(data.shape[0]),
                image_shape=tuple(int(s) for s in data.shape[1:]),
                target_shape=tuple(int(s) for s in targets.shape[1:]),
                classes=tuple(str(c) for c in f.attrs["classes"]),
                mean=tuple(float(m) for m in f.attrs["mean"]),
                std=tuple(float(s) for s in f.attrs["std"]),
                color_space=str(f.attrs.get("color_space", "rgb")),
                normalised=bool(f.attrs.get("normalised", True)),
                extras=tuple(sorted(set(f) - {"data", "targets"})),
            )
    except (OSError, KeyError) as err:
        raise UserError(f"corrupt dataset file {path} ({err}): delete it and rebuild it") from None


_infos_2020: dict[tuple[str, int, int, bool], SplitInfo] = {}


def read_info_2020(path: Path, lab: bool) -> SplitInfo:
    """A file of the 2020 layout (keys data, targets, rot_mat; no attributes): its images are used
    as stored (mean 0, std 1), its classes are the target values (read once per file version
    and process)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, lab)
    if key not in _infos_2020:
        _infos_2020[key] = _read_info_2020(path, lab)
    return _infos_2020[key]


def _read_info_2020(path: Path, lab: bool) -> SplitInfo:
    try:
        with h5py.File(path, "r") as f:
            if "data" not in f or "targets" not in f:
                raise UserError(f"{path} lacks data or targets: a 2020 dataset file holds both (and rot_mat)")
            data, targets = f["data"], f["targets"]
            if data.ndim != 4 or targets.shape[:1] != data.shape[:1]:
                raise UserError(f"{path} has data {data.shape} and targets {targets.shape}; expected N x C x H x W "
                                "and N (or N x H x W)")
            channels, dense = int(data.shape[1]), targets.ndim > 1
            top = max(int(np.max(targets[i: i + 4096])) for i in range(0, len(targets), 4096))
            classes = range(1 if dense else 0, top + 1)  # dense maps: 0 is background, not a class
            return SplitInfo(path, int(data.shape[0]), tuple(int(s) for s in data.shape[1:]),
                             tuple(int(s) for s in targets.shape[1:]), tuple(str(c) for c in classes), (0.0,) * channels,
                             (1.0,) * channels, "lab" if lab else "rgb", True,
                             tuple(sorted(set(f) - {"data", "targets"})))
    except OSError as err:
        raise UserError(f"corrupt dataset file {path} ({err}): delete it and rebuild it") from None


VERIFY_LIMIT = 2 << 30  # bytes: larger files are checked as they are read, not up front
_verified: set[tuple[str, int, int]] = set()


def verify(path: Path, chunk_size: int = 4096) -> None:
    """Read every image of a split file once: a damaged chunk (checksum) or a non-finite pixel
    value is a `UserError` naming the file. Done once per file version and process; files over
    `VERIFY_LIMIT` are left to the checks made while training reads them."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _verified or stat.st_size > VERIFY_LIMIT:
        return
    try:
        with h5py.File(path, "r") as f:
            data = f["data"]
            for start in range(0, len(data), chunk_size):
                check_finite(data[start: start + chunk_size], path)
            f["targets"][...]
    except OSError as err:
        raise UserError(f"corrupt dataset file {path} ({err}): delete it and rebuild it") from None
    _verified.add(key)


def check_finite(images: np.ndarray, path: Path) -> None:
    if not np.isfinite(images).all():
        raise UserError(f"corrupt dataset file {path}: it holds non-finite pixel values (damaged bytes?); delete it "
                        "and rebuild it")


def read_sorted(dataset: h5py.Dataset, rows: np.ndarray, chunk_size: int, out: np.ndarray | None = None) -> np.ndarray:
    """The sorted `rows` of an HDF5 dataset (into `out` when given), read as contiguous slices
    within windows of `chunk_size` rows: memory beyond the result stays bounded by one window,
    and no slow point selection is used."""
    rows = np.asarray(rows, dtype=np.int64)
    out = np.empty((len(rows),) + dataset.shape[1:], dtype=dataset.dtype) if out is None else out
    buffer: np.ndarray | None = None  # one window of rows, allocated when a window is not read whole
    starts = np.flatnonzero(np.diff(rows // chunk_size, prepend=-1))  # first row of each window
    for begin, end in zip(starts, np.append(starts[1:], len(rows))):
        first, last = int(rows[begin]), int(rows[end - 1]) + 1
        if last - first == end - begin:  # every row of the slice is wanted
            dataset.read_direct(out, np.s_[first:last], np.s_[begin:end])
        else:
            if buffer is None:
                buffer = np.empty((min(chunk_size, len(dataset)),) + dataset.shape[1:], dtype=out.dtype)
            dataset.read_direct(buffer, np.s_[first:last], np.s_[0:last - first])
            out[begin:end] = buffer[rows[begin:end] - first]
    return out


def read_rows(path: Path, rows: np.ndarray | None, chunk_size: int,
              out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (float16, raw; into `out` when given) and targets of the sorted file `rows` (None: all),
    both read in windows of `chunk_size` rows (see `read_sorted`)."""
    try:
        with h5py.File(path, "r") as f:
            data, targets = f["data"], f["targets"]
            rows = np.arange(len(targets)) if rows is None else np.asarray(rows, dtype=np.int64)
            if out is None:
                out = np.empty((len(rows),) + data.shape[1:], dtype=np.float16)
            images = read_sorted(data, rows, chunk_size, out)
            check_finite(images, path)
            return images, read_sorted(targets, rows, chunk_size)
    except OSError as err:
        raise UserError(f"corrupt dataset file {path} ({err}): delete it and rebuild it") from None


def read_column(path: Path, name: str, rows: np.ndarray, chunk_size: int) -> np.ndarray:
    """The sorted file `rows` of one per-image dataset (targets, depth, rot_mat, ...), read in
    windows of `chunk_size` rows."""
    try:
        with h5py.File(path, "r") as f:
            return read_sorted(f[name], rows, chunk_size)
    except OSError as err:
        raise UserError(f"corrupt dataset file {path} ({err}): delete it and rebuild it") from None
