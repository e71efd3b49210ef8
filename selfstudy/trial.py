"""One trial's state and files: its parts (`selfstudy.build`), step, epoch, selection and
checkpoints, and the self-description its folder holds (trial.json, operative_config.gin).

`Trial` knows nothing of Ray: the Ray Trainable (`ray_trainable.py`) and the in-process
runner of `-l` (`local.py`) both drive it, so both produce the same numbers.
One `run_epoch()` trains one epoch (`selfstudy.train`), then evaluates the valid and test splits.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
from pathlib import Path
from typing import Any

import gin
import numpy as np
import torch

import paths
from selfstudy import distributed
from selfstudy.build import Bound, Parts, bind, build, default_device, trainable
from selfstudy.checkpoint import (
    UnsafeSnapshot,
    first_difference,
    load_snapshot,
    resolve_snapshot,
    rng_state,
    save_snapshot,
    set_rng_state,
)
from selfstudy.data import DividedSplit, ResidentSplit
from selfstudy.data.budget import split_digest
from selfstudy.data.splits import evaluated_images
from selfstudy.durable import write_atomic
from selfstudy.errors import UserError
from selfstudy.folders import SNAPSHOT, checkpoint_number, checkpoints, write_json
from selfstudy.knn import check_knn, encode, knn_accuracies, trial_knn
from selfstudy.models.calibrate import calibrate_random_backbone
from selfstudy.notes import note, print_notes
from selfstudy.optim import build_optimizer, build_schedule, gradient_clip
from selfstudy.precision import autocast_dtype, weight_dtype
from selfstudy.selection import Selection, copy_weights
from selfstudy.settings import explain_nondeterminism, set_determinism
from selfstudy.train import Optimization, Prep, evaluate, train_epoch


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(paths.ROOT), "describe", "--always", "--dirty", "--abbrev=40"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def older_checkpoints(directory: Path) -> list[Path]:
    """The checkpoint folders beside `directory` that are older than it, oldest first."""
    number = checkpoint_number(directory)
    return [] if number is None else [p for p in checkpoints(directory.parent) if checkpoint_number(p) < number]


def memory_layout(device: torch.device) -> torch.memory_format:
    """Channels-last on a GPU (faster convolutions); on the CPU the default layout, which is
    faster there and exact: channels-last 3 x 3 convolutions on the CPU gave ResNet-9 gradients
    0.4% away from float64's, the default layout 0.001%."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


class Trial:
    """A trial in memory; `trial_dir` receives its self-description."""

    def __init__(self, config: dict[str, Any], trial_dir: Path | None = None, num_threads: int | None = None,
                 node_id: str | None = None, bound: Bound | None = None):
        """`node_id`: the Ray node running this trial (None in-process), recorded in `trial.json`;
        `bound`: `build.bind(config)`, when the caller has parsed the config already."""
        if num_threads:
            torch.set_num_threads(num_threads)
        self.config = config
        self.node_id = node_id
        bound = bound or bind(config)
        self.settings = bound.settings
        set_determinism(self.settings.deterministic)  # before anything here touches CUDA
        self.seed = bound.seed
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed)
        self.device = default_device()
        parts = build(bound, self.device)
        self.task, self.batch_size = parts.task, parts.batch_size
        layout, dtype = memory_layout(self.device), weight_dtype(self.settings.precision)
        self.model = parts.model.to(dtype=dtype, memory_format=layout)
        parts.task.to(dtype=dtype, memory_format=layout)  # its own encoders, if any
        self.prep = Prep(parts.augment, torch.tensor(parts.dataset.train.mean, device=self.device),
                         torch.tensor(parts.dataset.train.std, device=self.device),
                         torch.Generator(device=self.device).manual_seed(self.seed), parts.options.double_sample,
                         self.device, autocast_dtype(self.settings.precision, self.device), dtype)
        if self.model.calibrate_random:  # before training or encoding; draws no random number
            calibrate_random_backbone(self.model.backbone, parts.dataset, parts.options, self.device, self.batch_size,
                                      self.prep.autocast)
        if distributed.world()[1] > 1 and distributed.sync_batch_norm():  # whole-batch statistics, after calibrating
            keep = parts.task.own_batch_norm(parts.model)
            distributed.globalise_batch_norm(parts.model, keep)
            distributed.globalise_batch_norm(parts.task, keep)
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
        write_atomic(trial_dir / "operative_config.gin", gin.operative_config_str())
        self.provenance = {"config": self.config, "seed": self.seed, "git_commit": git_commit(),
                           "device": str(self.device), "torch": torch.__version__, "host": socket.gethostname(),
                           "node_id": self.node_id, "threads": torch.get_num_threads(), "pid": os.getpid(),
                           "labels": self.labels}
        self.trial_dir = trial_dir
        write_json(trial_dir / "trial.json", self.provenance)

    def setup_training(self, parts: Parts) -> None:
        """Load the splits onto the device; build the optimizer and the schedule."""
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.prep.amp_dtype == torch.float16)
        wanted = ("train", "valid") + (("test",) if self.settings.test_iters else ())
        self.splits: dict[str, ResidentSplit | DividedSplit]
        self.splits = parts.dataset.load(parts.options, self.device, wanted, extras=parts.task.needs, rows=parts.rows)
        optimizer = build_optimizer(trainable(self.model, self.task))
        steps = self.splits["train"].num_batches(self.batch_size, self.settings.train_iters, train=True)
        schedule = build_schedule(optimizer.defaults["lr"], steps, optimizer)
        self.opt = Optimization(optimizer, schedule, scaler, steps * schedule.num_epochs, gradient_clip())
        self.num_epochs = schedule.num_epochs
        self.test_at_end = bool(self.settings.test_iters) and self.settings.test_when == "best"
        self.knn = trial_knn()  # online kNN accuracy (knn.every), None: off
        if self.knn is not None:
            check_knn("knn.k", self.knn.k, parts.dataset, parts.options, parts.rows)
        self.num_classes = parts.dataset.num_classes

    @property
    def done(self) -> bool:
        return self.epoch >= self.num_epochs

    def run_epoch(self) -> dict[str, Any]:
        """Train one epoch, evaluate valid (and test); returns the epoch's metrics."""
        self.epoch += 1
        with explain_nondeterminism():
            batches = self.splits["train"].batches(self.batch_size, self.settings.train_iters,
                                                   shuffle=(self.seed, self.epoch))
            metrics, self.step = train_epoch(self.model, self.task, batches, self.prep, self.opt, self.step)
            if not distributed.sync_batch_norm():  # each worker's running statistics its own: rank 0's
                distributed.broadcast_buffers((self.model, self.task))
            if self.settings.valid_iters:
                metrics.update(self.evaluate("valid", self.settings.valid_iters), valid_labels=evaluated_images(
                    len(self.splits["valid"]), self.batch_size, self.settings.valid_iters))
            if self.settings.test_iters and not self.test_at_end:
                metrics.update(self.evaluate("test", self.settings.test_iters))
            if self.knn is not None and self.knn.due(self.epoch, self.done):
                metrics["valid_knn_accuracy"] = self.knn_accuracy()
        diverged = [name for name, value in metrics.items() if name.endswith("loss") and not np.isfinite(value)]
        if diverged:
            raise UserError(f"training diverged at epoch {self.epoch} ({diverged[0]} {metrics[diverged[0]]}): "
                            "lower optimizer.lr or scheduler.target_lrs")
        accuracy = metrics.get("valid_accuracy", metrics.get("train_accuracy", 0.0))
        self.best_accuracy = max(self.best_accuracy, accuracy)
        metrics.update(mean_accuracy=accuracy, best_accuracy=self.best_accuracy, epoch=self.epoch,
                       lr=self.opt.schedule.lr(self.step), done=self.done, completed=self.done)
        self.opt.schedule.observe(metrics)
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

    def knn_accuracy(self) -> float:
        """The weighted kNN accuracy (`knn.*`, `selfstudy.knn`) of the backbone's features: the
        train split's plain images the memory, the whole valid split the queries."""
        memory, queries = (encode(self.model.backbone, self.splits[split], self.batch_size, self.prep.autocast)
                           for split in ("train", "valid"))
        return knn_accuracies(memory, queries, self.num_classes, [(self.knn.k, self.knn.temperature)])[0]

    def evaluate(self, split: str, iters: int) -> dict[str, float]:
        return evaluate(self.model, self.task, self.splits[split].batches(self.batch_size, iters), self.prep, split)

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "task": self.task.state_dict(),
                "optimizer": self.opt.optimizer.state_dict(), "step": self.step,
                "epoch": self.epoch, "best_accuracy": self.best_accuracy,
                "scaler": self.opt.scaler.state_dict(), "selection": self.selection.state_dict(),
                "schedule": self.opt.schedule.state_dict(),
                "rng": rng_state(self.prep.generator)}

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
            self.opt.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            reasons = "; ".join(line.strip() for line in str(err).splitlines() if line.strip())
            raise UserError(f"snapshot does not fit this trial's model or optimizer: {reasons}") from None
        self.step, self.epoch, self.best_accuracy = state["step"], state["epoch"], state["best_accuracy"]
        if state.get("scaler"):
            self.opt.scaler.load_state_dict(state["scaler"])
        if state.get("selection"):
            self.selection.load_state_dict(state["selection"])
        if state.get("schedule"):
            self.opt.schedule.load_state_dict(state["schedule"])
        set_rng_state(state["rng"], self.prep.generator)

    def save(self, directory: Path) -> Path:
        return save_snapshot(directory, self.state_dict())

    def restore(self, directory: Path) -> None:
        """Continue from a checkpoint folder, or, when its snapshot is damaged (a full disk, a
        crash of the disk), from the newest older one of the trial that loads; from the start when
        none does. Each says so in a note; trial.json records where the trial continued from."""
        passed_over: list[str] = []
        used = None
        for candidate in [directory, *reversed(older_checkpoints(directory))]:
            try:
                state = load_snapshot(candidate / SNAPSHOT, "checkpoint")
            except UnsafeSnapshot:
                raise
            except UserError:  # damaged
                passed_over.append(candidate.name)
                continue
            self.load_state_dict(state)
            used = candidate.name
            break
        if passed_over:
            continued = f"from {used} (epoch {self.epoch})" if used else "again from its first epoch"
            note(f"{directory.parent.name} continues {continued}: its checkpoint(s) {', '.join(passed_over)} are "
                 "damaged")
        print_notes()
        if self.trial_dir is not None:
            self.provenance["restored_from"] = {"checkpoint": used, "epoch": self.epoch, "passed_over": passed_over}
            write_json(self.trial_dir / "trial.json", self.provenance)

    def close(self) -> None:
        """Stop background reads of divided splits."""
        for split in self.splits.values():
            split.close()
