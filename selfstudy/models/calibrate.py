"""BatchNorm statistics of a random backbone, measured on the data: an untrained baseline
treated as the pretrained ones are.

A randomly initialised backbone keeps BatchNorm's initial running statistics (mean 0,
variance 1), which do not describe its activations; every pretrained backbone has had its
statistics measured on images. `calibrate_batchnorm` gives a random one the same, and changes
nothing else. Fairer is not stronger: on digits, where probes see standardised features
(`Wrapper.feature_norm`), the probe grid of config/linear_eval.py (3 seeds, commit f9f588f; see
BENCHMARKS.md) on a calibrated random ResNet-9 tests 0.695 at 50 labels and 0.939 at 1,200,
against 0.768 and 0.944 uncalibrated.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractContextManager, nullcontext
from typing import Callable, Iterable

import torch
from torch import nn

from selfstudy import notes
from selfstudy.data import DatasetFiles
from selfstudy.data.base import DataOptions


@torch.no_grad()
def calibrate_batchnorm(module: nn.Module, batches: Iterable[torch.Tensor],
                        autocast: Callable[[], AbstractContextManager] | None = None) -> int:
    """Set the running statistics of every BatchNorm layer of `module` to those of one pass
    over `batches` (images B x C x H x W, as the module takes them); returns the number of
    batches. In train mode with momentum None, so each layer's running_mean is the mean of its
    per-batch means and running_var the mean of its per-batch unbiased variances, each layer
    seeing the output of the layers before it normalised by batch statistics (as in training).
    Weights, momenta and modes (of every submodule) are left as they were; no random number is
    drawn (unless the module's train mode draws some: ResNet's does not). `autocast` (a
    context factory) runs the pass at the trial's precision."""
    layers = [layer for layer in module.modules()
              if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats]
    modes = {sub: sub.training for sub in module.modules()}
    momenta = [layer.momentum for layer in layers]
    count = 0
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # a cumulative average over the pass
        for sub in modes:  # all of them: ResNet.train would leave ResNet.freeze_at_k's stages in eval mode
            sub.training = True
        for images in batches:
            with autocast() if autocast is not None else nullcontext():
                module(images)
            count += 1
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        for sub, mode in modes.items():
            sub.training = mode
    return count


def calibrate_random_backbone(backbone: nn.Module, dataset: DatasetFiles, options: DataOptions,
                              device: torch.device, batch_size: int,
                              autocast: Callable[[], AbstractContextManager] | None = None) -> None:
    """`calibrate_batchnorm` on every training image (the label budget's and the others: no
    label is read), plain (no augmentation: as a probe grid encodes them, and as every trial
    evaluates), in file order, `batch_size` at a time; said in a note. Draws no random number,
    so a trial that calibrates at setup continues its random streams as without; a restored
    trial then takes the statistics of its snapshot (they are buffers of the model's state)."""
    everything = dataclasses.replace(options, semisupervised=None, valid_fraction=None)  # every training image
    split = dataset.load(everything, device, ("train",))["train"]
    try:
        count = calibrate_batchnorm(backbone, (batch.images for batch in split.batches(batch_size, -1)), autocast)
    finally:
        split.close()
    notes.note(f"Wrapper.calibrate_random: the random backbone's BatchNorm statistics are those of one pass over "
                f"the {len(split)} training images ({count} batches); set it to False to keep mean 0, variance 1")

