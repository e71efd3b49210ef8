"""The model a task trains: a backbone plus a classifier head (`Wrapper.*` in gin)."""

from __future__ import annotations

from typing import NamedTuple

import gin
import torch
import torch.nn.functional as F
from torch import nn

from selfstudy import notes
from selfstudy import weights as weights_io
from selfstudy.checkpoint import first_difference, read_data, resolve_snapshot
from selfstudy.errors import UserError
from selfstudy.models.resnet import ResNet
from selfstudy.models.vit import ViT
from selfstudy.precision import upcast

HEADS = ("linear", "mlp")


class ModelOutput(NamedTuple):
    features: torch.Tensor  # B x D, pooled backbone features
    logits: torch.Tensor  # B x out_classes, or B x out_classes x H x W with Wrapper.dense_pred
    more_logits: tuple[torch.Tensor, ...] = ()  # of the further heads of a list out_classes


def make_head(kind: str, in_dim: int, out_dim: int, hidden: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(in_dim, out_dim)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                             nn.Linear(hidden, out_dim))
    raise UserError(f"unknown Wrapper.classifier {kind!r}; choose from: {', '.join(HEADS)}")


def head_sizes(out_classes: int | list[int] | tuple[int, ...] | None, num_classes: int) -> tuple[int, ...]:
    """`Wrapper.out_classes` as outputs per head; the first head must cover the dataset's classes."""
    sizes = (out_classes or num_classes,) if not isinstance(out_classes, (list, tuple)) else tuple(out_classes)
    if not sizes or not all(isinstance(size, int) and size > 0 for size in sizes):
        raise UserError(f"Wrapper.out_classes = {out_classes!r} must be a positive number of outputs or a list of "
                        "them, one per head, e.g. [10, 5]")
    if sizes[0] < num_classes:
        raise UserError(f"Wrapper.out_classes = {out_classes} is fewer than the dataset's {num_classes} classes")
    return sizes


@gin.configurable(denylist=["backbone", "num_classes"])
class Wrapper(nn.Module):
    """Backbone + classifier.

    out_classes: classifier outputs (default: the dataset's classes); a list gives several
        heads on the same features, the first for the class and the others for the further
        labels the task trains (ClassifyTask: the pose), e.g. [10, 5].
    classifier: 'linear' or 'mlp' (hidden units `mlp_hidden`).
    finetune_classifier: whether the classifier's loss trains the backbone. Unset: yes in a
        supervised run, no with run_selfsup (the classifier is a probe). False without
        run_selfsup: a linear probe on a frozen backbone (weights and BatchNorm statistics).
        True with run_selfsup: the labels train the backbone alongside the method's loss.
    warmup_fc: training steps at the start during which the backbone stays frozen (weights and
        BatchNorm statistics) and only the classifier and the task's own heads train.
    pretrained: "<exp>/<name>" of a snapshot whose weights initialise the model, or a path to
        another project's checkpoint (torchvision, MoCo, OpenSelfSup/MMSelfSup, a plain encoder;
        `pretrained_format`, default 'auto': see `selfstudy.weights`) for the backbone alone.
    ignore_pretrained_fc: take only the backbone from `pretrained`.
    run_selfsup: pretraining with a self-supervised task: the classifier becomes a linear
        probe and an MLP probe joins it, both trained on detached features.
    finetune_selfsup: whether the self-supervised loss trains the backbone (default). False:
        the backbone stays frozen and only the method's heads and the probes train, e.g. to
        ask how well given features solve a pretext task.
    dense_pred: per-pixel logits: the classifier becomes a 1x1 convolution on the backbone's
        feature map, upsampled bilinearly to the input size (segmentation).
    calibrate_random: a linear probe of a random backbone (finetune_classifier False, no
        run_selfsup, no pretrained) first measures its BatchNorm statistics on one pass over
        the training images (`selfstudy.models.calibrate`), as pretrained ones have. False
        keeps the initial ones (mean 0, variance 1).
    With a frozen backbone or run_selfsup, features are standardised (BatchNorm without
    affine parameters) before the classifier and probes.
    """

    def __init__(self, backbone: ResNet | ViT, num_classes: int, out_classes: int | list[int] | None = None,
                 classifier: str = "linear", mlp_hidden: int = 512, finetune_classifier: bool | None = None,
                 warmup_fc: int = 0, pretrained: str | None = None, ignore_pretrained_fc: bool = False,
                 run_selfsup: bool = False, dense_pred: bool = False, finetune_selfsup: bool = True,
                 pretrained_format: str = "auto", calibrate_random: bool = True):
        super().__init__()
        if not finetune_selfsup and not run_selfsup:  # harmless: there is no self-supervised loss
            notes.note("Wrapper.finetune_selfsup = False has no job without Wrapper.run_selfsup (no self-supervised "
                        "loss to keep from the backbone)")
            finetune_selfsup = True
        if not finetune_selfsup and finetune_classifier:
            raise UserError("Wrapper.finetune_selfsup = False with Wrapper.finetune_classifier = True (labels train the "
                            "backbone, the method's loss only measured) is not supported: train with the labels alone "
                            "(Wrapper.run_selfsup = False) or drop one of the two settings")
        sizes = head_sizes(out_classes, num_classes)
        if len(sizes) > 1 and (dense_pred or run_selfsup):
            raise UserError(f"Wrapper.out_classes = {list(sizes)}: with Wrapper.{'dense_pred' if dense_pred else 'run_selfsup'}"
                            f" one head learns the class: give one number, e.g. {sizes[0]}")
        self.head_sizes = sizes
        out_classes = sizes[0]
        self.backbone = backbone
        self.dense_pred = dense_pred
        if dense_pred and (classifier != "linear" or run_selfsup):
            raise UserError("Wrapper.dense_pred = True has a linear (1x1 convolution) classifier and no probes: "
                            "leave Wrapper.classifier = 'linear' and Wrapper.run_selfsup = False")
        self.classifier = (nn.Conv2d(backbone.out_dim, out_classes, 1) if dense_pred
                           else make_head(classifier, backbone.out_dim, out_classes, mlp_hidden))
        self.more_heads = nn.ModuleList(make_head(classifier, backbone.out_dim, size, mlp_hidden) for size in sizes[1:])
        self.run_selfsup = run_selfsup
        # the backbone never trains: a probe of frozen features, or a method's heads on them
        self.always_frozen = (finetune_classifier is False and not run_selfsup) or not finetune_selfsup
        has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules())
        self.calibrate_random = (calibrate_random and self.always_frozen and not run_selfsup and not pretrained
                                 and has_batchnorm)  # a ViT's LayerNorms have no statistics to measure
        self.labels_train_backbone = bool(finetune_classifier) if run_selfsup else not self.always_frozen
        # Probes on frozen or detached features see them standardised (a fixed affine map at
        # evaluation, so a linear probe stays linear): untrained and self-supervised features
        # come at any scale, which plain SGD on a linear head does not recover from.
        # Frozen features do not change: their statistics are the mean over every batch seen
        # (momentum None), right after few steps too (a small label budget's epoch is one batch).
        probing = self.always_frozen or run_selfsup
        self.feature_norm = (nn.BatchNorm1d(backbone.out_dim, affine=False, momentum=None if self.always_frozen else 0.1)
                             if probing else nn.Identity())
        self.mlp_probe = make_head("mlp", backbone.out_dim, out_classes, mlp_hidden) if run_selfsup else None
        self.warmup_fc = warmup_fc
        self.backbone_frozen = self.always_frozen
        # what a warmup freezes and frees again: stages ResNet.freeze_at_k froze stay frozen
        self.warm_parameters = [p for p in backbone.parameters() if p.requires_grad]
        if self.always_frozen:
            backbone.requires_grad_(False)
        if pretrained:
            self.load_pretrained(pretrained, ignore_pretrained_fc, pretrained_format)
            if self.always_frozen and isinstance(self.feature_norm, nn.BatchNorm1d):
                self.feature_norm.reset_running_stats()  # measured afresh on this probe's images, not the snapshot's

    def load_pretrained(self, name: str, ignore_fc: bool, layout: str = "auto") -> None:
        """Copy a snapshot's weights in, or another project's encoder (see `selfstudy.weights`);
        every tensor taken must fit exactly."""
        setting = f"Wrapper.pretrained = {name!r}"
        if layout not in weights_io.LAYOUTS:
            raise UserError(f"unknown Wrapper.pretrained_format {layout!r}; choose from: {', '.join(weights_io.LAYOUTS)}")
        path = resolve_snapshot(name, "Wrapper.pretrained")
        data = read_data(path, setting)
        found = weights_io.detect(data) if layout == "auto" else layout
        if found != "selfstudy":
            if layout == "auto":
                notes.note(f"{setting}: a checkpoint in the {found} layout (told by its keys); its encoder initialises "
                            "the backbone")
            self.load_encoder(weights_io.encoder_state(data, found), setting)
            return
        if not isinstance(data, dict) or "model" not in data:
            raise UserError(f"{setting}: {path} is not a selfstudy snapshot (no 'model' entry): set "
                            "Wrapper.pretrained_format to its layout, or 'auto'")
        weights = data["model"]
        own = {k: v for k, v in self.state_dict().items() if k.startswith("backbone.") or not ignore_fc}
        difference = first_difference(weights, own, required=lambda key: key.startswith("backbone."))
        if difference:
            key, what = difference
            fix = ("set Wrapper.ignore_pretrained_fc = True to keep only the backbone" if not
                   key.startswith("backbone.") else "match the pretraining's init_resnet.choice and "
                   + ("ViT.*" if key.startswith("backbone.net.") else "ResNet.*"))
            raise UserError(f"{setting} does not fit this model: {what}; {fix}")
        if next(iter(own.values())).is_meta:  # a config check builds the model without memory: shapes suffice
            return
        self.load_state_dict({k: weights[k] for k in own if k in weights}, strict=False)

    def load_encoder(self, weights: dict[str, torch.Tensor], setting: str) -> None:
        """An encoder in torchvision's names (a ResNet) or timm's (a ViT) into the backbone,
        strictly (a projection of ResNet.out_feats keeps its own initialisation)."""
        prefix = self.backbone.layout_prefix
        weights = {prefix + k: v for k, v in weights.items()}
        own = {k: v for k, v in self.backbone.state_dict().items() if not k.startswith("project.")}
        weights_io.check_fit(weights, own, setting, prefix)
        if not next(iter(own.values())).is_meta:  # a config check builds the model without memory
            self.backbone.load_state_dict(weights, strict=False)

    def probe_loss(self, features: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy of the linear (classifier) and MLP probes on features B x D; metrics
        'accuracy' (linear) and 'mlp_accuracy'. Only the classifier's gradients reach the
        backbone, and only with `labels_train_backbone` (finetune_classifier = True)."""
        if self.mlp_probe is None:
            raise UserError("probes exist only with Wrapper.run_selfsup = True")
        features = self.feature_norm(features if self.labels_train_backbone else features.detach())
        linear, mlp = self.classifier(features), self.mlp_probe(features.detach())
        loss = F.cross_entropy(upcast(linear), targets) + F.cross_entropy(upcast(mlp), targets)
        return loss, {"accuracy": (linear.argmax(1) == targets).float().mean(),
                      "mlp_accuracy": (mlp.argmax(1) == targets).float().mean(), "probe_loss": loss.detach()}

    def drop_more_heads(self) -> None:
        """Keep only the class head (for a task that has no labels for the others)."""
        self.more_heads = nn.ModuleList()
        self.head_sizes = self.head_sizes[:1]

    def set_step(self, step: int) -> None:
        """Freeze the backbone while `step < warmup_fc` (or always, see `always_frozen`):
        its parameters stop requiring gradients and its BatchNorm keeps its running statistics,
        for every caller, through `forward` or the backbone itself (tasks with heads of their own)."""
        frozen = self.always_frozen or step < self.warmup_fc
        if frozen != self.backbone_frozen:
            self.backbone_frozen = frozen
            for parameter in self.warm_parameters:
                parameter.requires_grad_(not frozen)
            self.backbone.train(self.training and not frozen)

    def train(self, mode: bool = True) -> "Wrapper":
        super().train(mode)
        self.backbone.train(mode and not self.backbone_frozen)
        return self

    def forward(self, images: torch.Tensor) -> ModelOutput:
        """images: B x C x H x W -> features B x D and logits (B x out_classes, or per pixel)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.backbone_frozen):
            if self.dense_pred:
                feature_map = self.backbone.feature_map(images)
                features = feature_map.mean(dim=(2, 3))
            else:
                features = self.backbone(images)
        if self.dense_pred:
            logits = F.interpolate(self.classifier(feature_map), size=images.shape[-2:], mode="bilinear",
                                   align_corners=False)
            return ModelOutput(features, logits)
        features_in = self.feature_norm(features)
        return ModelOutput(features, self.classifier(features_in), tuple(head(features_in) for head in self.more_heads))
