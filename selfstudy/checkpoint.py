"""Snapshots: one file named `snapshot` holding a trial's state by name.

    {"format": 2, "model": state_dict, "optimizer": state_dict, "step": int, "epoch": int,
     "best_accuracy": float, "rng": {...}}

Written atomically (a fsynced temporary file, then a rename). `Wrapper.pretrained` and
`session.restore_session` name them as "<exp>/<name>": `EXP_DIR/<exp>/<name>/snapshot`.

A snapshot holds data only: tensors and plain Python values (random states included), and
it is read with `torch.load(weights_only=True)`. A file that needs code to unpickle is
refused, so a snapshot from someone else can never run code here.
"""

from __future__ import annotations

import pickle
import random
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import paths
from selfstudy.durable import save_torch
from selfstudy.errors import UserError
from selfstudy.folders import SNAPSHOT

FORMAT = 2  # 2: random states as tensors and plain values (format 1 pickled numpy arrays)


class UnsafeSnapshot(UserError):
    """A snapshot that would need code to load: refused, never read."""


def save_snapshot(directory: Path, state: dict[str, Any]) -> Path:
    """Write `directory/snapshot` atomically (`selfstudy.durable`); returns its path."""
    path = directory / SNAPSHOT
    save_torch(path, {"format": FORMAT, **state})
    return path


def resolve_snapshot(name: str, setting: str) -> Path:
    """The snapshot file that `setting = name` refers to; a clear error if there is none."""
    candidate = Path(name).expanduser()
    if not candidate.is_absolute():
        candidate = paths.EXP_DIR / candidate
    path = candidate if candidate.is_file() else candidate / SNAPSHOT
    if not path.is_file():
        raise UserError(f"{setting} = {name!r}: no snapshot at {path}; move one there with "
                        f"'python misc/move_snapshots.py -e <exp> -m' or fix the name")
    return path


def first_difference(saved: dict[str, Any], own: dict[str, Any],
                     required: Callable[[str], bool] = lambda key: True) -> tuple[str, str] | None:
    """The first entry that keeps the state `saved` from loading into a module whose state is
    `own`, with what is wrong: an entry `required` asks for that `saved` lacks (BatchNorm's
    counters excepted: torch fills those in), or a tensor of another shape. None when every
    entry fits; entries only `saved` has are the caller's to judge."""
    for key, tensor in own.items():
        if key not in saved:
            if required(key) and not key.endswith("num_batches_tracked"):
                return key, f"the snapshot has no '{key}'"
        elif torch.is_tensor(tensor) and torch.is_tensor(saved[key]) and saved[key].shape != tensor.shape:
            return key, f"layer '{key}' is {tuple(saved[key].shape)} in the snapshot but {tuple(tensor.shape)} here"
    return None


def load_snapshot(path: Path, setting: str) -> dict[str, Any]:
    """Read a snapshot onto the CPU; an unreadable file is a `UserError`."""
    state = read_data(path, setting)
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{setting}: {path} is not a selfstudy snapshot (no 'model' entry)")
    return state


def read_data(path: Path, setting: str) -> Any:
    """Read a checkpoint file (ours or another project's) onto the CPU, as data only: one that
    needs code to unpickle is refused (`UnsafeSnapshot`), an unreadable one is a `UserError`."""
    try:
        with warnings.catch_warnings():  # a file of plain pickle draws a protocol warning before it is refused
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" not in str(err).lower():
            raise UserError(f"{setting}: cannot read snapshot {path} (UnpicklingError); it is damaged") from None
        raise UnsafeSnapshot(f"{setting}: refusing {path}: it holds Python objects that need code to load, and "
                             "checkpoints are read as data only (tensors and plain values); use a snapshot written by "
                             "selfstudy (format 2), or save the other project's state_dict alone") from None
    except FileNotFoundError:
        raise UserError(f"{setting}: no snapshot at {path}") from None
    except (OSError, MemoryError):  # the disk or the machine, not the file: a retry may read it
        raise
    except Exception as err:  # torch raises many types for a damaged file
        raise UserError(f"{setting}: cannot read snapshot {path} ({type(err).__name__}); it is damaged") from None
    return state


def rng_state(device_generator: torch.Generator | None) -> dict[str, Any]:
    """Every random state a trial draws from, so a restored trial continues exactly.
    (Shuffling needs none: it is a function of the seed and the epoch.)"""
    return {
        "python": random.getstate(),
        "numpy": numpy_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "device": device_generator.get_state() if device_generator is not None else None,
    }


def numpy_state() -> tuple[str, torch.Tensor, int, int, float]:
    """numpy's global random state with its key array as a tensor (loadable as data)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return name, torch.from_numpy(keys.astype(np.int64)), int(position), int(has_gauss), float(gauss)


def set_rng_state(state: dict[str, Any], device_generator: torch.Generator | None) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if device_generator is not None and state["device"] is not None:
        device_generator.set_state(state["device"])
