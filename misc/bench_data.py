"""Input-pipeline speed and memory, each figure a ratio against a baseline measured in the
same run. Prints one JSON line.

    python misc/bench_data.py [--quick]

    speedup_vs_torchvision  augmented images/s of our pipeline (device-resident float16 split,
                            batch gather, flip + 4-pixel reflect-pad crop + 8-pixel cutout on the
                            device) over the same augmentations per sample with torchvision v2
                            transforms in a DataLoader with every core as a worker
    aug_share_of_step       our pipeline's time (gather + augmentation) over that plus a ResNet-9
                            training step at batch 512, at the device's default precision
    divisions_vs_resident   ResNet-9 training images/s over an epoch of a split served in four
                            divisions read in the background over the same split fully resident
    rss_growth_4x           peak host RSS (a fresh process iterating an augmented epoch) with a
                            dataset of 4 x max_images over one of 1 x max_images, minus 1
    amp_vs_fp32             (GPU only) ResNet-9 training images/s with bf16 autocast over fp32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import paths  # noqa: E402
from bench_train import resnet9_trainer, timed  # noqa: E402
from selfstudy.augment import Augment  # noqa: E402
from selfstudy.data import FolderDataset, data_options, hdf5  # noqa: E402
from selfstudy.precision import autocast_dtype  # noqa: E402

AUGMENT = Augment(flip=True, crop=4, cutout=8)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def write_dataset(folder: Path, n: int, res: int = 32) -> None:
    """n random 3 x res x res images of 10 classes, written in pieces (train; a small test split)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", n), ("test", 64)):
        with h5py.File(folder / f"{split}.h5", "w") as f:
            hdf5.create_split(f, (count, 3, res, res), [str(c) for c in range(10)], "rgb")
            for start in range(0, count, 8192):
                stop = min(count, start + 8192)
                f["data"][start:stop] = rng.random((stop - start, 3, res, res), dtype=np.float32).astype(np.float16)
                f["targets"][start:stop] = rng.integers(0, 10, stop - start)
            hdf5.set_statistics(f, np.full(3, 0.5), np.full(3, 0.29))


def load(folder: Path, device: torch.device, max_images: int | None):
    options = data_options(max_images=max_images, num_valid=0)
    return FolderDataset(str(folder)).load(options, device, ("train",))["train"]


def ours_images_per_s(split, device: torch.device, batch: int, steps: int) -> float:
    mean, std = torch.zeros(3, device=device), torch.ones(3, device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def run(count: int) -> None:
        for b in split.batches(batch, count, shuffle=(0, 1)):
            AUGMENT.batch(b, mean, std, generator)

    run(2)
    sync(device)
    start = time.perf_counter()
    run(steps)
    sync(device)
    return batch * steps / (time.perf_counter() - start)


class InMemory(torch.utils.data.Dataset):
    """uint8 H x W x C images in memory, transformed per sample: the usual torchvision setup."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.transform(self.images[i]), int(self.targets[i])


def torchvision_images_per_s(n: int, device: torch.device, batch: int, steps: int) -> float:
    from torchvision.transforms import v2

    transform = v2.Compose([
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.29] * 3),
        v2.RandomHorizontalFlip(), v2.RandomCrop(32, padding=4, padding_mode="reflect"),
        v2.RandomErasing(p=1.0, scale=(64 / 1024, 64 / 1024), ratio=(1.0, 1.0), value=0),
    ])
    rng = np.random.default_rng(0)
    data = InMemory(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n), transform)
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, drop_last=True,
                                         num_workers=os.cpu_count(), pin_memory=device.type == "cuda",
                                         persistent_workers=True, prefetch_factor=4)
    batches = (batch for _ in iter(int, 1) for batch in loader)  # epoch after epoch
    for _ in range(2):  # workers start
        next(batches)
    start = time.perf_counter()
    for _ in range(steps):
        images, targets = next(batches)
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def epoch_images_per_s(split, device: torch.device, batch: int, dtype: torch.dtype | None) -> float:
    """Training images/s over the second of two epochs (the first warms up)."""
    train = resnet9_trainer(device)
    mean, std = torch.zeros(3, device=device), torch.ones(3, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    seconds = 0.0
    for epoch in (1, 2):
        sync(device)
        start = time.perf_counter()
        for b in split.batches(batch, -1, shuffle=(0, epoch)):
            b = AUGMENT.batch(b, mean, std, generator)
            train(b.images, b.targets, dtype)
        sync(device)
        seconds = time.perf_counter() - start
    return split.num_batches(batch, -1, True) * batch / seconds


def peak_rss_mb(folder: Path, max_images: int, batch: int) -> float:
    """Peak RSS of a fresh process that loads the split and iterates one augmented epoch."""
    done = subprocess.run([sys.executable, __file__, "--rss-child", str(folder), str(max_images), str(batch)],
                          capture_output=True, text=True, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def rss_child(folder: str, max_images: int, batch: int) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    split = load(Path(folder), device, max_images)
    mean, std = torch.zeros(3, device=device), torch.ones(3, device=device)
    for b in split.batches(batch, -1, shuffle=(0, 1)):
        AUGMENT.batch(b, mean, std, None)
    sync(device)
    split.close()
    print(peak_rss_of_this_process_mb())


def peak_rss_of_this_process_mb() -> float:
    """VmHWM where /proc has it (ru_maxrss would include the parent's peak, kept across fork + exec)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--rss-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child[0], int(args.rss_child[1]), int(args.rss_child[2]))
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = device.type == "cuda"
    # sizes: (a) pipeline batches; (c) images per division and training batch; (d) max_images
    steps = 200 if gpu else 40
    division, train_batch = (16384, 512) if gpu else (256, 64)
    rss_max = 32768 if gpu else 8192
    if args.quick:
        steps, division, rss_max = 10, min(division, 256), 1024
    root = paths.DATA_DIR / "bench_data"
    shutil.rmtree(root, ignore_errors=True)
    figures: dict[str, object] = {"device": torch.cuda.get_device_name() if gpu else f"cpu x{os.cpu_count()}"}
    try:
        write_dataset(root / "small", 4 * division)
        write_dataset(root / "rss1", rss_max)
        write_dataset(root / "rss4", 4 * rss_max)

        resident = load(root / "small", device, None)
        ours = ours_images_per_s(resident, device, 512, steps)
        theirs = torchvision_images_per_s(4 * division, device, 512, max(10, steps // 4))
        figures.update(ours_aug_images_per_s=round(ours), torchvision_images_per_s=round(theirs),
                       speedup_vs_torchvision=round(ours / theirs, 2))

        default = autocast_dtype("auto", device)
        train = resnet9_trainer(device)
        sample = next(resident.batches(512, 1, shuffle=(0, 1)))
        step = timed(lambda: train(sample.images, sample.targets, default), 5 if not gpu else 30, device)
        pipeline = 512 / ours
        figures.update(resnet9_step_ms=round(step * 1000, 2), pipeline_ms=round(pipeline * 1000, 3),
                       aug_share_of_step=round(pipeline / (pipeline + step), 4))

        divided = load(root / "small", device, division)
        whole = epoch_images_per_s(resident, device, train_batch, default)
        parts = epoch_images_per_s(divided, device, train_batch, default)
        divided.close()
        figures.update(resident_images_per_s=round(whole), divided_images_per_s=round(parts),
                       divisions_vs_resident=round(parts / whole, 3))

        one, four = peak_rss_mb(root / "rss1", rss_max, 512), peak_rss_mb(root / "rss4", rss_max, 512)
        figures.update(rss_1x_mb=round(one), rss_4x_mb=round(four), rss_growth_4x=round(four / one - 1, 3),
                       max_images=rss_max)

        if gpu:
            fp32 = epoch_images_per_s(resident, device, 512, None)
            amp = epoch_images_per_s(resident, device, 512, torch.bfloat16)
            figures.update(fp32_images_per_s=round(fp32), amp_images_per_s=round(amp),
                           amp_vs_fp32=round(amp / fp32, 3))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
