"""Speed of a self-supervised step: the views' augmentation's share of a step (SimCLR's two
views, DINO's multi-crop), and throughput with augmentation against the bare step (same model,
same run, on views made once). Prints one JSON line.

    python misc/bench_ssl_speed.py                                   # digits/r9/simclr as configured
    python misc/bench_ssl_speed.py -p 'ResNet.width = 64' 'dataloader.batch_size = 512' \
        'BaseDataset.input_res = 32'                                 # the GPU figure's setting
    python misc/bench_ssl_speed.py -g digits/vit/dino -p 'dataloader.batch_size = 512'
                                                                     # 2 x 32 px + 6 x 16 px, ViT-Tiny

The model, task, optimizer, precision and augmentation are the gin config's (built as a trial
builds them); the images are random, of the dataset's size and resolution. Figures:
    aug_share_of_step     two views' augmentation / (augmentation + training step)
    throughput_vs_bare    images/s with augmentation / images/s of the bare step (on views made once)
    kornia_aug_ms         the resized crop, colour, blur and solarize steps of the same two views
                          with kornia's augmentation modules (the reference the batched operations
                          are tested against), for comparison
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from misc.bench_train import speed_options, timed  # noqa: E402
from selfstudy.config import split_binding  # noqa: E402
from selfstudy.data import Batch  # noqa: E402
from selfstudy.optim import build_optimizer  # noqa: E402
from selfstudy.precision import autocast_dtype  # noqa: E402
from selfstudy.build import build_parts, trainable  # noqa: E402


def kornia_views(augment, images: torch.Tensor) -> Callable[[], object]:
    """The two views with kornia's modules and the same options."""
    import kornia.augmentation as K

    h, w = images.shape[-2:]
    ops = []
    if augment.resized_crop:
        ops.append(K.RandomResizedCrop((h, w), scale=(augment.resized_crop, 1.0)))
    if augment.color_jitter:
        s = augment.color_jitter
        ops.append(K.ColorJitter(s, s, s, min(s / 4, 0.5), p=0.8))
    if augment.grayscale:
        ops.append(K.RandomGrayscale(p=augment.grayscale))
    if augment.blur:
        ops.append(K.RandomGaussianBlur(max(3, (min(h, w) // 10) | 1), (0.1, 2.0), p=augment.blur))
    if augment.solarize:
        ops.append(K.RandomSolarize(0.0, 0.0, p=augment.solarize))
    pipeline = torch.nn.Sequential(*ops).to(images.device)
    return lambda: (pipeline(images.clamp(0, 1)), pipeline(images.clamp(0, 1)))


def main() -> None:
    args = speed_options(__doc__, "digits/r9/simclr")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = {"gin_config": [args.gin], "gin_params": dict(split_binding(b) for b in args.params)}
    parts = build_parts(config, device)
    model, task = parts.model.to(memory_format=torch.channels_last), parts.task
    optimizer = build_optimizer(trainable(model, task))
    dtype = autocast_dtype(parts.settings.precision, device)
    res, b = parts.dataset.resolution(parts.options), parts.batch_size
    images = torch.rand(b, parts.dataset.channels, res, res, device=device)
    targets = torch.randint(0, parts.dataset.num_classes, (b,), device=device)
    mean, std = torch.zeros(parts.dataset.channels, device=device), torch.ones(parts.dataset.channels, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    batch = Batch(images, targets, torch.arange(b, device=device))
    model.train()
    task.train()

    def step(views: Batch) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss, _ = task.loss(model, views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def augment() -> Batch:
        return parts.augment.batch(batch, mean, std, generator, double=parts.options.double_sample)

    augmented = augment()
    bare_views = augmented  # the step on views made once: every view a method takes (DINO's local ones too)
    kornia = kornia_views(parts.augment, images)
    rounds = [(timed(lambda: step(bare_views), args.steps, device), timed(augment, args.steps, device),
               timed(lambda: step(augment()), args.steps, device), timed(kornia, args.steps, device))
              for _ in range(args.rounds)]  # interleaved; the fastest round of each: a brief slowdown of the machine
    bare, aug, full, reference = (min(times) for times in zip(*rounds))  # does not skew the ratios
    assert augmented.images.shape == images.shape
    print(json.dumps({
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()}",
        "config": args.gin, "params": args.params, "batch": b, "resolution": res,
        "feature_dim": model.backbone.out_dim, "precision": str(dtype).replace("torch.", "") if dtype else "fp32",
        "aug_ms": round(aug * 1e3, 2), "step_ms": round(bare * 1e3, 2), "kornia_aug_ms": round(reference * 1e3, 2),
        "aug_share_of_step": round(aug / (aug + bare), 4),
        "throughput_vs_bare": round(bare / full, 3),
        "images_per_s": round(b / full), "bare_images_per_s": round(b / bare),
    }))


if __name__ == "__main__":
    main()
