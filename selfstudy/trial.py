"""One trial: gin config -> dataset, augmentation, model, task, optimizer -> epochs.

`Trial` knows nothing of Ray: the Ray Trainable (`session.py`) and the in-process
runner of `-l` (`local.py`) both drive it, so both produce the same numbers.
One `run_epoch()` trains one epoch, then evaluates the valid and test splits.
"""

from __future__ import annotations

import dataclasses
import os
import random
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gin
import numpy as np
import torch

import paths
from selfstudy.augment import Augment, augment_options, for_images
from selfstudy.checkpoint import (first_difference, load_snapshot, resolve_snapshot, rng_state, save_snapshot,
                                  set_rng_state)
from selfstudy.config import bind_trial
from selfstudy.data import (Batch, DatasetFiles, DividedSplit, ResidentSplit, batch_size_option, build_dataset,
                            data_options)
from selfstudy.data.base import DataOptions, split_digest
from selfstudy.data.splits import PIXEL_FIELDS, evaluated_images, num_batches
from selfstudy.errors import UserError
from selfstudy.folders import SNAPSHOT, write_json
from selfstudy.models import Wrapper, build_model
from selfstudy.models.calibrate import calibrate_random_backbone
from selfstudy.legacy import print_notes
from selfstudy.optim import PlateauSchedule, Schedule, build_optimizer, build_schedule, check_optimizer
from selfstudy.precision import autocast_dtype
from selfstudy.selection import Selection, copy_weights
from selfstudy.settings import SessionSettings, explain_nondeterminism, session_settings, set_determinism
from selfstudy.tasks import Task, build_task


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    rows: dict[str, np.ndarray]  # rows of the training file in the train and valid splits (see split_rows)


def build_parts(config: dict[str, Any], device: torch.device) -> Parts:
    """Parse the trial's gin config and build its parts; the model is created on `device`."""
    from selfstudy.probe import check_grid_task

    bind_trial(config)
    settings = session_settings()
    dataset = build_dataset(settings.dataset)
    options = data_options()
    if options.subset_seed is None:  # each seed labels its own images
        options = dataclasses.replace(options, subset_seed=trial_seed(config))
    augment = for_images(augment_options(), dataset.resolution(options), dataset.train.color_space)
    task = build_task(settings.task)
    with torch.device(device):
        classes = dataset.num_classes + (1 if dataset.train.target_shape else 0)  # dense maps: 0 is background
        model = build_model(dataset.channels, dataset.resolution(options), classes)
        check_heads(model, task)
        check_grid_task(task)
        task.setup(model, dataset, options)
    pixel_fields = ("targets",) * bool(dataset.train.target_shape) + tuple(n for n in task.needs if n in PIXEL_FIELDS)
    augment.check(pixel_fields)
    if options.double_sample and augment.transform_targets:
        raise UserError("BaseDataset.double_sample and augment.transform_targets cannot be combined: two views "
                        "would need two target maps; turn one of them off")
    batch_size = batch_size_option()
    rows = dataset.split_rows(options)
    dataset.check(options, batch_size)
    if options.semisupervised == 1 and isinstance(model.feature_norm, torch.nn.BatchNorm1d):
        raise UserError("BaseDataset.semisupervised = 1: the probe standardises its features over each batch, which "
                        "takes 2 or more images: give a larger budget")
    return Parts(settings, dataset, options, batch_size, augment, task, model, rows)


def trial_seed(config: dict[str, Any]) -> int:
    """The trial's seed (the Ray config's `seed`, 0 by default): a whole number from 0 to 2**32 - 1."""
    seed = config.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 32:
        raise UserError(f"seed = {seed!r}: a trial's seed is a whole number from 0 to 2**32 - 1 "
                        "(e.g. 'seed': tune.grid_search([0, 1, 2]) in the search_space)")
    return int(seed)


def check_heads(model: Wrapper, task: Task) -> None:
    """The task must know what to train each of the model's heads on."""
    if len(model.more_heads) > len(task.more_labels):
        labels = ("class", *task.more_labels)
        raise UserError(f"Wrapper.out_classes asks for {1 + len(model.more_heads)} heads, but {type(task).__name__} "
                        f"trains {len(labels)} ({', '.join(labels)}): give Wrapper.out_classes at most {len(labels)} "
                        "numbers")


def check_trial(config: dict[str, Any]) -> None:
    """Raise the `UserError` a trial with this config would meet at setup, without training.

    The model is built on the meta device (shapes only); the dataset's files are checked
    but not loaded; the label budget and schedule are validated.
    """
    trial_seed(config)
    parts = build_parts(config, torch.device("meta"))
    parts.dataset.verify()
    check_optimizer(trainable(parts.model, parts.task))
    rows, settings = parts.rows, parts.settings
    if settings.valid_iters and not len(rows["valid"]):
        raise UserError(f"{parts.dataset.name} has no validation images (BaseDataset.num_valid = "
                        f"{parts.options.num_valid}), but session.valid_iters = {settings.valid_iters} evaluates them: "
                        "set BaseDataset.num_valid > 0, or session.valid_iters = 0 to select on training accuracy")
    schedule = build_schedule(1.0, num_batches(len(rows["train"]), parts.batch_size, settings.train_iters, train=True))
    if isinstance(schedule, PlateauSchedule) and schedule.metric.startswith("valid_") and not settings.valid_iters:
        raise UserError(f"scheduler.metric = {schedule.metric!r} needs the validation split, but session.valid_iters = "
                        "0: evaluate it, or set scheduler.metric to a train_* metric")
    autocast_dtype(parts.settings.precision, default_device())
    if parts.settings.restore_session:
        resolve_snapshot(parts.settings.restore_session, "session.restore_session")
    from selfstudy.probe import check_grid

    check_grid(parts, config)


def open_trial(config: dict[str, Any], trial_dir: Path | None = None, num_threads: int | None = None,
               node_id: str | None = None) -> "Trial":
    """The trial `config` describes: a `Trial`, or a probe grid's (`selfstudy.probe`) when it binds probe_grid.*."""
    from selfstudy.probe import trial_grid
    from selfstudy.probe_trial import GridTrial

    bind_trial(config)
    kind = GridTrial if trial_grid() is not None else Trial
    return kind(config, trial_dir, num_threads=num_threads, node_id=node_id)


def trainable(model: Wrapper, task: Task) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates: the model's and the task's heads, unless frozen."""
    return [p for module in (model, task) for p in module.parameters() if p.requires_grad]


class MetricSums:
    """Per-split running sums of batch metrics; one sync at the end. Scalar metrics are weighted
    by batch size and reported as means; count metrics (tensors of one or more dimensions, such
    as a confusion matrix) are summed as they are and turned into scalars by the task's
    `epoch_metrics` (e.g. mean IoU over the whole split)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, metrics: dict[str, torch.Tensor], n: int) -> None:
        for name, value in metrics.items():
            value = value.detach()
            self.sums[name] = self.sums.get(name, 0) + (value.float() * n if value.ndim == 0 else value)
        self.count += n

    def means(self, split: str, task: Task | None = None) -> dict[str, float]:
        means = {name: float(total) / max(self.count, 1) for name, total in self.sums.items() if total.ndim == 0}
        counts = {name: total for name, total in self.sums.items() if total.ndim > 0}
        if task is not None and counts:
            means.update({name: float(value) for name, value in task.epoch_metrics(counts).items()})
        return {f"{split}_{name}": value for name, value in means.items()}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(paths.ROOT), "describe", "--always", "--dirty", "--abbrev=40"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Trial:
    """A trial in memory; `trial_dir` receives its self-description."""

    def __init__(self, config: dict[str, Any], trial_dir: Path | None = None, num_threads: int | None = None,
                 node_id: str | None = None):
        """`node_id`: the Ray node running this trial (None in-process), recorded in `trial.json`."""
        if num_threads:
            torch.set_num_threads(num_threads)
        self.config = config
        self.node_id = node_id
        bind_trial(config)
        set_determinism(session_settings().deterministic)  # before anything here touches CUDA
        self.seed = trial_seed(config)
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)
        self.device = default_device()
        parts = build_parts(config, self.device)
        self.settings, self.augment, self.task, self.batch_size = parts.settings, parts.augment, parts.task, parts.batch_size
        self.double_sample = parts.options.double_sample
        self.model = parts.model.to(memory_format=torch.channels_last)
        parts.task.to(memory_format=torch.channels_last)  # its own encoders, if any
        self.amp_dtype = autocast_dtype(self.settings.precision, self.device)
        self.mean = torch.tensor(parts.dataset.train.mean, device=self.device)
        self.std = torch.tensor(parts.dataset.train.std, device=self.device)
        self.device_generator = torch.Generator(device=self.device).manual_seed(self.seed)
        if self.model.calibrate_random:  # before training or encoding; draws no random number
            calibrate_random_backbone(self.model.backbone, parts.dataset, parts.options, self.device, self.batch_size,
                                      self.autocast)
        self.step = 0
        self.epoch = 0
        self.best_accuracy = 0.0
        self.selection = Selection(config.get("metric", "mean_accuracy"), config.get("mode", "max"))
        self.labels = split_digest(parts.rows, parts.options.subset_seed)
        self.setup_training(parts)
        if self.settings.restore_session:
            path = resolve_snapshot(self.settings.restore_session, "session.restore_session")
            self.load_state_dict(load_snapshot(path, "session.restore_session"))
        self.trial_dir: Path | None = None
        if trial_dir is not None:
            self.describe(trial_dir)
        print_notes()

    def describe(self, trial_dir: Path) -> None:
        """Write the operative gin config and the trial's provenance into its directory."""
        trial_dir.mkdir(parents=True, exist_ok=True)
        (trial_dir / "operative_config.gin").write_text(gin.operative_config_str())
        self.provenance = {"config": self.config, "seed": self.seed, "git_commit": git_commit(),
                           "device": str(self.device), "torch": torch.__version__, "host": socket.gethostname(),
                           "node_id": self.node_id, "threads": torch.get_num_threads(), "pid": os.getpid(),
                           "labels": self.labels}
        self.trial_dir = trial_dir
        write_json(trial_dir / "trial.json", self.provenance)

    def setup_training(self, parts: Parts) -> None:
        """Load the splits onto the device; build the optimizer and the schedule."""
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        wanted = ("train", "valid") + (("test",) if self.settings.test_iters else ())
        self.splits: dict[str, ResidentSplit | DividedSplit]
        self.splits = parts.dataset.load(parts.options, self.device, wanted, extras=parts.task.needs, rows=parts.rows)
        self.optimizer = build_optimizer(trainable(self.model, self.task))
        steps = self.splits["train"].num_batches(self.batch_size, self.settings.train_iters, train=True)
        self.schedule: Schedule | PlateauSchedule = build_schedule(self.optimizer.defaults["lr"], steps, self.optimizer)
        self.total_steps = steps * self.schedule.num_epochs
        self.num_epochs = self.schedule.num_epochs
        self.test_at_end = bool(self.settings.test_iters) and self.settings.test_when == "best"

    @property
    def done(self) -> bool:
        return self.epoch >= self.num_epochs

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, evaluate valid (and test); returns the epoch's metrics."""
        self.epoch += 1
        with explain_nondeterminism():
            metrics = self.train_epoch()
            if self.settings.valid_iters:
                metrics.update(self.evaluate("valid", self.settings.valid_iters), valid_labels=evaluated_images(
                    len(self.splits["valid"]), self.batch_size, self.settings.valid_iters))
            if self.settings.test_iters and not self.test_at_end:
                metrics.update(self.evaluate("test", self.settings.test_iters))
        diverged = [name for name, value in metrics.items() if name.endswith("loss") and not np.isfinite(value)]
        if diverged:
            raise UserError(f"training diverged at epoch {self.epoch} ({diverged[0]} {metrics[diverged[0]]}): "
                            "lower optimizer.lr or scheduler.target_lrs")
        accuracy = metrics.get("valid_accuracy", metrics.get("train_accuracy", 0.0))
        self.best_accuracy = max(self.best_accuracy, accuracy)
        metrics.update(mean_accuracy=accuracy, best_accuracy=self.best_accuracy, epoch=self.epoch,
                       lr=self.schedule.lr(self.step), done=self.done, completed=self.done)
        self.schedule.observe(metrics)
        if self.selection.update(metrics, self.epoch) and self.test_at_end:
            self.selection.weights = copy_weights(self.model, self.task)
        if self.done and self.test_at_end:
            with explain_nondeterminism():
                metrics.update(self.test_best())
        metrics.update(self.selection.report())
        return metrics

    def test_best(self) -> dict[str, float]:
        """Test the weights of the best validation epoch (then put the last epoch's back)."""
        current = copy_weights(self.model, self.task)
        best = self.selection.weights or current
        self.model.load_state_dict(best["0"])
        self.task.load_state_dict(best["1"])
        self.selection.test = self.evaluate("test", self.settings.test_iters)
        self.model.load_state_dict(current["0"])
        self.task.load_state_dict(current["1"])
        return self.selection.test

    def autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def prepare(self, batch: Batch, split: str) -> Batch:
        """The batch as the task sees it: augmented if the split is, with its second view if asked."""
        if self.augment.applies_to(split):
            return self.augment.batch(batch, self.mean, self.std, self.device_generator, self.double_sample)
        return batch._replace(view2=batch.images) if self.double_sample else batch

    def train_epoch(self) -> dict[str, float]:
        self.model.train()
        self.task.train()
        sums = MetricSums()
        split = self.splits["train"]
        for batch in split.batches(self.batch_size, self.settings.train_iters, shuffle=(self.seed, self.epoch)):
            batch = self.prepare(batch, "train")
            self.model.set_step(self.step)
            for group in self.optimizer.param_groups:
                group["lr"] = self.schedule.lr(self.step)
            with self.autocast():
                loss, metrics = self.task.loss(self.model, batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.task.after_step(self.model, self.step, self.total_steps)
            self.step += 1
            sums.add(metrics, len(batch.targets))
        return sums.means("train", self.task)

    @torch.no_grad()
    def evaluate(self, split_name: str, iters: int) -> dict[str, float]:
        self.model.eval()
        self.task.eval()
        sums = MetricSums()
        for batch in self.splits[split_name].batches(self.batch_size, iters):
            batch = self.prepare(batch, split_name)
            with self.autocast():
                _, metrics = self.task.loss(self.model, batch)
            sums.add(metrics, len(batch.targets))
        return sums.means(split_name, self.task)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "task": self.task.state_dict(),
                "optimizer": self.optimizer.state_dict(), "step": self.step,
                "epoch": self.epoch, "best_accuracy": self.best_accuracy,
                "scaler": self.scaler.state_dict(), "selection": self.selection.state_dict(),
                "schedule": self.schedule.state_dict(),
                "rng": rng_state(self.device_generator)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for part, own in (("model", self.model), ("task", self.task)):
            difference = first_difference(state.get(part, {}), own.state_dict())
            if difference:
                raise UserError(f"snapshot does not fit this trial's {part}: {difference[1]}; give the trial the "
                                "settings the snapshot was trained with (init_resnet.choice, ResNet.*, Wrapper.*, the "
                                "task's)")
        try:
            self.model.load_state_dict(state["model"])
            self.task.load_state_dict(state.get("task", {}))
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            reasons = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
            raise UserError(f"snapshot does not fit this trial's model or optimizer: {reasons}") from None
        self.step, self.epoch, self.best_accuracy = state["step"], state["epoch"], state["best_accuracy"]
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if state.get("selection"):
            self.selection.load_state_dict(state["selection"])
        if state.get("schedule"):
            self.schedule.load_state_dict(state["schedule"])
        set_rng_state(state["rng"], self.device_generator)

    def save(self, directory: Path) -> Path:
        return save_snapshot(directory, self.state_dict())

    def restore(self, directory: Path) -> None:
        """Continue from a checkpoint folder; trial.json records which one and its epoch."""
        self.load_state_dict(load_snapshot(directory / SNAPSHOT, "checkpoint"))
        if self.trial_dir is not None:
            self.provenance["restored_from"] = {"checkpoint": directory.name, "epoch": self.epoch}
            write_json(self.trial_dir / "trial.json", self.provenance)

    def close(self) -> None:
        """Stop background reads of divided splits."""
        for split in self.splits.values():
            split.close()
