"""Splits on the training device, served as batches by index.

A split that fits in `BaseDataset.max_images` is resident: read once into one device tensor,
so a batch is a single indexing operation. A larger split is divided: it is served in
divisions of at most `max_images` images. While one division trains on the device, a
background thread reads the next from the HDF5 file in chunks of `chunk_size` rows into one
reused host buffer, so the host holds at most the next division and the device at most the
current one; per-pixel maps beside the images (depth) are read and held with their division.

Shuffling is a pure function of (seed, epoch). A divided split shuffles twice: chunks of
`chunk_size` consecutive rows, with boundaries shifted by a random offset each epoch, are
dealt to divisions in random order (so divisions mix differently every epoch while each
division is read in file order), and then each division's images are permuted on the device.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from selfstudy.data import hdf5
from selfstudy.render import mirrored_pose_label

PIECE_VALUES = 1 << 24  # values converted on the device at a time (bounds the float32 temporary)
Shuffle = tuple[int, int]  # (seed, epoch); None means in order


# The fields of a Batch that are per-pixel maps (B x H x W) when present: `targets` on a dense
# set (class maps), `depth`. Geometric augmentation moves every one of them with its image; a
# new per-pixel field (a mask) is added here and moves too.
PIXEL_FIELDS = ("targets", "depth")
# Per-image labels that a left-right flip changes, each with the label of the mirror image.
MIRRORED_LABELS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"pose": mirrored_pose_label}


class Batch(NamedTuple):
    images: torch.Tensor  # B x C x H x W float32, normalised
    targets: torch.Tensor  # B int64 (classes), or B x H x W dense targets (class maps, 0 = background)
    index: torch.Tensor  # B int64: position of each image in its split
    view2: torch.Tensor | None = None  # a second view of the same images (BaseDataset.double_sample)
    pose: torch.Tensor | None = None  # B int64 in 0..4 (BaseDataset.predict_pose); mirrored with a flip
    depth: torch.Tensor | None = None  # B x H x W float32, distance from the camera, 0 where no object
    local_views: torch.Tensor | None = None  # (N B) x C x r x r, view-major: N small crops (augment.local_crops)

    def pixel_maps(self) -> dict[str, torch.Tensor]:
        """The batch's per-pixel fields (of PIXEL_FIELDS, those present as B x H x W maps), by name:
        what must move with `images` under every geometric operation."""
        maps = {name: getattr(self, name) for name in PIXEL_FIELDS}
        return {name: m for name, m in maps.items() if m is not None and m.ndim == 3}


@dataclass(frozen=True)
class Placement:
    """How stored images become device tensors: resolution, normalisation, storage dtype."""

    device: torch.device
    res: int
    mean: torch.Tensor  # C, on the device
    std: torch.Tensor  # C, on the device
    normalise: bool  # False for files that already hold normalised values
    dtype: torch.dtype  # float16 (BaseDataset.use_fp16) or float32

    def images(self, raw: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Raw float16 N x C x H x W from a file (host memory, pinned for an asynchronous copy)
        -> N x C x res x res on the device (into `out`)."""
        if out is None:
            out = torch.empty((len(raw), raw.shape[1], self.res, self.res), dtype=self.dtype, device=self.device)
        piece = max(1, PIECE_VALUES // max(1, raw[:1].numel()))
        for start in range(0, len(raw), piece):
            x = raw[start: start + piece].to(self.device, non_blocking=True).float()
            if x.shape[-2:] != (self.res, self.res):
                x = F.interpolate(x, size=(self.res, self.res), mode="bilinear", antialias=True, align_corners=False)
            if self.normalise:
                x = (x - self.mean[:, None, None]) / self.std[:, None, None]
            out[start: start + len(x)] = x
        return out

    def targets(self, raw: np.ndarray) -> torch.Tensor:
        """Targets N (classes) or N x H x W (dense, resized with nearest sampling) on the device."""
        t = torch.from_numpy(raw).to(self.device)
        if t.ndim == 3 and t.shape[-2:] != (self.res, self.res):
            t = F.interpolate(t[:, None].float(), size=(self.res, self.res), mode="nearest")[:, 0].to(t.dtype)
        return t


def evaluated_images(size: int, batch_size: int, iters: int) -> int:
    """Distinct images an evaluation of `iters` batches (-1: a full pass) reads of a split of `size`, in order."""
    return size if iters < 0 else min(size, iters * batch_size)


def num_batches(size: int, batch_size: int, iters: int, train: bool) -> int:
    """Batches per epoch: `iters`, or a full pass when `iters == -1`.

    A training pass drops a last partial batch when at least one full batch exists.
    """
    if iters >= 0:
        return iters
    full, rest = divmod(size, batch_size)
    return full if (train and full) else full + bool(rest)


def join(first: Batch, second: Batch) -> Batch:
    """The images of two batches (with the same fields present) as one batch."""
    return Batch(*(None if a is None else torch.cat([a, b]) for a, b in zip(first, second)))


def division_batch(images: torch.Tensor, fields: dict[str, torch.Tensor], positions: torch.Tensor,
                   part: torch.Tensor) -> Batch:
    """The rows `part` (int64 on the device) of a division: images (as float32), their targets
    and maps (`fields`, by Batch field name) and their positions in the split."""
    return Batch(images[part].float(), index=positions[part], **{name: values[part] for name, values in fields.items()})


def attach(batch: Batch, extra: dict[str, torch.Tensor]) -> Batch:
    """The batch with its rows of the split's further labels (by position) filled in."""
    return batch._replace(**{name: values[batch.index] for name, values in extra.items()}) if extra else batch


def new_rng(shuffle: Shuffle | None) -> np.random.Generator | None:
    return None if shuffle is None else np.random.default_rng(list(shuffle))


class ResidentSplit:
    """A split held whole on the training device."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor):
        self.images = images  # N x C x H x W, storage dtype, normalised
        self.targets = targets
        self.extra: dict[str, torch.Tensor] = {}  # further labels by position ('pose', 'depth'), when asked for

    def __len__(self) -> int:
        return len(self.targets)

    def num_batches(self, batch_size: int, iters: int, train: bool) -> int:
        return num_batches(len(self), batch_size, iters, train)

    def batches(self, batch_size: int, iters: int, shuffle: Shuffle | None = None) -> Iterator[Batch]:
        """The epoch's batches: a fresh permutation per pass when `shuffle` is given, else in order."""
        n, device, rng = len(self), self.targets.device, new_rng(shuffle)
        train = rng is not None

        def new_pass() -> torch.Tensor:  # drawn on the host, moved once per pass
            return torch.from_numpy(rng.permutation(n)).to(device) if train else torch.arange(n, device=device)

        order, position = new_pass(), 0
        for _ in range(self.num_batches(batch_size, iters, train)):
            if position + (batch_size if train else 1) > n:  # start another pass
                order, position = new_pass(), 0
            index = order[position: position + batch_size]
            position += batch_size
            yield attach(Batch(self.images[index].float(), self.targets[index], index), self.extra)

    def close(self) -> None:
        pass


class DividedSplit:
    """A split served in divisions of at most `max_images`, read in the background. Targets and
    the per-pixel `maps` named (e.g. 'depth') are read with their division's images; `extra`
    holds small per-image labels (the pose) whole."""

    def __init__(self, path: Path, rows: np.ndarray, stored_shape: tuple[int, ...], placement: Placement,
                 max_images: int, chunk_size: int, maps: tuple[str, ...] = ()):
        self.path, self.rows, self.placement = path, rows, placement  # rows: sorted rows of the file
        self.stored_shape = stored_shape  # C x H x W in the file
        self.max_images, self.chunk_size = max_images, chunk_size
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="selfstudy-read")
        self._pending: tuple[np.ndarray, Future] | None = None  # a division read ahead, by positions
        self._images: torch.Tensor | None = None  # the device store, max_images long, reused
        self._staging: torch.Tensor | None = None  # the host buffer the reader fills, max_images long, reused
        self._uploaded: torch.cuda.Event | None = None  # marks the end of the last copy out of _staging
        self.maps = maps
        self._fields: dict[str, torch.Tensor] = {}  # device stores of targets and maps, max_images long, reused
        self.extra: dict[str, torch.Tensor] = {}  # further labels by position, held whole on the device

    def __len__(self) -> int:
        return len(self.rows)

    def num_batches(self, batch_size: int, iters: int, train: bool) -> int:
        return num_batches(len(self), batch_size, iters, train)

    def plan(self, rng: np.random.Generator | None) -> list[np.ndarray]:
        """One pass: the sorted positions (into `rows`) of each division, in serving order."""
        positions = np.arange(len(self))
        if rng is not None:
            cuts = np.arange(rng.integers(self.chunk_size), len(self), self.chunk_size)
            chunks = np.split(positions, cuts)
            positions = np.concatenate([chunks[i] for i in rng.permutation(len(chunks))])
        return [np.sort(positions[s: s + self.max_images]) for s in range(0, len(self), self.max_images)]

    def _read(self, positions: np.ndarray) -> Future:
        """Start reading a division, or take the one read ahead if it is this one."""
        if self._pending is not None:
            ahead, future = self._pending
            self._pending = None
            if np.array_equal(ahead, positions):
                return future
            future.cancel()
        return self._reader.submit(self._read_division, positions)

    def _read_division(self, positions: np.ndarray) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """(In the reader thread.) A division's raw images, in the one host buffer (pinned when
        the device is a GPU, so that the copy to the device runs asynchronously), with its
        targets and maps by field name."""
        if self._staging is None:
            self._staging = torch.empty((self.max_images,) + self.stored_shape, dtype=torch.float16,
                                        pin_memory=self.placement.device.type == "cuda")
        if self._uploaded is not None:
            self._uploaded.synchronize()  # the previous division has left the buffer
        images = self._staging[: len(positions)]
        rows = self.rows[positions]
        _, targets = hdf5.read_rows(self.path, rows, self.chunk_size, out=images.numpy())
        return images, {"targets": targets, **{name: hdf5.read_column(self.path, name, rows, self.chunk_size)
                                               for name in self.maps}}

    def _upload(self, future: Future) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Move a read division into the device stores; returns views of the filled parts."""
        raw_images, raw_fields = future.result()
        n = len(raw_images)
        if self._images is None:
            shape = (self.max_images, raw_images.shape[1], self.placement.res, self.placement.res)
            self._images = torch.empty(shape, dtype=self.placement.dtype, device=self.placement.device)
        self.placement.images(raw_images, out=self._images[:n])
        for name, raw in raw_fields.items():
            values = self.placement.targets(raw)
            if name not in self._fields:
                self._fields[name] = torch.empty((self.max_images,) + values.shape[1:], dtype=values.dtype,
                                                 device=self.placement.device)
            self._fields[name][:n] = values
        if self.placement.device.type == "cuda":
            self._uploaded = torch.cuda.Event()
            self._uploaded.record()
        return self._images[:n], {name: store[:n] for name, store in self._fields.items()}

    def batches(self, batch_size: int, iters: int, shuffle: Shuffle | None = None) -> Iterator[Batch]:
        """As `ResidentSplit.batches`; batches may span two divisions. When the epoch's last
        division starts training, the first division of the next epoch (shuffle epoch + 1) is
        read ahead."""
        rng = new_rng(shuffle)
        train = rng is not None
        remaining = self.num_batches(batch_size, iters, train)
        queue = deque(self.plan(rng))
        future = self._read(queue[0])
        carry: Batch | None = None  # images left over from the previous division, fewer than a batch
        while remaining > 0:
            positions = queue.popleft()
            images, fields = self._upload(future)
            end_of_pass = not queue
            available = len(positions) + (len(carry.index) if carry else 0)
            makes = available // batch_size + (end_of_pass and not train and available % batch_size > 0)
            if makes >= remaining:  # the call ends in this division: read ahead for the next call
                following = None if shuffle is None else (shuffle[0], shuffle[1] + 1)
                ahead = self.plan(new_rng(following))[0]
                self._pending = (ahead, self._reader.submit(self._read_division, ahead))
            else:
                if end_of_pass:
                    queue.extend(self.plan(rng))
                future = self._read(queue[0])
            local = torch.from_numpy(rng.permutation(len(positions)) if train else np.arange(len(positions)))
            local = local.to(images.device)
            on_device = torch.from_numpy(positions).to(images.device)
            start = 0
            if carry is not None:
                need = batch_size - len(carry.index)
                batch = join(carry, division_batch(images, fields, on_device, local[:need]))
                carry, start = None, need
                if len(batch.index) == batch_size or (end_of_pass and not train):
                    yield attach(batch, self.extra)
                    remaining -= 1
                else:
                    carry = batch
            while remaining > 0 and start < len(local):
                part = local[start: start + batch_size]
                batch = division_batch(images, fields, on_device, part)
                start += batch_size
                if len(part) == batch_size or (end_of_pass and not train):
                    yield attach(batch, self.extra)
                    remaining -= 1
                else:
                    carry = batch
            if end_of_pass:
                carry = None  # training drops a pass's last partial batch

    def close(self) -> None:
        self._pending = None
        self._reader.shutdown(wait=False, cancel_futures=True)
