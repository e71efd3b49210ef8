"""Which labelled images a trial gets: label budgets balanced by class, drawn by a seed, and
the digest a trial records of them (see `DatasetFiles.split_rows`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from selfstudy.data import hdf5


def budget_keys(path: Path, rows: np.ndarray, chunk_size: int) -> np.ndarray:
    """The class each of the sorted file `rows` counts as when a label budget is balanced: its
    target, or on a dense set (class maps, 0 = background) the most frequent non-background
    class of its map (the lowest on a tie; 0 for a map of background only). Maps are read
    `chunk_size` rows at a time."""
    keys = []
    for start in range(0, len(rows), chunk_size):
        targets = hdf5.read_column(path, "targets", rows[start: start + chunk_size], chunk_size)
        if targets.ndim == 1:
            keys.append(targets)
            continue
        n, classes = len(targets), int(targets.max(initial=0)) + 1
        flat = (targets.reshape(n, -1) + classes * np.arange(n)[:, None]).ravel()
        counts = np.bincount(flat, minlength=n * classes).reshape(n, classes)
        counts[:, 0] = 0  # background does not count
        keys.append(counts.argmax(axis=1))
    return np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)


def balanced_subset(keys: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Positions (sorted) of `size` of the images whose classes are `keys`, as equal per class as
    possible, drawn with `seed`. For one seed the subsets nest: those of a smaller size are
    among those of a larger one. Raises ValueError when `size` exceeds the images."""
    if size > len(keys):
        raise ValueError(f"a subset of {size} from {len(keys)} images")
    rng = np.random.default_rng(seed)
    by_class = [rng.permutation(np.flatnonzero(keys == c)) for c in np.unique(keys)]
    picked: list[int] = []
    depth = 0
    while len(picked) < size:  # round-robin over classes, so each gets size // classes or one more
        for members in by_class:
            if depth < len(members) and len(picked) < size:
                picked.append(int(members[depth]))
        depth += 1
    return np.sort(np.array(picked, dtype=np.int64))


def split_digest(rows: dict[str, np.ndarray], subset_seed: int | None) -> dict[str, object]:
    """What a trial records of its labelled images (trial.json's `labels`): the seed that drew
    them and, per split of the training file, the number of rows and the sha256 of the sorted
    rows as little-endian int64, so a reader can check which images a trial saw by recomputing
    `split_rows` (or compare two trials' digests)."""
    described: dict[str, object] = {"subset_seed": subset_seed}
    for split in ("train", "valid"):
        values = np.ascontiguousarray(np.sort(rows[split]), dtype="<i8")
        described[split] = {"images": len(values), "sha256": hashlib.sha256(values.tobytes()).hexdigest()}
    return described
