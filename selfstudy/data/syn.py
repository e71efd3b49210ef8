"""Synthetic sets rendered by `misc/render_syn.py` under DATA_DIR/syn/<name>/."""

from __future__ import annotations

import os
from pathlib import Path

import gin
import h5py
import numpy as np
import torch

import paths
from selfstudy.data import hdf5
from selfstudy.data.base import DatasetFiles, data_options
from selfstudy.data.folder import Progress, to_lab
from selfstudy.errors import UserError
from selfstudy.render import SHAPE_NAMES, Code, render_batches


def render_split(path: Path, code: str, n: int, res: int, seed: int, device: torch.device, objects: int,
                 label: str, statistics: tuple[np.ndarray, np.ndarray] | None = None,
                 lab: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Render n images into `path` (atomically). Returns their per-channel mean/std, and stores
    them, or the given `statistics` (the test split takes the training split's). `lab` stores CIELAB."""
    multi = objects > 1
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    sums, squares = np.zeros(3), np.zeros(3)
    progress, written = Progress(label, n), 0
    with h5py.File(tmp, "w") as f:
        hdf5.create_split(f, (n, 3, res, res), list(SHAPE_NAMES), "lab" if lab else "rgb", (res, res) if multi else ())
        slots = (n, objects) if multi else (n,)
        for name, shape in (("rot_mat", (3, 3)), ("colour", (3,)), ("texture", (4,))):
            f.create_dataset(name, shape=slots + shape, dtype=np.float32)
        f.create_dataset("light", shape=(n, 4), dtype=np.float32)
        if multi:
            f.create_dataset("depth", shape=(n, res, res), dtype=np.float32, chunks=(min(n, 256), res, res))
            f.create_dataset("present", shape=(n, objects), dtype=bool)
        f.attrs.update(code=code, display=Code.parse(code).display(), seed=seed, objects=objects)
        for scene, rendering in render_batches(code, n, res, seed, device, objects):
            rows = slice(written, written + len(rendering.images))
            images = rendering.images.cpu().numpy()
            images = (to_lab(images) if lab else images).astype(np.float16)
            f["data"][rows] = images
            f["targets"][rows] = (rendering.class_map if multi else scene.classes[:, 0]).cpu().numpy()
            pick = (lambda x: x) if multi else (lambda x: x[:, 0])
            f["rot_mat"][rows] = pick(scene.rotation).cpu().numpy()
            f["colour"][rows] = pick(scene.colour).cpu().numpy()
            f["texture"][rows] = pick(scene.texture).cpu().numpy()
            f["light"][rows] = scene.light.cpu().numpy()
            if multi:
                f["depth"][rows] = rendering.depth.cpu().numpy()
                f["present"][rows] = scene.present.cpu().numpy()
            stored = images.astype(np.float64)
            sums += stored.sum(axis=(0, 2, 3))
            squares += (stored ** 2).sum(axis=(0, 2, 3))
            written = rows.stop
            progress.update(written, 0, final=written == n)
        pixels = n * res * res
        mean = sums / pixels
        std = np.sqrt(np.maximum(squares / pixels - mean ** 2, 0))
        hdf5.set_statistics(f, *(statistics or (mean, std)))
    os.replace(tmp, path)
    return mean, std


@gin.configurable
def SynDataset(dataset_choice: str = "0000", use_lab: bool | None = None) -> DatasetFiles:  # noqa: N802
    """`SynDataset.dataset_choice`: the name a set was rendered under (the code, for the standard
    sets), read from DATA_DIR/syn/<name>/{train,test}.h5. A set in the 2020 layout is one file,
    DATA_DIR/syn/<name>/data_<res>[_lab].h5 (res: BaseDataset.input_res), split by rows (see
    DatasetFiles.split_rows); `SynDataset.use_lab` (a bool, 2020) asks for that file, with
    (True) or without (False) `_lab`, and it is read when train.h5 is absent (`_lab` then)."""
    folder = paths.DATA_DIR / "syn" / str(dataset_choice)
    ours = (folder / "train.h5").exists() and (folder / "test.h5").exists()
    if ours and use_lab is None:
        return DatasetFiles.open(f"SynDataset({dataset_choice})", folder / "train.h5", folder / "test.h5")
    lab = True if use_lab is None else bool(use_lab)
    res = data_options().input_res
    path = file_2020(folder, res, lab)
    if path is not None:
        return DatasetFiles.open_2020(f"SynDataset({dataset_choice})", path, lab)
    other = file_2020(folder, res, not lab)
    if other is not None:
        raise UserError(f"{folder} holds the 2020 file {other.name}, not its {'CIELAB' if lab else 'RGB'} twin: set "
                        f"SynDataset.use_lab = {not lab}")
    if use_lab is not None:
        raise UserError(f"SynDataset.use_lab = {use_lab} reads the 2020 file {folder}/data_{res or '<res>'}"
                        f"{'_lab' * lab}.h5 (res: BaseDataset.input_res), which is not there: put it there, or remove "
                        "SynDataset.use_lab to read train.h5 and test.h5")
    code = dataset_choice if len(str(dataset_choice)) == 4 else "<TCVL digits>"
    raise UserError(f"synthetic set '{dataset_choice}' is not rendered in {folder}: run "
                    f"python misc/render_syn.py --code {code} --n 20000 --res 32 -o {dataset_choice} (20000 images is the "
                    "standard size; a config that names its own, e.g. config/headline.py, says so)")


def file_2020(folder: Path, res: int | None, lab: bool) -> Path | None:
    """The 2020 layout's file in `folder` at resolution `res` (None: the only one there)."""
    suffix = "_lab" if lab else ""
    if res is not None:
        path = folder / f"data_{res}{suffix}.h5"
        return path if path.exists() else None
    found = [p for p in folder.glob("data_*.h5") if p.stem.split("_")[1].isdigit() and p.stem.endswith(suffix)
             and len(p.stem.split("_")) == 2 + bool(lab)]
    if len(found) > 1:
        raise UserError(f"{folder} holds 2020 files at several resolutions ({', '.join(p.name for p in sorted(found))}): "
                        "set BaseDataset.input_res to pick one")
    return found[0] if found else None
