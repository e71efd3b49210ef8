"""Dataset options (`BaseDataset.*`), datasets on disk, and their train/valid/test rows.

A dataset on disk is a pair of HDF5 split files (train, test; see `hdf5.py`). Loading it
for a trial puts each split on the training device (see `splits.py`): whole, or in
divisions when it has more than `BaseDataset.max_images` images.
The validation pool is the last `num_valid` images of a fixed permutation of the training
file (the same for every trial). `semisupervised = N` keeps N class-balanced labelled images
of the rest (on a dense set, balanced by each map's most frequent object class), drawn with
the subset seed: the trial's seed unless `subset_seed` fixes it. Within one seed the budgets
nest (the 100 images are among the 300). The validation split is the whole pool, or, with
`valid_fraction = f`, a class-balanced subset of f * N images of the pool drawn with the same
subset seed (a budget-sized validation split, nested likewise).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gin
import numpy as np
import torch

import paths
from selfstudy.data import cache, hdf5
from selfstudy.data.budget import balanced_subset, budget_keys
from selfstudy.data.splits import DividedSplit, Placement, ResidentSplit
from selfstudy.errors import UserError
from selfstudy.render import pose_label

SPLIT_SEED = 0  # fixes the validation pool across trials
Rows = dict[str, np.ndarray]  # rows of the training file by split, 'train' and 'valid' (DatasetFiles.split_rows)


@dataclass(frozen=True)
class DataOptions:
    input_res: int | None
    max_images: int | None
    chunk_size: int
    use_fp16: bool
    semisupervised: int | None
    num_valid: int | None
    double_sample: bool
    predict_pose: bool
    subset_seed: int | None = None  # draws the label budget (and a budget-sized validation split); None: 0
    valid_fraction: float | None = None  # validation images per labelled training image (None: the whole pool)

    def valid_size(self, budget: int) -> int | None:
        """Validation images for `budget` labelled training images: round(valid_fraction * budget),
        at least one; None for the whole validation pool."""
        return None if self.valid_fraction is None else max(1, round(self.valid_fraction * budget))


@gin.configurable("BaseDataset")
def data_options(input_res: int | None = None, max_images: int | None = None, chunk_size: int = 1024,
                 use_fp16: bool = True, semisupervised: int | None = None, num_valid: int | None = None,
                 double_sample: bool = False, predict_pose: bool = False, subset_seed: int | None = None,
                 valid_fraction: float | None = None) -> DataOptions:
    """`BaseDataset.*`.

    input_res       resolution in pixels (None keeps the stored one)
    max_images      images of one split held on the device at once; a larger split is served
                    in divisions read in the background (None: every split resident)
    chunk_size      rows per HDF5 read, and the unit of shuffling across divisions
    use_fp16        keep images as float16 on the device (half the memory); else float32
    semisupervised  labelled training images, class-balanced (None or 0: all); on a dense set
                    balanced by each image's most frequent non-background class (see budget_keys)
    num_valid       validation images taken from the training file (None: a tenth)
    double_sample   every batch carries two independently augmented views of its images
    predict_pose    every batch carries a 5-way pose label from the dataset's rot_mat (top view,
                    or the azimuth quadrant; see selfstudy.render.pose_label)
    subset_seed     seed of the class-balanced label subset (None: the trial's seed, so seeds differ
                    in which images are labelled; a pretrained and a scratch trial of one seed share them)
    valid_fraction  validation images per labelled training image, drawn class-balanced (with the
                    subset seed) from the num_valid held-out images; None: all num_valid of them
    """
    if input_res is not None and (isinstance(input_res, bool) or not isinstance(input_res, int) or input_res < 1):
        raise UserError(f"BaseDataset.input_res must be a positive number of pixels or None (the stored size), got "
                        f"{input_res!r}")
    for name, value in (("semisupervised", semisupervised), ("num_valid", num_valid)):
        if value is not None and (not isinstance(value, int) or value < 0):
            raise UserError(f"BaseDataset.{name} must be a non-negative integer or None, got {value!r}")
    for name, value in (("max_images", max_images), ("chunk_size", chunk_size)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise UserError(f"BaseDataset.{name} must be a positive integer, got {value!r}")
    if subset_seed is not None and (not isinstance(subset_seed, int) or isinstance(subset_seed, bool)
                                    or not 0 <= subset_seed < 2 ** 32):
        raise UserError(f"BaseDataset.subset_seed must be an integer from 0 to 2**32 - 1, or None (the trial's "
                        f"seed), got {subset_seed!r}")
    if valid_fraction is not None and (isinstance(valid_fraction, bool) or not isinstance(valid_fraction, (int, float))
                                       or not 0 < valid_fraction <= 1):
        raise UserError(f"BaseDataset.valid_fraction must be a fraction above 0 and at most 1 (validation images per "
                        f"labelled training image), or None (every held-out image), got {valid_fraction!r}")
    return DataOptions(input_res, max_images, chunk_size, bool(use_fp16), semisupervised or None, num_valid,
                       bool(double_sample), bool(predict_pose), subset_seed,
                       None if valid_fraction is None else float(valid_fraction))


@gin.configurable("dataloader")
def batch_size_option(batch_size: int = 512) -> int:
    """`dataloader.batch_size`: images per training and evaluation batch."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"dataloader.batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


@dataclass(frozen=True)
class DatasetFiles:
    """A dataset on disk: its split files, checked but not loaded."""

    name: str
    train: hdf5.SplitInfo
    test: hdf5.SplitInfo
    one_file: bool = False  # the 2020 layout: train, valid and test rows of one file (see split_rows)

    @classmethod
    def open(cls, name: str, train_path: Path, test_path: Path) -> "DatasetFiles":
        train, test = hdf5.read_info(train_path), hdf5.read_info(test_path)
        if train.image_shape[0] != test.image_shape[0]:
            raise UserError(f"{train_path} has {train.image_shape[0]} channels, {test_path} {test.image_shape[0]}: "
                            "rebuild them together")
        if train.classes != test.classes:
            raise UserError(f"{train_path} lists {len(train.classes)} classes, {test_path} {len(test.classes)} (or "
                            "others): rebuild them together")
        return cls(name, train, test)

    @classmethod
    def open_2020(cls, name: str, path: Path, lab: bool) -> "DatasetFiles":
        info = hdf5.read_info_2020(path, lab)
        return cls(name, info, info, one_file=True)

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    @property
    def channels(self) -> int:
        return self.train.image_shape[0]

    def resolution(self, options: DataOptions) -> int:
        return options.input_res or self.train.image_shape[1]

    def split_rows(self, options: DataOptions) -> dict[str, np.ndarray]:
        """Row indices into the train file for the train and valid splits (sorted), and for the
        test split when the file holds it too (the 2020 layout: train is the first 5/6 of the
        rows, valid the next num_valid, test as many again from n/12 after the end of train)."""
        n = self.train.num_images
        if self.one_file:
            n_train, gap = n * 5 // 6, n // 12
            num_valid = gap if options.num_valid is None else options.num_valid
            if not 0 <= num_valid <= min(gap, n - n_train - gap):
                raise UserError(f"BaseDataset.num_valid = {num_valid}: the 2020 layout of {self.name} ({n} images) "
                                f"takes the valid and test images (as many each) from its last sixth, so 0 to "
                                f"{min(gap, n - n_train - gap)} fit without overlap; set it in that range")
            rows = {"train": np.arange(n_train), "valid": n_train + np.arange(num_valid),
                    "test": n_train + gap + np.arange(num_valid)}
        else:
            num_valid = n // 10 if options.num_valid is None else options.num_valid
            if num_valid >= n:
                raise UserError(f"BaseDataset.num_valid = {num_valid} leaves no training image of {n} in {self.name}")
            order = np.random.default_rng(SPLIT_SEED).permutation(n)
            rows = {"train": np.sort(order[: n - num_valid]), "valid": np.sort(order[n - num_valid:])}
        seed = options.subset_seed or 0
        if options.semisupervised:
            if options.semisupervised > len(rows["train"]):
                held_out = "" if self.one_file else " (or BaseDataset.num_valid, which holds images out of training)"
                raise UserError(f"BaseDataset.semisupervised = {options.semisupervised} exceeds the "
                                f"{len(rows['train'])} training images of {self.name}: lower the budget{held_out}")
            keys = budget_keys(self.train.path, rows["train"], options.chunk_size)
            rows["train"] = rows["train"][balanced_subset(keys, options.semisupervised, seed)]
        size = options.valid_size(len(rows["train"]))
        if size is not None:
            pool = rows["valid"]
            if size > len(pool):
                raise UserError(f"BaseDataset.valid_fraction = {options.valid_fraction} of {len(rows['train'])} "
                                f"labelled training images asks for {size} validation images, but only {len(pool)} of "
                                f"the {n} images of {self.name} are held out for validation (BaseDataset.num_valid): "
                                "the budget and its validation images must fit in the training file; lower the "
                                "budget or valid_fraction, or raise num_valid")
            keys = budget_keys(self.train.path, pool, options.chunk_size)
            rows["valid"] = pool[balanced_subset(keys, size, seed)]
        return rows

    def verify(self) -> None:
        """Read both split files once: damaged bytes are a `UserError` now, not a diverging trial later."""
        hdf5.verify(self.train.path)
        if self.test.path != self.train.path:
            hdf5.verify(self.test.path)

    def check(self, options: DataOptions, batch_size: int) -> None:
        """Raise the `UserError` loading with these options would meet, besides those of `split_rows`."""
        if options.predict_pose and "rot_mat" not in self.train.extras:
            raise UserError(f"BaseDataset.predict_pose = True needs rot_mat in the dataset, but {self.name} has none: "
                            "use a synthetic set (SynDataset) or set it to False")
        if options.max_images is not None and options.max_images < batch_size:
            raise UserError(f"BaseDataset.max_images = {options.max_images} is smaller than dataloader.batch_size "
                            f"= {batch_size}: a division must hold at least one batch")

    def placement(self, options: DataOptions, device: torch.device) -> Placement:
        return Placement(device, self.resolution(options), torch.tensor(self.train.mean, device=device),
                         torch.tensor(self.train.std, device=device), not self.train.normalised,
                         torch.float16 if options.use_fp16 else torch.float32)

    def load(self, options: DataOptions, device: torch.device, splits: tuple[str, ...],
             extras: tuple[str, ...] = (), rows: dict[str, np.ndarray] | None = None
             ) -> dict[str, ResidentSplit | DividedSplit]:
        """Put the requested splits on `device`: resident, or divided when larger than max_images.
        `extras`: further per-image maps a task needs (e.g. 'depth'), held with their images
        (whole, or a division at a time). `rows`: `split_rows(options)`, when already known."""
        rows = dict(self.split_rows(options) if rows is None else rows)
        rows.setdefault("test", np.arange(self.test.num_images))
        placement = self.placement(options, device)
        divided = {split for split in splits if options.max_images is not None and len(rows[split]) > options.max_images}
        keys = {split: cache.key(self.test.path if split == "test" else self.train.path, rows[split], placement,
                                 (self.train.mean, self.train.std, extras, options.predict_pose))
                for split in splits if split not in divided}
        cache.keep_only(keys.values())  # free what this trial does not use before loading
        loaded: dict[str, ResidentSplit | DividedSplit] = {}
        for split in splits:
            info = self.test if split == "test" else self.train
            if split in divided:
                loaded[split] = DividedSplit(info.path, rows[split], info.image_shape, placement,
                                             options.max_images, options.chunk_size, maps=extras)
                if options.predict_pose:
                    loaded[split].extra["pose"] = read_pose(info.path, rows[split], options.chunk_size, device)
            else:
                kept = cache.get(keys[split])  # (an empty split is falsy: compare with None)
                loaded[split] = kept if kept is not None else cache.put(
                    keys[split], self.resident(info.path, rows[split], placement, options, extras))
        return loaded

    @staticmethod
    def resident(path: Path, rows: np.ndarray, placement: Placement, options: DataOptions,
                 extras: tuple[str, ...]) -> ResidentSplit:
        """The `rows` of a split file on the device, with the per-image maps `extras` (and the
        pose label with predict_pose)."""
        images, targets = hdf5.read_rows(path, rows, options.chunk_size)
        split = ResidentSplit(placement.images(torch.from_numpy(images)), placement.targets(targets))
        for name in extras:
            split.extra[name] = placement.targets(hdf5.read_column(path, name, rows, options.chunk_size))
        if options.predict_pose:
            split.extra["pose"] = read_pose(path, rows, options.chunk_size, placement.device)
        return split


def read_pose(path: Path, rows: np.ndarray, chunk_size: int, device: torch.device) -> torch.Tensor:
    rotations = torch.from_numpy(hdf5.read_column(path, "rot_mat", rows, chunk_size))
    return pose_label(rotations.reshape(len(rotations), -1, 3, 3)[:, 0]).to(device)


@gin.configurable
def FolderDataset(path: str) -> DatasetFiles:  # noqa: N802  (the gin name users write)
    """A dataset made by `misc/make_dataset.py` (or any in the project's format): the folder
    holding train.h5 and test.h5, absolute or relative to DATA_DIR."""
    folder = Path(path).expanduser()
    folder = folder if folder.is_absolute() else paths.DATA_DIR / folder
    return DatasetFiles.open(f"FolderDataset({path})", folder / "train.h5", folder / "test.h5")
