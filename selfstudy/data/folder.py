"""Make a dataset in the project's HDF5 format from an image folder or a list file.

Sources:
    folder     ROOT/<class>/<image> (the ImageFolder layout); classes are the sub-folders
    list file  one '<image path> <label>' per line, paths relative to the file's folder;
               blank lines and lines starting with '#' are ignored

Each image is decoded, its shorter side resized to `res`, centre-cropped to res x res and
optionally converted to CIELAB. Per-channel mean/std of the training images are summed in
the same pass. Work goes into hidden `.partial` files that record their progress after
every chunk, so an interrupted run continues where it stopped when rerun with the same
sources and options (already-read images are assumed unchanged).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import h5py
import numpy as np
from tqdm import tqdm

from selfstudy.data import hdf5
from selfstudy.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
TEST_SEED = 0


@dataclass(frozen=True)
class Entry:
    path: Path
    label: str
    where: str  # how errors name it: the path, or 'list.txt line 7 (path)'


def scan_folder(root: Path) -> list[Entry]:
    """Entries of an ImageFolder tree, by class then file name."""
    entries = [Entry(path, folder.name, str(path))
               for folder in sorted(p for p in root.iterdir() if p.is_dir())
               for path in sorted(folder.rglob("*")) if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()]
    if not entries:
        raise UserError(f"no images under {root}: expected {root}/<class>/<image>.png (or .jpg, ...)")
    return entries


def read_list(list_file: Path) -> list[Entry]:
    """Entries of a list file; a malformed line is a `UserError` naming it."""
    entries = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.rsplit(None, 1)
        if len(parts) != 2:
            raise UserError(f"{list_file} line {number}: expected '<image path> <label>', got {text!r}")
        entries.append(Entry(list_file.parent / parts[0], parts[1], f"{list_file} line {number} ({parts[0]})"))
    if not entries:
        raise UserError(f"{list_file} lists no images: write one '<image path> <label>' per line")
    return entries


def read_source(source: Path) -> list[Entry]:
    if source.is_dir():
        return scan_folder(source)
    if source.is_file():
        return read_list(source)
    raise UserError(f"no such image folder or list file: {source}")


def class_names(labels: set[str]) -> list[str]:
    """Labels in target order: numerically when all are integers, else alphabetically."""
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def hold_out(entries: list[Entry], fraction: float) -> tuple[list[Entry], list[Entry]]:
    """Split off `fraction` of each class as the test split (fixed by TEST_SEED)."""
    rng = np.random.default_rng(TEST_SEED)
    test = set()
    for label in sorted({e.label for e in entries}):
        members = [i for i, e in enumerate(entries) if e.label == label]
        count = min(len(members) - 1, int(np.ceil(fraction * len(members))))  # a class keeps a training image
        test.update(rng.permutation(members)[:count].tolist())
    return [e for i, e in enumerate(entries) if i not in test], [e for i, e in enumerate(entries) if i in test]


def to_lab(images: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] -> CIELAB (L in [0, 100], a/b roughly [-128, 127]); N x 3 x H x W."""
    import kornia
    import torch

    return kornia.color.rgb_to_lab(torch.from_numpy(images)).numpy()


def decode(path: Path, res: int) -> tuple[np.ndarray | None, str]:
    """An image as 3 x res x res float32 RGB in [0, 1], or (None, why it could not be read)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            scale = res / min(image.size)
            size = (max(res, round(image.width * scale)), max(res, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.BILINEAR)
            left, top = (size[0] - res) // 2, (size[1] - res) // 2
            image = image.crop((left, top, left + res, top + res))
            return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0, ""
    except Exception as err:  # PIL raises many kinds for a bad file; all mean the same here
        return None, f"{type(err).__name__}: {err}"


def _decode_entry(job: tuple[Path, int]) -> tuple[np.ndarray | None, str]:
    return decode(*job)


class Progress:
    """The dataset maker's progress on stderr, a tqdm bar: "train: 120/1000 images, 80.5images/s";
    where stderr is not a terminal, a line per tenth."""

    def __init__(self, label: str, total: int):
        terminal = sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=label, file=sys.stderr, unit="images", dynamic_ncols=terminal,
                        bar_format="{desc}: {n_fmt}/{total_fmt} images, {rate_fmt}{postfix}",
                        mininterval=0.2 if terminal else 0.0, miniters=None if terminal else max(1, total // 10))
        self.skipped = 0

    def update(self, done: int, skipped: int, final: bool = False) -> None:
        if skipped != self.skipped:
            self.skipped = skipped
            self.bar.set_postfix_str(f"{skipped} skipped", refresh=False)
        self.bar.update(done - self.bar.n)
        if final:
            self.bar.refresh()

    def close(self) -> None:
        """End the bar's line, also before an error is said."""
        self.bar.close()


def fingerprint(entries: list[Entry], classes: list[str], res: int, lab: bool) -> str:
    text = json.dumps([[str(e.path), e.label] for e in entries] + [classes, res, lab])
    return hashlib.sha256(text.encode()).hexdigest()


def open_partial(path: Path, entries: list[Entry], classes: list[str], res: int, lab: bool,
                 say: Callable[[str], None]) -> h5py.File:
    """The working file of a split: continued when it matches these sources and options."""
    key = fingerprint(entries, classes, res, lab)
    if path.exists():
        try:
            f = h5py.File(path, "a")
            if f.attrs.get("fingerprint") == key:
                say(f"resuming {path.name[1:].split('.')[0]} at {int(f.attrs['done'])}/{len(entries)} images")
                return f
            f.close()
            say(f"sources or options changed since the interrupted run: starting {path.name} over")
        except OSError:
            say(f"cannot read the interrupted run's {path.name}: starting over")
        path.unlink()
    f = h5py.File(path, "w")
    n = len(entries)
    f.create_dataset("data", shape=(n, 3, res, res), maxshape=(None, 3, res, res), dtype=np.float16,
                     chunks=(min(n, 256), 3, res, res))
    f.create_dataset("targets", shape=(n,), maxshape=(None,), dtype=np.int64)
    f.attrs.update(fingerprint=key, done=0, written=0, sum=np.zeros(3), sumsq=np.zeros(3), pixels=0,
                   classes=list(classes), color_space="lab" if lab else "rgb", normalised=False)
    return f


def fill(f: h5py.File, entries: list[Entry], classes: list[str], res: int, lab: bool, on_error: str,
         chunk: int, workers: int, progress: Progress) -> None:
    """Decode the entries not yet done into `f`, recording progress after every chunk."""
    target_of = {name: i for i, name in enumerate(classes)}
    start = int(f.attrs["done"])
    skipped = start - int(f.attrs["written"])
    jobs = [(e.path, res) for e in entries[start:]]
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    results: Iterator = pool.map(_decode_entry, jobs, chunksize=8) if pool else map(_decode_entry, jobs)
    images: list[np.ndarray] = []
    labels: list[int] = []
    done = start

    def flush() -> None:
        nonlocal images, labels
        written = int(f.attrs["written"])
        if images:
            batch = np.stack(images)
            batch = to_lab(batch) if lab else batch
            f["data"][written: written + len(batch)] = batch.astype(np.float16)
            f["targets"][written: written + len(batch)] = labels
            stored = f["data"][written: written + len(batch)].astype(np.float64)  # sum what is stored
            f.attrs["sum"] = f.attrs["sum"] + stored.sum(axis=(0, 2, 3))
            f.attrs["sumsq"] = f.attrs["sumsq"] + (stored ** 2).sum(axis=(0, 2, 3))
            f.attrs["pixels"] = int(f.attrs["pixels"]) + stored.shape[0] * stored.shape[2] * stored.shape[3]
        f.attrs["written"] = written + len(images)
        f.attrs["done"] = done
        f.flush()
        images, labels = [], []

    try:
        for entry, (image, why) in zip(entries[start:], results):
            if image is None:
                if on_error == "fail":
                    flush()
                    raise UserError(f"cannot read image {entry.where}: {why}; fix or remove it, or pass "
                                    "--on-error skip (progress is kept: rerun to continue)")
                print(f"\nskipped unreadable image {entry.where}: {why}", file=sys.stderr)
                skipped += 1
            else:
                images.append(image)
                labels.append(target_of[entry.label])
            done += 1
            if done % chunk == 0:
                flush()
                progress.update(done, skipped)
        flush()
        progress.update(done, skipped, final=True)
    finally:
        progress.close()
        if pool:
            pool.shutdown(cancel_futures=True)


def finish(f: h5py.File, mean: np.ndarray, std: np.ndarray) -> None:
    """Trim skipped rows, store the statistics, drop the progress attributes."""
    written = int(f.attrs["written"])
    if written == 0:
        raise UserError(f"no readable image for {Path(f.filename).name[1:].split('.')[0]}: check the sources")
    f["data"].resize(written, axis=0)
    f["targets"].resize(written, axis=0)
    hdf5.set_statistics(f, mean, std)
    for key in ("fingerprint", "done", "written", "sum", "sumsq", "pixels"):
        del f.attrs[key]


def make_dataset(source: Path, out: Path, res: int, test_source: Path | None = None, test_fraction: float = 0.1,
                 lab: bool = False, force: bool = False, on_error: str = "fail", chunk: int = 256,
                 workers: int = 1, say: Callable[[str], None] = print) -> None:
    """Write `out/train.h5` and `out/test.h5` from the source(s); see the module docstring."""
    if res < 1 or chunk < 1 or not 0 <= test_fraction < 1 or on_error not in ("fail", "skip"):
        raise UserError("need --res >= 1, --chunk >= 1, 0 <= --test-fraction < 1, --on-error fail or skip")
    finals = {split: out / f"{split}.h5" for split in ("train", "test")}
    existing = [str(p) for p in finals.values() if p.exists()]
    if existing and not force:
        raise UserError(f"{existing[0]} exists: pass --force to overwrite it, or choose another -o")
    entries = read_source(source)
    if test_source is not None:
        splits = {"train": entries, "test": read_source(test_source)}
    else:
        train, test = hold_out(entries, test_fraction)
        splits = {"train": train, "test": test}
    classes = class_names({e.label for e in splits["train"]})
    if len(classes) < 2:
        raise UserError(f"{source} holds one class ({classes[0]!r}): a classification set needs at least 2, one "
                        "sub-folder (or list label) each")
    unknown = sorted({e.label for e in splits["test"]} - set(classes))
    if unknown:
        raise UserError(f"test labels {unknown[:5]} do not occur in the training source {source}")
    for split, listed in splits.items():
        missing = [e for e in listed if not e.path.is_file()]
        if missing and on_error == "fail":
            raise UserError(f"no such image: {missing[0].where}; fix the list or pass --on-error skip")
        for entry in missing:
            say(f"skipping missing image {entry.where}")
        splits[split] = [e for e in listed if e.path.is_file()]
    if not splits["test"]:
        raise UserError("the test split is empty: raise --test-fraction or give --test")
    out.mkdir(parents=True, exist_ok=True)
    partials = {split: out / f".{split}.h5.partial" for split in splits}
    for split in ("train", "test"):
        with open_partial(partials[split], splits[split], classes, res, lab, say) as f:
            fill(f, splits[split], classes, res, lab, on_error, chunk, workers, Progress(split, len(splits[split])))
    with h5py.File(partials["train"], "r") as f:
        pixels = max(int(f.attrs["pixels"]), 1)
        mean = f.attrs["sum"] / pixels
        std = np.sqrt(np.maximum(f.attrs["sumsq"] / pixels - mean ** 2, 0.0))
    if not np.all(std > 0):
        raise UserError(f"the training images of {source} have std {np.round(std, 6).tolist()} per channel: a "
                        "channel is constant and cannot be normalised; check the images")
    for split in ("train", "test"):
        with h5py.File(partials[split], "a") as f:
            finish(f, mean, std)
    for split in ("train", "test"):
        os.replace(partials[split], finals[split])
    info = hdf5.read_info(finals["train"])
    say(f"wrote {out}: {info.num_images} training and {hdf5.read_info(finals['test']).num_images} test images "
        f"of {len(classes)} classes at {res}x{res}, mean {np.round(mean, 4).tolist()}, std {np.round(std, 4).tolist()}")
