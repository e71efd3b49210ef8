"""Training-step speed of ResNet-9 at batch 512: mixed precision vs fp32, and the share of
batch augmentation (flip, translate, cutout) in a step. Prints one JSON line.

    python misc/bench_train.py [--batch 512] [--steps 20]

Both figures are ratios measured in the same run on the same machine:
    bf16_vs_fp32      training images/s with bf16 autocast / with fp32
    aug_share_of_step augmentation time / (augmentation + training step) time, fp32 on the
                      CPU, the default precision on a GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selfstudy.augment import Augment  # noqa: E402
from selfstudy.models import ResNet, Wrapper  # noqa: E402
from selfstudy.precision import autocast_dtype  # noqa: E402


def speed_options(doc: str, gin_config: str) -> argparse.Namespace:
    """The options of a step-speed bench: the gin config and bindings, steps per timing, rounds."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-g", "--gin", default=gin_config, help=f"the gin config (default {gin_config})")
    parser.add_argument("-p", "--params", nargs="*", default=[], help="gin bindings, e.g. 'dataloader.batch_size = 512'")
    parser.add_argument("--steps", type=int, default=10, help="steps per timing (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the fastest counts (default 3)")
    args = parser.parse_args()
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1")
    return args


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of `fn`, after two warm-up calls."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def resnet9_trainer(device: torch.device) -> Callable[[torch.Tensor, torch.Tensor, torch.dtype | None], None]:
    """A training step of ResNet-9 (10 classes, SGD), as a function of images, targets and autocast dtype."""
    torch.backends.cudnn.benchmark = True
    model = Wrapper(ResNet("resnet9"), num_classes=10).to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step(images: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype | None) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(images).logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train = resnet9_trainer(device)
    images = torch.randn(args.batch, 3, 32, 32, device=device).half()
    targets = torch.randint(0, 10, (args.batch,), device=device)
    augment = Augment(flip=True, crop=4, cutout=8)
    mean, std = torch.zeros(3, device=device), torch.ones(3, device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def step(dtype: torch.dtype | None) -> None:
        train(images.float(), targets, dtype)

    fp32 = timed(lambda: step(None), args.steps, device)
    bf16 = timed(lambda: step(torch.bfloat16), args.steps, device)
    default = autocast_dtype("auto", device)
    train = bf16 if default is torch.bfloat16 else fp32
    aug = timed(lambda: augment(images.float(), mean, std, generator), args.steps, device)
    print(json.dumps({
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "batch": args.batch,
        "fp32_images_per_s": round(args.batch / fp32),
        "bf16_images_per_s": round(args.batch / bf16),
        "bf16_vs_fp32": round(fp32 / bf16, 3),
        "aug_images_per_s": round(args.batch / aug),
        "aug_share_of_step": round(aug / (aug + train), 4),
    }))


if __name__ == "__main__":
    main()
