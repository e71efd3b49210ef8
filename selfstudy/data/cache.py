"""Splits kept on the device per process, so that a worker running a sweep's next trial on the
same data (the usual case of a sweep with warm trials) does not read and place them again.

A split is keyed by its file's identity and version, the rows taken and how they are placed
(device, resolution, dtype, normalisation and its statistics, the maps and labels loaded with
them). Training reads splits and never writes them. Before a trial loads its splits, every
kept split it does not use is dropped (`keep_only`), so a worker holds at most one trial's
data at a time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from selfstudy.data.splits import Placement, ResidentSplit

_kept: dict[tuple, ResidentSplit] = {}


def key(path: Path, rows: np.ndarray, placement: Placement, more: Any) -> tuple:
    """The identity of a placed split: file (inode, size, change times), rows, placement, and
    `more` (anything else that shapes the tensors, hashable)."""
    stat = path.stat()
    rows = np.ascontiguousarray(rows)
    return (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns,
            rows.dtype.str, len(rows), hashlib.sha1(rows).hexdigest(), str(placement.device), placement.res,
            str(placement.dtype), bool(placement.normalise), more)


def keep_only(keys: Iterable[tuple]) -> None:
    wanted = set(keys)
    for stale in [k for k in _kept if k not in wanted]:
        del _kept[stale]


def get(split_key: tuple) -> ResidentSplit | None:
    return _kept.get(split_key)


def put(split_key: tuple, split: ResidentSplit) -> ResidentSplit:
    _kept[split_key] = split
    return split
