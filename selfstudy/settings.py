"""The gin `session.*` options of a trial, and what `session.deterministic` switches."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import gin
import torch

from selfstudy.data import DatasetFiles
from selfstudy.errors import UserError
from selfstudy.tasks import Task


@dataclass(frozen=True)
class SessionSettings:
    task: str | Task
    dataset: str | DatasetFiles
    train_iters: int
    valid_iters: int
    test_iters: int
    restore_session: str | None
    deterministic: bool
    precision: str
    test_when: str


TEST_WHEN = ("epoch", "best")


@gin.configurable("session")
def session_settings(task: str | Task = "ClassifyTask", dataset: str | DatasetFiles = "DigitsDataset",
                     train_iters: int = -1, valid_iters: int = -1, test_iters: int = 0,
                     restore_session: str | None = None, deterministic: bool = False,
                     precision: str = "auto", test_when: str = "epoch") -> SessionSettings:
    """`session.*`. `*_iters`: batches per epoch, -1 a full pass, 0 skips the split.
    `test_when` (with test_iters != 0): 'epoch' tests after every epoch; 'best' keeps the
    weights of the epoch with the best validation metric and tests them once, after the last
    epoch (whose report then carries their test_* metrics). Either way every epoch reports
    `best_epoch` and `test_at_best`, the test metric of that epoch (see `Selection`).
    `restore_session`: "<exp>/<name>" of a snapshot to continue from (weights, optimizer, epoch).
    `deterministic`: bit-identical reruns on a GPU too (deterministic kernels; slower).
    `precision`: 'auto' (bf16 autocast on a GPU, fp32 on the CPU), 'bf16', 'fp16', 'fp32', or
    'fp64' (float64 weights and activations: slow, for checking numerics)."""
    for name, value in (("train_iters", train_iters), ("valid_iters", valid_iters), ("test_iters", test_iters)):
        if not isinstance(value, int) or value < -1:
            raise UserError(f"session.{name} must be -1 (full pass), 0 (skip) or a number of batches, got {value!r}")
    if test_when not in TEST_WHEN:
        raise UserError(f"session.test_when = {test_when!r}: choose 'epoch' (test every epoch) or 'best' (test the "
                        "best validation epoch's weights once, at the end)")
    return SessionSettings(task, dataset, train_iters, valid_iters, test_iters, restore_session, deterministic,
                           precision, test_when)


DETERMINISTIC_CUBLAS = (":4096:8", ":16:8")  # the workspace settings with which cuBLAS is reproducible


def set_determinism(deterministic: bool) -> None:
    """`session.deterministic`: deterministic kernels, and an error from any operation that has
    none (not a warning); off, the process's previous trial's setting is undone. cuBLAS reads
    CUBLAS_WORKSPACE_CONFIG when the process first uses it: importing selfstudy sets it."""
    if deterministic and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in DETERMINISTIC_CUBLAS:
        raise UserError(f"session.deterministic = True needs CUBLAS_WORKSPACE_CONFIG = {DETERMINISTIC_CUBLAS[0]}, but "
                        f"the environment sets {os.environ.get('CUBLAS_WORKSPACE_CONFIG')!r}: unset it")
    torch.use_deterministic_algorithms(deterministic, warn_only=False)


@contextmanager
def explain_nondeterminism() -> Iterator[None]:
    """An operation without a deterministic implementation, met under session.deterministic,
    becomes a one-line `UserError` that names it."""
    try:
        yield
    except RuntimeError as err:
        if "does not have a deterministic implementation" not in str(err):
            raise
        operation = str(err).split(" does not have")[0].strip()
        raise UserError(f"session.deterministic = True, but {operation} has no deterministic implementation on this "
                        "device: set session.deterministic = False for this task") from None
