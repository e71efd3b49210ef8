"""A trial's config -> its parts: gin parsed once, then dataset, split plan, augmentation, task and
model, built before any image is loaded.

`bind` parses the trial's gin files and bindings (the 2020 names translated, see
`selfstudy.translate2020`) and reads what must be known before anything is built: the `session.*`
settings, the seed, and whether the trial is a probe grid's. `build` makes the parts from the
bound config; the split plan (`DatasetFiles.split_rows`: which rows of the training file are the
trial's train and valid splits) is computed once there and handed to the task and the loader.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import selfstudy.components  # noqa: F401  (registers every configurable gin may bind)
from selfstudy.augment import Augment, augment_options
from selfstudy.config import bind_at_resolution, bind_trial
from selfstudy.data import DatasetFiles, batch_size_option, build_dataset, data_options
from selfstudy.data.base import DataOptions, Rows
from selfstudy.data.splits import PIXEL_FIELDS
from selfstudy.errors import UserError
from selfstudy.models import Wrapper, build_model
from selfstudy.probe import GridOptions, check_grid_task, trial_grid
from selfstudy.settings import SessionSettings, session_settings
from selfstudy.tasks import TASKS, SelfSupervisedTask, Task, build_task


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class Bound:
    """A trial's config, parsed into gin (which holds it until the next trial binds its own)."""

    config: dict[str, Any]
    settings: SessionSettings
    seed: int
    grid: GridOptions | None  # the probe grid's options (None: an ordinary trial)


@dataclass
class Parts:
    """Everything a trial is built from, before any image is loaded."""

    settings: SessionSettings
    dataset: DatasetFiles
    options: DataOptions
    batch_size: int
    augment: Augment
    task: Task
    model: Wrapper
    rows: Rows  # the split plan: rows of the training file in the train and valid splits
    grid: GridOptions | None  # the probe grid's options (None: an ordinary trial)


def bind(config: dict[str, Any]) -> Bound:
    """Parse the trial's gin config (the only place a trial's gin is parsed) and read its settings."""
    seed = trial_seed(config)
    self_supervised = [name for name, cls in TASKS.items() if isinstance(cls, type) and issubclass(cls, SelfSupervisedTask)]
    pending = bind_trial(config, self_supervised)
    settings = session_settings()
    if pending:  # 2020's sizes relative to the images, e.g. augment.crop = True
        bind_at_resolution(pending, build_dataset(settings.dataset).resolution(data_options()))
    return Bound(config, settings, seed, trial_grid())


def build(bound: Bound, device: torch.device) -> Parts:
    """The parts of the trial `bound` (as gin holds it now); the model is created on `device`."""
    settings = bound.settings
    dataset = build_dataset(settings.dataset)
    options = data_options()
    if options.subset_seed is None:  # each seed labels its own images
        options = dataclasses.replace(options, subset_seed=bound.seed)
    rows = dataset.split_rows(options)
    augment = augment_options(color_space=dataset.train.color_space)
    task = build_task(settings.task)
    with torch.device(device):
        classes = dataset.num_classes + (1 if dataset.train.target_shape else 0)  # dense maps: 0 is background
        model = build_model(dataset.channels, dataset.resolution(options), classes)
        if device.type == "meta":  # a config check: the backbone must take images of this size
            check_resolution(model.backbone, dataset.channels, dataset.resolution(options), options.input_res)
        check_heads(model, task)
        if bound.grid is not None:
            check_grid_task(task)
        task.setup(model, dataset, options, rows)
    pixel_fields = ("targets",) * bool(dataset.train.target_shape) + tuple(n for n in task.needs if n in PIXEL_FIELDS)
    augment.check(pixel_fields)
    augment.check_views(options.double_sample, dataset.resolution(options))
    check_local_views(augment, task, model)
    if options.double_sample and augment.transform_targets:
        raise UserError("BaseDataset.double_sample and augment.transform_targets cannot be combined: two views "
                        "would need two target maps; turn one of them off")
    batch_size = batch_size_option()
    dataset.check(options, batch_size)
    if options.semisupervised == 1 and isinstance(model.feature_norm, torch.nn.BatchNorm1d):
        raise UserError("BaseDataset.semisupervised = 1: the probe standardises its features over each batch, which "
                        "takes 2 or more images: give a larger budget")
    return Parts(settings, dataset, options, batch_size, augment, task, model, rows, bound.grid)


def build_parts(config: dict[str, Any], device: torch.device) -> Parts:
    """Parse the trial's gin config and build its parts; the model is created on `device`."""
    return build(bind(config), device)


def trial_seed(config: dict[str, Any]) -> int:
    """The trial's seed (the Ray config's `seed`, 0 by default): a whole number from 0 to 2**32 - 1."""
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 32:
        raise UserError(f"seed = {seed!r}: a trial's seed is a whole number from 0 to 2**32 - 1 "
                        "(e.g. 'seed': tune.grid_search([0, 1, 2]) in the search_space)")
    return int(seed)


def check_resolution(backbone: torch.nn.Module, channels: int, side: int, input_res: int | None) -> None:
    """Images `side` pixels wide must come out of the backbone's pooling with at least one
    position: tried on meta tensors, which cost nothing."""
    def fits(size: int) -> bool:
        try:
            backbone(torch.zeros(2, channels, size, size, device="meta"))
        except RuntimeError:
            return False
        return True

    was_training = backbone.training
    backbone.eval()
    try:
        if fits(side):
            return
        least = next((size for size in range(side + 1, 1025) if fits(size)), None)
    finally:
        backbone.train(was_training)
    setting = f"BaseDataset.input_res = {input_res}" if input_res else f"the dataset's {side}-pixel images"
    raise UserError(f"{setting}: init_resnet.choice pools images smaller than {least} pixels away to nothing: set "
                    f"BaseDataset.input_res = {least} or more")


def check_local_views(augment: Augment, task: Task, model: Wrapper) -> None:
    """Local views (`augment.local_crops`) need a task that reads them, in whole patches of a ViT."""
    if augment.local is None:
        return
    if not task.uses_local_views:
        raise UserError(f"augment.local_crops = {augment.local.count}: {type(task).__name__} does not use local views "
                        "(DINOTask does): set it to 0")
    patch = getattr(model.backbone, "patch_size", None)
    if patch and augment.local.res % patch:
        raise UserError(f"augment.local_res = {augment.local.res} does not split into ViT.patch_size = {patch} pixel "
                        f"patches: choose a multiple of {patch}")


def check_heads(model: Wrapper, task: Task) -> None:
    """The task must know what to train each of the model's heads on."""
    if len(model.more_heads) > len(task.more_labels):
        labels = ("class", *task.more_labels)
        raise UserError(f"Wrapper.out_classes asks for {1 + len(model.more_heads)} heads, but {type(task).__name__} "
                        f"trains {len(labels)} ({', '.join(labels)}): give Wrapper.out_classes at most {len(labels)} "
                        "numbers")


def trainable(model: Wrapper, task: Task) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates: the model's and the task's heads, unless frozen."""
    return [p for module in (model, task) for p in module.parameters() if p.requires_grad]
