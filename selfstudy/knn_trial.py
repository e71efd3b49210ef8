"""The trial of a kNN grid (`knn_grid.*`, see `selfstudy.knn`): a frozen backbone's features
encoded once, every (k, T) scored on them, the best on validation chosen.

`KnnTrial` builds what a `Trial` builds (gin, seed, model: `Wrapper.pretrained`, or a random
backbone, its BatchNorm calibrated with `Wrapper.finetune_classifier = False`), then encodes the
trial's splits with the backbone in eval mode on the plain images: its labelled training
split (`BaseDataset.semisupervised`: the budget's class-balanced images) is the memory, the
whole validation and test splits the queries. Its one epoch trains nothing; it reports what a
classify or probe trial reports of the chosen point, the one of the highest validation accuracy
(the first given on a tie): `valid_accuracy`, `mean_accuracy`, `best_accuracy`, `test_accuracy`
and `test_at_best` (with a test split), `valid_labels`, and `knn_k`, `knn_temperature`. So it
is one row in `util.vis` like any trial of a label-budget study. Every point's validation (and
test) accuracy is in the trial folder's `knn_grid.json`. The Ray config's `metric` must be one
it reports (`mean_accuracy`, the default, or `valid_accuracy`).
"""

from __future__ import annotations

from typing import Any

from selfstudy.build import Parts
from selfstudy.errors import UserError
from selfstudy.folders import write_json
from selfstudy.knn import (Encoded, KnnGrid, check_knn, encode, knn_accuracies, knn_grid_options,
                           trial_knn_grid)
from selfstudy.trial import Trial

KNN_GRID_FILE = "knn_grid.json"  # in the trial folder: every point's accuracies and the one chosen


def check_knn_trial(parts: Parts, grid: KnnGrid) -> None:
    """A `UserError` if the grid does not fit its trial's dataset, budget or settings."""
    if parts.settings.restore_session:
        raise UserError("session.restore_session continues a trial; a kNN trial trains nothing: drop it "
                        "(Wrapper.pretrained gives the backbone)")
    check_knn("knn_grid.k", max(grid.k), parts.dataset, parts.options, parts.rows)


class KnnTrial(Trial):
    """A trial that scores a kNN grid on its frozen backbone in one epoch."""

    def setup_training(self, parts: Parts) -> None:
        """Encode the trial's train, valid (and test) splits."""
        grid = trial_knn_grid() or knn_grid_options()  # opened directly: DINO's k and T
        check_knn_trial(parts, grid)
        self.points = grid.points()
        self.num_classes = parts.dataset.num_classes
        self.num_epochs, self.test_at_end = 1, False
        wanted = ("train", "valid") + ("test",) * bool(self.settings.test_iters)
        splits = parts.dataset.load(parts.options, self.device, wanted, rows=parts.rows)
        self.model.eval()
        try:
            self.encoded: dict[str, Encoded] = {name: encode(self.model.backbone, split, self.batch_size,
                                                             self.prep.autocast) for name, split in splits.items()}
        finally:
            for split in splits.values():
                split.close()
        self.scores: list[dict[str, Any]] = []  # per point, once scored

    def run_epoch(self) -> dict[str, Any]:
        """Score every point on the valid (and test) split; report the chosen one's accuracies."""
        self.epoch += 1
        found = {split: knn_accuracies(self.encoded["train"], self.encoded[split], self.num_classes, self.points)
                 for split in ("valid", "test") if split in self.encoded}
        self.scores = [{"k": k, "temperature": temperature,
                        **{f"{split}_accuracy": accuracies[i] for split, accuracies in found.items()}}
                       for i, (k, temperature) in enumerate(self.points)]
        chosen = max(range(len(self.points)), key=lambda i: found["valid"][i])  # the first of the best
        self.best_accuracy = found["valid"][chosen]
        k, temperature = self.points[chosen]
        metrics = {**{f"{split}_accuracy": accuracies[chosen] for split, accuracies in found.items()},
                   "valid_labels": len(self.encoded["valid"].labels), "knn_k": k, "knn_temperature": temperature,
                   "mean_accuracy": self.best_accuracy, "best_accuracy": self.best_accuracy, "epoch": self.epoch,
                   "done": self.done, "completed": self.done}
        self.selection.update(metrics, self.epoch)
        metrics.update(self.selection.report())
        if self.trial_dir is not None:
            write_json(self.trial_dir / KNN_GRID_FILE, {"points": self.scores, "chosen": chosen,
                                                        "labels": self.labels})
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "epoch": self.epoch, "step": self.step,
                "best_accuracy": self.best_accuracy, "selection": self.selection.state_dict(),
                "knn_grid": {"points": self.points, "scores": self.scores}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        grid = state.get("knn_grid")
        if grid is None or [tuple(point) for point in grid["points"]] != self.points:
            raise UserError("snapshot does not fit this kNN trial (another grid, or not a kNN trial's): start the "
                            "trial afresh")
        self.epoch, self.step, self.best_accuracy = state["epoch"], state["step"], state["best_accuracy"]
        self.selection.load_state_dict(state["selection"])
        self.scores = grid["scores"]

    def close(self) -> None:
        """Nothing runs in the background: the splits closed after encoding."""
