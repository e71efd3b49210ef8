"""What every task provides."""

from __future__ import annotations

from typing import Protocol

import torch

from selfstudy.data import Batch, DatasetFiles
from selfstudy.models import Wrapper


class Task(Protocol):
    """A training objective. `loss` is stateless: everything it needs is in its arguments."""

    def check(self, dataset: DatasetFiles) -> None:
        """Raise `UserError` if the dataset lacks what the task needs."""

    def loss(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar loss to minimise and named scalar metrics of the batch (e.g. 'accuracy')."""
