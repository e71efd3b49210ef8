"""The trial of a probe grid (see `selfstudy.probe`): encode once, train every head per epoch.

`GridTrial` builds what a `Trial` builds (gin, seed, model, augmentation), then encodes the
splits with the frozen backbone instead of loading an optimizer for it; `run_epoch`,
`state_dict` and `load_state_dict` are its own, the rest (checkpoint files, provenance) is
`Trial`'s.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfstudy import notes
from selfstudy.build import Parts
from selfstudy.config import binding_keys
from selfstudy.data import DividedSplit, ResidentSplit
from selfstudy.data.budget import split_digest
from selfstudy.data.splits import evaluated_images, num_batches
from selfstudy.errors import UserError
from selfstudy.folders import PROBE_GRID_FILE, write_json
from selfstudy.probe import GridOptions, HeadState, budget_rows, grid_heads, heads_logits, per_head_loss
from selfstudy.selection import Selection
from selfstudy.trial import Trial


def check_grid(parts: Parts, grid: GridOptions, config: dict[str, Any]) -> None:
    """A `UserError` if the grid does not fit its trial's model, task, settings or budgets. `config`: the trial's, whose own bindings (a sweep's, -p) a grid axis
    must not silently replace (a gin file's defaults it may)."""
    model = parts.model
    if model.dense_pred:
        raise UserError("probe_grid.* trains linear heads on each image's class: set Wrapper.dense_pred = False and "
                        "use a classification set")
    if not model.always_frozen or model.run_selfsup:
        raise UserError("probe_grid.* trains linear probes on a frozen backbone: set Wrapper.finetune_classifier = "
                        "False (and leave Wrapper.run_selfsup False)")
    if not isinstance(model.classifier, torch.nn.Linear) or len(model.more_heads):
        raise UserError("probe_grid.* trains linear heads, one output per class: leave Wrapper.classifier = 'linear' "
                        "and Wrapper.out_classes a single number")
    if parts.settings.restore_session:
        raise UserError("session.restore_session continues a trial; a probe grid starts its heads afresh: drop it "
                        "(Wrapper.pretrained gives the backbone)")
    own = {**binding_keys(config), **(config.get("gin_params") or {})}
    for axis, setting in (("lrs", "scheduler.scale"), ("weight_decays", "optimizer.weight_decay")):
        if getattr(grid, axis) is not None and setting in own:
            raise UserError(f"{setting} and probe_grid.{axis} both set each head's "
                            f"{'learning rates' if axis == 'lrs' else 'weight decay'}: keep one of them")
    augment = parts.augment
    evaluated = [split for split in ("valid", "test") if augment.applies_to(split)]
    if augment.changes_images and evaluated:
        raise UserError(f"augment.do_augment augments the {' and '.join(evaluated)} split, but a probe grid evaluates "
                        "the plain images: leave only 'train' in augment.do_augment")
    augments = augment.applies_to("train") and augment.changes_images
    if grid.views and not augments:
        raise UserError(f"probe_grid.views = {grid.views} encodes augmented views, but augment.* leaves the training "
                        "images as they are: set probe_grid.views = 0, or turn on an augmentation (e.g. augment.crop)")
    if not grid.views and augments:
        notes.note("probe_grid.views = 0: the heads train on features of the plain training images (augment.* is "
                    "not applied); set probe_grid.views to encode augmented views")
    grid_heads(grid, parts.dataset, parts.options)  # refuses budgets and learning rates that cannot be



@dataclass
class Group:
    """The heads of one label budget: they share its batches and its feature standardisation."""

    rows: torch.Tensor  # positions in the encoded training split
    valid: torch.Tensor  # positions in the encoded validation pool: the budget's validation split
    norm: torch.nn.Module  # the Wrapper's feature_norm, one per group (its statistics follow the group's batches)
    heads: list[int]
    steps_per_epoch: int


class GridTrial(Trial):
    """A trial that trains a probe grid."""

    def setup_training(self, parts: Parts) -> None:
        """Encode the splits (every training image, of every budget) and build each head."""
        self.grid = parts.grid
        check_grid(parts, self.grid, self.config)
        self.heads = grid_heads(self.grid, parts.dataset, parts.options)
        self.test_at_end = bool(self.settings.test_iters) and self.settings.test_when == "best"
        wanted = ("train",) + ("valid",) * bool(self.settings.valid_iters) + ("test",) * bool(self.settings.test_iters)
        everything = dataclasses.replace(parts.options, semisupervised=None, valid_fraction=None)
        all_rows = parts.dataset.split_rows(everything)
        splits = parts.dataset.load(everything, self.device, wanted, rows=all_rows)
        self.model.eval()
        try:
            encoded = {name: self.encode(split) for name, split in splits.items() if name != "train"}
            views = [self.encode(splits["train"], augment=bool(self.grid.views)) for _ in range(max(self.grid.views, 1))]
        finally:
            for split in splits.values():
                split.close()
        self.train_views = torch.stack([features for features, _ in views])  # V x N x D
        self.features = {name: features for name, (features, _) in encoded.items()}
        self.targets = {"train": views[0][1], **{name: targets for name, (_, targets) in encoded.items()}}
        self.groups: list[Group] = []
        self.budget_labels: dict[str, dict[str, object]] = {}  # each budget's split_digest, for probe_grid.json
        for budget in dict.fromkeys(head.budget for head in self.heads):
            chosen = budget_rows(parts.dataset, parts.options, budget)
            self.budget_labels[str(budget)] = split_digest(chosen, parts.options.subset_seed)
            rows = {split: np.searchsorted(all_rows[split], chosen[split]) for split in ("train", "valid")}
            steps = num_batches(len(rows["train"]), self.batch_size, self.settings.train_iters, train=True)
            members = [k for k, head in enumerate(self.heads) if head.budget == budget]
            norm = copy.deepcopy(self.model.feature_norm)
            self.groups.append(Group(*(torch.from_numpy(rows[split]).to(self.device) for split in ("train", "valid")),
                                     norm, members, steps))
        self.labels = {"per budget": self.budget_labels}  # trial.json: what each budget's heads saw
        group_of = {k: group for group in self.groups for k in group.heads}
        self.states = [HeadState(head, self.model.classifier, group_of[k].steps_per_epoch,
                                 Selection(self.selection.metric, self.selection.mode))
                       for k, head in enumerate(self.heads)]
        self.num_epochs = self.states[0].schedule.num_epochs  # every head's schedule ends at the last milestone

    @torch.no_grad()
    def encode(self, split: ResidentSplit | DividedSplit, augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features (N x D, float32) and targets (N) of a split's images, in order;
        each image augmented once with `augment`."""
        features, targets = [], []
        for batch in split.batches(self.batch_size, -1):
            if augment:
                batch = self.prep.augment.batch(batch, self.prep.mean, self.prep.std, self.prep.generator)
            with self.prep.autocast():
                features.append(self.model.backbone(batch.images).float())
            targets.append(batch.targets)
        return torch.cat(features), torch.cat(targets)

    def describe(self, trial_dir: Path) -> None:
        super().describe(trial_dir)
        write_json(trial_dir / PROBE_GRID_FILE, {"heads": [
            {"head": k, "bindings": head.bindings(), "peak_lr": head.peak_lr} for k, head in enumerate(self.heads)],
            "labels": self.budget_labels})

    def run_epoch(self) -> dict[str, Any]:
        """Train every head one epoch on its budget's batches, then evaluate every head. At the
        top level: the metrics of the head whose best epoch is best so far (`best_head`)."""
        self.epoch += 1
        results: dict[int, dict[str, Any]] = {}
        view = self.train_views[(self.epoch - 1) % len(self.train_views)]
        for group in self.groups:
            results.update(self.train_group(group, view))
            for split, iters in (("valid", self.settings.valid_iters), ("test", self.settings.test_iters)):
                if iters:
                    for k, metrics in self.evaluate_group(group, split, iters).items():
                        results[k].update(metrics)
        self.step = self.epoch * max(group.steps_per_epoch for group in self.groups)  # of the longest budget
        for k, state in enumerate(self.states):
            results[k] = self.judge(state, results[k])
        live = [k for k, state in enumerate(self.states) if not state.diverged]
        if not live:
            raise UserError(f"every probe head diverged by epoch {self.epoch}; head 0 {self.states[0].diverged}")
        best = self.best_head()
        self.best_accuracy = self.states[best].best_accuracy
        return {**results[best], "best_head": best, "epoch": self.epoch, "done": self.done, "completed": self.done,
                "heads": {str(k): metrics for k, metrics in results.items()}}

    def best_head(self) -> int:
        """The head (not diverged) whose best epoch is the best so far by the trial's metric; 0 before any."""
        sign = 1 if self.selection.mode == "max" else -1
        judged = [k for k, state in enumerate(self.states) if state.selection.value is not None and not state.diverged]
        return max(judged, key=lambda k: sign * self.states[k].selection.value, default=0)

    def judge(self, state: HeadState, metrics: dict[str, Any]) -> dict[str, Any]:
        """A head's epoch report, as its probe trial's: selection, best accuracy and (with test_when
        'best') the best epoch's test metrics at the end only. A diverged head stops, with why."""
        if state.diverged:
            return {"diverged": state.diverged}
        checked = [name for name in metrics if not (self.test_at_end and name.startswith("test_"))]  # as reported
        diverged = next((name for name in checked if name.endswith("loss") and not math.isfinite(metrics[name])), None)
        if diverged:  # its probe trial stops here, reporting nothing of this epoch
            fix = (f"lower its peak learning rate {state.head.peak_lr}" if state.head.peak_lr
                   else "lower optimizer.lr or scheduler.target_lrs")
            state.diverged = f"diverged at epoch {self.epoch} ({diverged} {metrics[diverged]}): {fix}"
            return {"diverged": state.diverged}
        accuracy = metrics.get("valid_accuracy", metrics["train_accuracy"])
        state.best_accuracy = max(state.best_accuracy, accuracy)
        report = {**metrics, "mean_accuracy": accuracy, "best_accuracy": state.best_accuracy, "epoch": self.epoch}
        state.schedule.observe(report)
        state.selection.update(report, self.epoch)  # sees every epoch's test metrics, keeps the best epoch's
        selected = state.selection.report()
        if self.test_at_end:  # the test split is measured every epoch here, but told as at the end
            report = {name: value for name, value in report.items() if not name.startswith("test_")}
            if self.done:
                report.update(state.selection.test)
            else:
                selected.pop("test_at_best", None)
        return {**report, **selected}

    def train_group(self, group: Group, view: torch.Tensor) -> dict[int, dict[str, Any]]:
        """One epoch of the group's heads over its budget's batches (the probe trial's order)."""
        states = [self.states[k] for k in group.heads]
        live = [state for state in states if not state.diverged]
        split = ResidentSplit(view[group.rows], self.targets["train"][group.rows])
        group.norm.train()
        loss_sums = torch.zeros(len(states), device=self.device)
        correct = torch.zeros(len(states), device=self.device)
        count = 0
        step = (self.epoch - 1) * group.steps_per_epoch
        for batch in split.batches(self.batch_size, self.settings.train_iters, shuffle=(self.seed, self.epoch)):
            features = group.norm(batch.images)  # B x D
            for state in live:
                state.optimizer.param_groups[0]["lr"] = state.schedule.lr(step)
            logits = heads_logits(features, states)  # K x B x C
            losses = per_head_loss(logits, batch.targets)  # K
            for state in live:
                state.optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            for state in live:
                state.optimizer.step()
            step += 1
            n = len(batch.targets)
            loss_sums += losses.detach() * n
            correct += (logits.detach().argmax(dim=2) == batch.targets).sum(dim=1)
            count += n
        lrs = [state.schedule.lr(step) for state in states]
        return {k: {"train_loss": float(loss) / count, "train_accuracy": float(hits) / count, "lr": lr}
                for k, loss, hits, lr in zip(group.heads, loss_sums.tolist(), correct.tolist(), lrs)}

    @torch.no_grad()
    def evaluate_group(self, group: Group, split: str, iters: int) -> dict[int, dict[str, float]]:
        """Loss and accuracy of the group's heads over the batches the probe trial evaluates
        (a pass, `iters` batches, wrapping around as its split does)."""
        states = [self.states[k] for k in group.heads]
        group.norm.eval()
        loss_sums = torch.zeros(len(states), device=self.device, dtype=torch.float64)
        correct = torch.zeros(len(states), device=self.device)
        count = 0
        chosen = group.valid if split == "valid" else slice(None)  # the budget's validation split
        for batch in ResidentSplit(self.features[split][chosen], self.targets[split][chosen]).batches(self.batch_size,
                                                                                                     iters):
            logits = heads_logits(group.norm(batch.images), states)
            loss_sums += per_head_loss(logits, batch.targets).double() * len(batch.targets)
            correct += (logits.argmax(dim=2) == batch.targets).sum(dim=1)
            count += len(batch.targets)
        labels = {"valid_labels": evaluated_images(len(group.valid), self.batch_size, iters)} if split == "valid" else {}
        return {k: {f"{split}_loss": float(loss) / max(count, 1), f"{split}_accuracy": float(hits) / max(count, 1),
                    **labels} for k, loss, hits in zip(group.heads, loss_sums.tolist(), correct.tolist())}

    def best_model_state(self) -> dict[str, torch.Tensor]:
        """The Wrapper's weights with the classifier of the best head (`best_head`) and its budget's
        feature statistics: what `Wrapper.pretrained` and misc/export_backbone.py take."""
        best = self.best_head()
        group = next(group for group in self.groups if best in group.heads)
        state = {key: value.detach() for key, value in self.model.state_dict().items()}
        state.update({"classifier.weight": self.states[best].weight.detach(),
                      "classifier.bias": self.states[best].bias.detach()})
        state.update({f"feature_norm.{key}": value for key, value in group.norm.state_dict().items()})
        return state

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.best_model_state(), "best_head": self.best_head(), "probe_grid": {
                    "heads": [state.state_dict() for state in self.states],
                    "norms": [group.norm.state_dict() for group in self.groups]},
                "epoch": self.epoch, "step": self.step, "best_accuracy": self.best_accuracy}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        grid = state.get("probe_grid")
        if grid is None or len(grid["heads"]) != len(self.states) or len(grid["norms"]) != len(self.groups):
            raise UserError("snapshot does not fit this probe grid (another grid, or not a probe grid's): start the "
                            "trial afresh")
        for head_state, saved in zip(self.states, grid["heads"]):
            head_state.load_state_dict(saved)
        for group, saved in zip(self.groups, grid["norms"]):
            group.norm.load_state_dict(saved)
        self.epoch, self.step, self.best_accuracy = state["epoch"], state["step"], state["best_accuracy"]

    def close(self) -> None:
        """Nothing runs in the background: the splits closed after encoding."""
