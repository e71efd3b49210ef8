"""Datasets: one registry that `session.dataset = 'Name'` chooses from."""

from __future__ import annotations

from typing import Callable

from selfstudy.data.base import DatasetFiles, FolderDataset, batch_size_option, data_options
from selfstudy.data.cifar import CIFARDataset
from selfstudy.data.digits import DigitsDataset
from selfstudy.data.splits import Batch, DividedSplit, ResidentSplit
from selfstudy.data.syn import SynDataset
from selfstudy.errors import UserError

DATASETS: dict[str, Callable[[], DatasetFiles]] = {
    "DigitsDataset": DigitsDataset,
    "CIFARDataset": CIFARDataset,
    "FolderDataset": FolderDataset,
    "SynDataset": SynDataset,
}


def build_dataset(choice: str | DatasetFiles) -> DatasetFiles:
    """The dataset named by `session.dataset` (a registry name or a gin reference's result)."""
    if isinstance(choice, DatasetFiles):
        return choice
    if choice not in DATASETS:
        raise UserError(f"unknown dataset {choice!r} in session.dataset; choose from: {', '.join(DATASETS)}")
    return DATASETS[choice]()


__all__ = ["Batch", "DATASETS", "DatasetFiles", "DividedSplit", "ResidentSplit", "batch_size_option", "build_dataset",
           "data_options"]
