"""The epoch a trial is judged by: the one with the best validation metric.

The metric and mode are the Ray config's (`metric`, `mode`: what schedulers and searchers
optimise), carried in the trial config. The test score that counts is the test metric of
that epoch (`test_at_best`), never the best test score over epochs: picking epochs by their
test score would leak the test set into the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from selfstudy.errors import UserError


def test_metric(metric: str) -> str:
    """The test metric that corresponds to the selection metric: valid_X -> test_X
    ('mean_accuracy', the valid accuracy, -> test_accuracy)."""
    for prefix in ("valid_", "train_"):
        if metric.startswith(prefix):
            return "test_" + metric.removeprefix(prefix)
    return "test_accuracy"


@dataclass
class Selection:
    metric: str = "mean_accuracy"
    mode: str = "max"
    value: float | None = None  # the best epoch's metric
    epoch: int = 0  # the best epoch (1-based; 0 before the first)
    test: dict[str, float] = field(default_factory=dict)  # the best epoch's test_* metrics, once known
    weights: dict[str, dict[str, torch.Tensor]] | None = None  # its weights, kept where test waits for the end

    def update(self, metrics: dict[str, Any], epoch: int) -> bool:
        """Take the epoch's metrics; True when it is the best so far (ties keep the earlier epoch)."""
        if self.metric not in metrics:
            names = ", ".join(sorted(k for k, v in metrics.items() if isinstance(v, float)))
            raise UserError(f"the Ray config's metric {self.metric!r} is not among this trial's metrics ({names}): "
                            "set metric to one of them")
        value = float(metrics[self.metric])
        best = self.value
        better = (best is None or not math.isfinite(best)
                  or (value > best if self.mode == "max" else value < best))
        if better and math.isfinite(value):
            self.value, self.epoch = value, epoch
            self.test = {k: v for k, v in metrics.items() if k.startswith("test_")}
        return better and math.isfinite(value)

    def report(self) -> dict[str, Any]:
        """`best_epoch`, and `test_at_best` once the best epoch's test metric is known."""
        found = {"best_epoch": self.epoch}
        if test_metric(self.metric) in self.test:
            found["test_at_best"] = self.test[test_metric(self.metric)]
        return found

    def state_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "mode": self.mode, "value": self.value, "epoch": self.epoch,
                "test": dict(self.test), "weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value, self.epoch = state["value"], state["epoch"]
        self.test, self.weights = dict(state["test"]), state["weights"]


def copy_weights(*modules: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """A detached copy of each module's state, on its device (keyed by position)."""
    return {str(i): {k: v.detach().clone() for k, v in m.state_dict().items()} for i, m in enumerate(modules)}
