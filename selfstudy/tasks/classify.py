"""Supervised classification of the class, or of the pose: cross-entropy and accuracy."""

from __future__ import annotations

import gin
import torch
import torch.nn.functional as F
from torch import nn

from selfstudy import notes
from selfstudy.data import Batch, DatasetFiles
from selfstudy.data.base import DataOptions, Rows
from selfstudy.errors import UserError
from selfstudy.models import Wrapper
from selfstudy.precision import upcast
from selfstudy.tasks.base import Task

NUM_POSES = 5  # top view and four azimuth quadrants (selfstudy.render.pose_label)


def segmentation_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pixel cross-entropy (nats) of logits B x K x H x W against class maps B x H x W, with
    pixel accuracy and the batch's 'confusion' counts (K x K int64, pixels by target row and
    predicted column), which an epoch sums over its split before `mean_iou`."""
    loss = F.cross_entropy(upcast(logits), targets)
    k = logits.shape[1]
    predicted = logits.argmax(dim=1)
    confusion = torch.bincount((targets * k + predicted).flatten(), minlength=k * k).view(k, k)
    return loss, {"pixel_accuracy": (predicted == targets).float().mean(), "confusion": confusion}


def mean_iou(confusion: torch.Tensor) -> torch.Tensor:
    """Mean over classes of intersection over union, from confusion counts K x K (target rows,
    predicted columns) of a whole split; classes that are neither present nor predicted
    (union 0) are left out."""
    confusion = confusion.double()
    hit = confusion.diagonal()
    union = confusion.sum(dim=0) + confusion.sum(dim=1) - hit
    seen = union > 0
    return (hit[seen] / union[seen]).mean()


def classify_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy (nats) and accuracy (fraction) of logits B x K against targets B."""
    loss = F.cross_entropy(upcast(logits), targets)
    accuracy = (logits.argmax(dim=1) == targets).float().mean()
    return loss, accuracy


@gin.configurable
class ClassifyTask(Task):
    """Predict each image's class with the wrapper's classifier; with `is_pose`, predict its
    5-way pose label instead (`BaseDataset.predict_pose`), with a pose head of the task's own.
    On a dataset of class maps (multi-object scenes) it segments: every pixel's class, 0 for
    background, with `Wrapper.dense_pred = True`; 'accuracy' is then the pixel accuracy.
    With two Wrapper heads (`Wrapper.out_classes = [10, 5]`) it learns class and pose at once,
    the loss their sum, reporting 'accuracy' (class) and 'pose_accuracy'."""

    data_parallel = True

    more_labels = ("pose",)

    def __init__(self, is_pose: bool = False):
        super().__init__()
        self.is_pose = is_pose

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions, rows: Rows) -> None:
        dense = bool(dataset.train.target_shape)
        if dense and not model.dense_pred:
            raise UserError(f"{dataset.name} has a class per pixel, but Wrapper.dense_pred is False: set it to True "
                            "to segment")
        if model.dense_pred and not dense:
            raise UserError(f"Wrapper.dense_pred = True predicts a class per pixel, but {dataset.name} has one class "
                            "per image (a classification set): use a --multi synthetic set or set it to False")
        if model.more_heads and self.is_pose:  # 2020 pose configs give [10, 5]
            notes.note(f"Wrapper.out_classes = {list(model.head_sizes)} with ClassifyTask.is_pose: the pose is learnt "
                        "alone, by a head of the task's own; the classifier's heads are not trained")
            model.drop_more_heads()
        elif model.more_heads:
            if options.predict_pose and model.head_sizes[1] < NUM_POSES:
                raise UserError(f"Wrapper.out_classes' second head learns the {NUM_POSES}-way pose: give it at least "
                                f"{NUM_POSES} outputs")
            if not options.predict_pose:  # as in 2020 configs, e.g. [10, 5] on CIFAR
                notes.note(f"Wrapper.out_classes = {list(model.head_sizes)}: the second head would learn the pose, "
                            "but BaseDataset.predict_pose is False, so only the first (the class) is built")
                model.drop_more_heads()
        if self.is_pose:
            if not options.predict_pose:
                raise UserError(f"ClassifyTask.is_pose = True needs pose labels, but BaseDataset.predict_pose is "
                                f"False for {dataset.name}: set it to True (the dataset must have rot_mat)")
            self.pose_head = nn.Linear(model.backbone.out_dim, NUM_POSES)

    def epoch_metrics(self, counts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Segmentation's mean IoU over the split, from its summed confusion counts."""
        return {"mean_iou": mean_iou(counts["confusion"])} if "confusion" in counts else {}

    def loss(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.is_pose:
            loss, accuracy = classify_loss(self.pose_head(model.backbone(batch.images)), batch.pose)
        elif model.dense_pred:
            loss, metrics = segmentation_loss(model(batch.images).logits, batch.targets)
            return loss, {"loss": loss.detach(), "accuracy": metrics["pixel_accuracy"], **metrics}
        elif model.more_heads:
            output = model(batch.images)
            loss, accuracy = classify_loss(output.logits, batch.targets)
            pose_loss, pose_accuracy = classify_loss(output.more_logits[0], batch.pose)
            return loss + pose_loss, {"loss": (loss + pose_loss).detach(), "accuracy": accuracy,
                                      "pose_accuracy": pose_accuracy}
        else:
            loss, accuracy = classify_loss(model(batch.images).logits, batch.targets)
        return loss, {"loss": loss.detach(), "accuracy": accuracy}
