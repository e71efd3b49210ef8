"""Weighted k-nearest-neighbour classification on frozen features (the DINO paper's kNN).

Features are L2-normalised; a query's k most cosine-similar training images each vote for
their class with weight exp(similarity / T); the class with the largest summed weight wins.
Defaults as in DINO: k = 20, T = 0.07.

Two uses, each set in gin:

    knn.every = 5            # online: every 5th epoch (and the last) of any trial, 0: off (the default)
    knn.k = 20               # neighbours
    knn.temperature = 0.07   # T of the votes' weights

reports `valid_knn_accuracy`: the backbone's features (eval mode, plain images) of the trial's
labelled training split are the memory, its whole validation split the queries (whatever
`session.valid_iters`). Other epochs leave the metric out (to select on it with the Ray
config's `metric`, set knn.every = 1). Encoding draws no random number and leaves BatchNorm's
statistics as they are: the training is the same with it as without.

    knn_grid.k = [10, 20, 50]        # offline: a kNN trial (selfstudy.knn_trial.KnnTrial)
    knn_grid.temperature = [0.07]

makes the trial a kNN trial on its (pretrained) backbone: one encoding, every (k, T) scored,
the one of the best validation accuracy chosen; its test accuracy is `test_at_best`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, ContextManager, NamedTuple, Sequence

import gin
import torch
import torch.nn.functional as F

from selfstudy.data import DatasetFiles, DividedSplit, ResidentSplit
from selfstudy.data.base import DataOptions, Rows
from selfstudy.errors import UserError

K = 20  # DINO's defaults
TEMPERATURE = 0.07
SIMILARITIES = 1 << 24  # query x memory similarities (or query x k x class votes) at a time: 64 MiB


def knn_predict_grid(train_features: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor,
                     num_classes: int, points: Sequence[tuple[int, float]],
                     chunk: int | None = None) -> torch.Tensor:
    """Predicted classes P x M of the M queries for each of the P points (k, temperature).

    train_features N x D, train_labels N (int64, 0..num_classes - 1), queries M x D (any float
    dtype; compared in float32). The top max(k) neighbours are found once per chunk of `chunk`
    queries (None: as many as keep SIMILARITIES similarities, or votes); each point takes its
first k.
    Votes are weighed exp((s - s_max) / T), s_max the query's highest similarity: the same
    winner as exp(s / T), without overflow at a small T. Ties of summed weight go to the lower
    class. The same inputs give the same predictions (no atomic adds), on the CPU and CUDA.
    """
    if not points:
        raise ValueError("points: give at least one (k, temperature)")
    if any(k < 1 or not temperature > 0 for k, temperature in points):
        raise ValueError(f"points = {list(points)}: each k must be 1 or more and each temperature above 0")
    most = max(k for k, _ in points)
    if most > len(train_features):
        raise ValueError(f"k = {most} is more than the {len(train_features)} training features")
    memory = F.normalize(train_features.float(), dim=1)  # N x D
    queries = F.normalize(queries.float(), dim=1)  # M x D
    chunk = chunk or max(1, SIMILARITIES // max(len(memory), most * num_classes))
    predictions = []
    for start in range(0, len(queries), chunk):
        similarity = queries[start: start + chunk] @ memory.T  # m x N, cosine
        top, index = similarity.topk(most, dim=1)  # m x K, best first
        votes = F.one_hot(train_labels[index], num_classes).float()  # m x K x C
        per_point = []
        for k, temperature in points:
            weights = ((top[:, :k] - top[:, :1]) / temperature).exp()  # m x k, in (0, 1]
            per_point.append((weights[:, :, None] * votes[:, :k]).sum(dim=1).argmax(dim=1))  # m
        predictions.append(torch.stack(per_point))  # P x m
    if not predictions:
        return torch.zeros(len(points), 0, dtype=torch.long, device=queries.device)
    return torch.cat(predictions, dim=1)


def knn_predict(train_features: torch.Tensor, train_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                k: int = K, temperature: float = TEMPERATURE, chunk: int | None = None) -> torch.Tensor:
    """Predicted classes M of the M queries (M x D) by the weighted kNN of the N training features
    (N x D) and labels (N); see `knn_predict_grid`."""
    return knn_predict_grid(train_features, train_labels, queries, num_classes, [(k, temperature)], chunk)[0]


class Encoded(NamedTuple):
    features: torch.Tensor  # N x D float32
    labels: torch.Tensor  # N int64


@torch.no_grad()
def encode(backbone: torch.nn.Module, split: ResidentSplit | DividedSplit, batch_size: int,
           autocast: Callable[[], ContextManager[Any]]) -> Encoded:
    """The backbone's features (eval mode, float32) and the classes of a split's plain images, in
    order; the backbone's mode is put back."""
    was_training = backbone.training
    backbone.eval()
    features, labels = [], []
    try:
        for batch in split.batches(batch_size, -1):
            with autocast():
                features.append(backbone(batch.images).float())
            labels.append(batch.targets)
    finally:
        backbone.train(was_training)
    return Encoded(torch.cat(features), torch.cat(labels))


def knn_accuracies(memory: Encoded, queries: Encoded, num_classes: int,
                   points: Sequence[tuple[int, float]]) -> list[float]:
    """The fraction of `queries` each point (k, temperature) classifies right."""
    predicted = knn_predict_grid(memory.features, memory.labels, queries.features, num_classes, points)  # P x M
    hits = (predicted == queries.labels).sum(dim=1).tolist()
    return [count / max(len(queries.labels), 1) for count in hits]


@dataclass(frozen=True)
class KnnOptions:
    """`knn.*`: online kNN accuracy of a trial's backbone."""

    every: int  # epochs (0: off)
    k: int
    temperature: float

    def due(self, epoch: int, last: bool) -> bool:
        """Whether epoch `epoch` (1-based) reports it: every `every` epochs, and the last."""
        return bool(self.every) and (epoch % self.every == 0 or last)


def _count(setting: str, value: Any, least: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserError(f"{setting} = {value!r}: {fix}")
    return value


def _temperature(setting: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise UserError(f"{setting} = {value!r}: the votes' temperature must be a positive number, e.g. 0.07")
    return float(value)


@gin.configurable("knn")
def knn_options(every: int = 0, k: int = K, temperature: float = TEMPERATURE) -> KnnOptions:
    """`knn.*` (see the module's docstring)."""
    return KnnOptions(_count("knn.every", every, 0, "give a whole number of epochs (0: off)"),
                      _count("knn.k", k, 1, "the number of neighbours must be a positive whole number, e.g. 20"),
                      _temperature("knn.temperature", temperature))


@dataclass(frozen=True)
class KnnGrid:
    """`knn_grid.*`: the points (k, temperature) a kNN trial scores, k first."""

    k: tuple[int, ...]
    temperature: tuple[float, ...]

    def points(self) -> list[tuple[int, float]]:
        return list(itertools.product(self.k, self.temperature))


def _values(name: str, values: Any, check: Callable[[str, Any], Any]) -> tuple[Any, ...]:
    if not isinstance(values, (list, tuple)) or not values:
        raise UserError(f"knn_grid.{name} = {values!r} must be a non-empty list, e.g. "
                        f"{'[10, 20, 50]' if name == 'k' else '[0.07]'}")
    checked = tuple(check(f"knn_grid.{name}", value) for value in values)
    if len(set(checked)) < len(checked):
        raise UserError(f"knn_grid.{name} = {list(values)} repeats a value: give each once")
    return checked


@gin.configurable("knn_grid")
def knn_grid_options(k: list[int] = (K,), temperature: list[float] = (TEMPERATURE,)) -> KnnGrid:
    """`knn_grid.*` (see the module's docstring)."""
    return KnnGrid(_values("k", k, lambda s, v: _count(s, v, 1, "neighbours must be positive whole numbers")),
                   _values("temperature", temperature, _temperature))


def _bound(configurable: str, names: tuple[str, ...]) -> bool:
    """Whether gin binds any of `configurable`.`names`."""
    for name in names:
        try:
            gin.query_parameter(f"{configurable}.{name}")
        except ValueError:  # gin's answer for a parameter no binding sets
            continue
        return True
    return False


def trial_knn() -> KnnOptions | None:
    """The trial's online kNN (None: off). Read only when some knn.* is bound, so the operative
    config of a trial without it does not list its settings."""
    if not _bound("knn", ("every", "k", "temperature")):
        return None
    options = knn_options()
    return options if options.every else None


def trial_knn_grid() -> KnnGrid | None:
    """The trial's kNN grid, when some knn_grid.* is bound: a kNN trial (None: another trial)."""
    return knn_grid_options() if _bound("knn_grid", ("k", "temperature")) else None


def check_knn(setting: str, k: int, dataset: DatasetFiles, options: DataOptions, rows: Rows) -> None:
    """A `UserError` unless `k` neighbours can be drawn from the trial's labelled training images
    (`rows`: its split plan) of a set with a class per image, with validation images to query."""
    if dataset.train.target_shape:
        raise UserError(f"{setting} classifies each image by its neighbours' classes, but {dataset.name} has a class "
                        "per pixel: use a set with a class per image, or drop the knn settings")
    train = len(rows["train"])
    if k > train:
        held = (f"BaseDataset.semisupervised = {options.semisupervised}" if options.semisupervised
                else f"the training images of {dataset.name}")
        raise UserError(f"{setting} asks for {k} neighbours, more than the {train} labelled training images ({held}): "
                        f"lower it to {train} or less, or give a larger budget")
    if not len(rows["valid"]):
        raise UserError(f"{setting} queries the validation split, but the trial holds out no validation images: set "
                        "BaseDataset.num_valid > 0, or drop the knn settings")
