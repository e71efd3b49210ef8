"""Which trial a config describes, checked or opened: a `Trial`, a probe grid's `GridTrial`
(`selfstudy.probe_trial`) when the config binds probe_grid.*, or a `KnnTrial`
(`selfstudy.knn_trial`) when it binds knn_grid.*. The driver checks every trial of a
sweep here before anything runs; the Ray Trainable and `-l` open them here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from selfstudy import distributed
from selfstudy.build import Bound, bind, build, default_device, trainable
from selfstudy.checkpoint import resolve_snapshot
from selfstudy.data.splits import num_batches
from selfstudy.errors import UserError
from selfstudy.knn import check_knn, knn_grid_options, trial_knn, trial_knn_grid
from selfstudy.knn_trial import KnnTrial, check_knn_trial
from selfstudy.optim import (
    PlateauSchedule,
    build_schedule,
    check_optimizer,
    gradient_clip,
)
from selfstudy.precision import autocast_dtype
from selfstudy.probe_trial import GridTrial, check_grid
from selfstudy.trial import Trial


def open_trial(config: dict[str, Any], trial_dir: Path | None = None, num_threads: int | None = None,
               node_id: str | None = None) -> Trial:
    """The trial `config` describes, built (gin parsed once) and ready for its first epoch."""
    bound = bind(config)
    return trial_kind(bound)(config, trial_dir, num_threads=num_threads, node_id=node_id, bound=bound)


def check_workers(parts: Any, kind: type[Trial], workers: int) -> None:
    """Refuse a data-parallel trial (`workers_per_trial` > 1) that would not give one worker's numbers."""
    if kind is not Trial:
        raise UserError(f"workers_per_trial = {workers}: a {kind.__name__} (probe_grid.* or knn_grid.*) trains no "
                        "backbone; run it with workers_per_trial = 1")
    parts.task.check_workers(parts.batch_size, workers)
    random = [type(m).__name__ for module in (parts.model, parts.task) for m in module.modules()
              if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0 or getattr(m, "drop_prob", 0)]
    if random:
        raise UserError(f"workers_per_trial = {workers}: {random[0]} draws random numbers per image, which each "
                        "worker would draw for its share alone: set its rate to 0 (e.g. ViT.drop_path = 0.0)")
    if len(parts.rows["train"]) < parts.batch_size:
        raise UserError(f"workers_per_trial = {workers}: the {len(parts.rows['train'])} training images are fewer "
                        f"than dataloader.batch_size = {parts.batch_size}, so the one batch would not split into equal "
                        "shares: lower the batch size")
    distributed.sync_batch_norm()  # its value checked
    if parts.batch_size % workers:
        raise UserError(f"dataloader.batch_size = {parts.batch_size} does not split into workers_per_trial = "
                        f"{workers} equal shares: make it a multiple of {workers}")


def trial_kind(bound: Bound) -> type[Trial]:
    """GridTrial for probe_grid.*, KnnTrial for knn_grid.*, else Trial; a `UserError` for settings
    of two kinds."""
    knn_grid = trial_knn_grid()
    if bound.grid is not None and knn_grid is not None:
        raise UserError("probe_grid.* and knn_grid.* each make the trial an evaluation of its own kind: keep one of "
                        "them (one trial each)")
    if (bound.grid is not None or knn_grid is not None) and trial_knn() is not None:
        raise UserError("knn.every measures kNN accuracy while a backbone trains, but a probe grid or kNN trial does "
                        "not train it: drop knn.* (knn_grid.* gives a kNN trial its k and temperature)")
    return GridTrial if bound.grid is not None else KnnTrial if knn_grid is not None else Trial


def check_trial(config: dict[str, Any], workers: int = 1) -> int:
    """Raise the `UserError` a trial with this config would meet at setup, without training;
    returns about how many bytes a checkpoint of the trial takes (its weights and buffers, and
    as much again for the optimizer's state).

    The model is built on the meta device (shapes only); the dataset's files are checked
    but not loaded; the label budget and schedule are validated.
    """
    bound = bind(config)
    parts = build(bound, torch.device("meta"))
    parts.dataset.verify()
    check_optimizer(trainable(parts.model, parts.task))
    gradient_clip()
    rows, settings = parts.rows, parts.settings
    if settings.valid_iters and not len(rows["valid"]):
        held_out = (f"BaseDataset.num_valid = {parts.options.num_valid}" if parts.options.num_valid is not None else
                    f"a tenth of its {parts.dataset.train.num_images} training images, rounded down, is held out")
        raise UserError(f"{parts.dataset.name} has no validation images ({held_out}), but session.valid_iters = "
                        f"{settings.valid_iters} evaluates them: give the dataset more images, set "
                        "BaseDataset.num_valid > 0, or session.valid_iters = 0 to select on training accuracy")
    schedule = build_schedule(1.0, num_batches(len(rows["train"]), parts.batch_size, settings.train_iters, train=True))
    if isinstance(schedule, PlateauSchedule) and schedule.metric.startswith("valid_") and not settings.valid_iters:
        raise UserError(f"scheduler.metric = {schedule.metric!r} needs the validation split, but session.valid_iters = "
                        "0: evaluate it, or set scheduler.metric to a train_* metric")
    autocast_dtype(settings.precision, default_device())
    if settings.restore_session:
        resolve_snapshot(settings.restore_session, "session.restore_session")
    kind = trial_kind(bound)
    if bound.grid is not None:
        check_grid(parts, bound.grid, config)
    if workers > 1:
        check_workers(parts, kind, workers)
    if kind is KnnTrial:
        check_knn_trial(parts, trial_knn_grid() or knn_grid_options())
    online = trial_knn()
    if online is not None:
        check_knn("knn.k", online.k, parts.dataset, parts.options, rows)
    state = [*parts.model.state_dict().values(), *parts.task.state_dict().values()]
    weights = sum(tensor.numel() * tensor.element_size() for tensor in state)
    return weights + sum(p.numel() * p.element_size() for p in trainable(parts.model, parts.task))
