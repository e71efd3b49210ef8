"""DINO (Caron et al. 2021): self-distillation with no labels. A student (backbone + DINO head)
matches the output distribution of a teacher, an exponential moving average of the student,
across views: the teacher sees the two global views, the student every view, global and local
(multi-crop: `augment.local_crops`, `Batch.local_views`). Centring (a running mean of the
teacher's outputs, subtracted) and sharpening (a low teacher temperature) keep the teacher from
collapsing to one output or to the uniform one.

The paper's head is 2048 wide with a 256 bottleneck and 65,536 outputs, its teacher momentum
0.996 rising to 1, its teacher temperature warming from 0.04 to 0.07 (or 0.04 throughout) over
30 epochs, student temperature 0.1, centre momentum 0.9; its first epoch freezes the last layer
(`freeze_last`, a fraction of training here) and it clips gradients (`gradients.max_norm`). Any backbone with `out_dim` and `forward: B x C x
H x W -> B x out_dim` for both resolutions works (ResNets pool globally; ViTs take other sizes)."""

from __future__ import annotations

import copy

import gin
import torch
import torch.nn.functional as F
from torch import nn

from selfstudy.data import Batch, DatasetFiles
from selfstudy.data.base import DataOptions, Rows
from selfstudy.models import Wrapper
from selfstudy.precision import upcast
from selfstudy.tasks.base import SelfSupervisedTask, check_settings
from selfstudy.tasks.byol import ema_momentum
from selfstudy.tasks.moco import momentum_update


def dino_loss(student_logits: list[torch.Tensor], teacher_logits: list[torch.Tensor], center: torch.Tensor,
              student_temp: float, teacher_temp: float | torch.Tensor) -> torch.Tensor:
    """Cross-entropy between the teacher's centred, sharpened distribution of each global view,
    softmax((t - center) / teacher_temp), and the student's log-softmax(s / student_temp) of
    every other view, averaged over the batch and then over the (view, view) pairs. Logits are
    B x K each; the student's first views are the teacher's global views, in the same order (a
    view is never compared with itself); center is 1 x K. Nats; no gradient reaches the teacher."""
    targets = [F.softmax((upcast(t) - center) / teacher_temp, dim=-1).detach() for t in teacher_logits]
    log_probs = [F.log_softmax(upcast(s) / student_temp, dim=-1) for s in student_logits]
    terms = [-(q * log_p).sum(dim=-1).mean() for i, q in enumerate(targets)
             for v, log_p in enumerate(log_probs) if v != i]
    return torch.stack(terms).mean()


def teacher_temperature(step: int, total_steps: int, start: float, end: float, warmup: float) -> float:
    """The teacher's temperature at `step`: linear from `start` to `end` over the first `warmup`
    fraction of the `total_steps`, then `end`."""
    warm = warmup * total_steps
    return end if step >= warm else start + (end - start) * step / warm


class DINOHead(nn.Module):
    """MLP (`layers` Linear layers, GELU between, `hidden` wide, ending in `bottleneck`), then an
    L2-normalised bottleneck and a weight-normalised last layer (each output's weight vector of
    length 1, as weight norm with g fixed at 1): logits B x out_dim, cosines in [-1, 1]."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int, layers: int = 3,
                 batch_norm: bool = False):
        super().__init__()
        sizes = [in_dim] + [hidden] * (layers - 1) + [bottleneck]
        blocks: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            hidden_layer = i < layers - 1
            blocks += [nn.Linear(a, b)] + [nn.BatchNorm1d(b)] * (hidden_layer and batch_norm) + [nn.GELU()] * hidden_layer
        self.mlp = nn.Sequential(*blocks)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last = nn.Parameter(torch.empty(out_dim, bottleneck))
        nn.init.trunc_normal_(self.last, std=0.02)

    def forward(self, x: torch.Tensor, gate: torch.Tensor | float = 1.0) -> torch.Tensor:
        """`gate` scales the gradient that reaches the last layer, not its value: 0 freezes it
        (DINO's first epoch) without a host sync."""
        last = self.last.detach() + gate * (self.last - self.last.detach())
        return F.linear(F.normalize(self.mlp(x), dim=-1), F.normalize(last, dim=1))


@gin.configurable
class DINOTask(SelfSupervisedTask):
    """DINO on two global views (`BaseDataset.double_sample = True`) and the local views of
    `augment.local_crops` (none: the two global views alone). The teacher's momentum rises from
    `base_momentum` to 1 along a cosine; its temperature warms from `warmup_teacher_temp` to
    `teacher_temp` over the first `teacher_warmup` of training; the centre follows the teacher's
    mean output with `center_momentum`. The head's last layer gets no gradient over the first
`freeze_last` of training (its weight decay still shrinks it, which its normalisation hides). `batch_norm`: BatchNorm in the head's hidden layers (the
    paper's code offers it, off by default)."""

    needs_two_views = True
    uses_local_views = True

    def __init__(self, out_dim: int = 1024, hidden: int = 512, bottleneck: int = 128, layers: int = 3,
                 batch_norm: bool = False,
                 student_temp: float = 0.1, teacher_temp: float = 0.07, warmup_teacher_temp: float = 0.04,
                 teacher_warmup: float = 0.3, base_momentum: float = 0.99, center_momentum: float = 0.9,
                 freeze_last: float = 0.0):
        super().__init__()
        check_settings("DINOTask", {
            "out_dim": "count", "hidden": "count", "bottleneck": "count", "layers": "count", "student_temp": "positive",
            "teacher_temp": "positive", "warmup_teacher_temp": "positive", "teacher_warmup": "fraction",
            "base_momentum": "fraction", "center_momentum": "fraction", "freeze_last": "fraction"}, locals())
        self.out_dim, self.hidden, self.bottleneck, self.layers = out_dim, hidden, bottleneck, layers
        self.batch_norm = bool(batch_norm)
        self.student_temp, self.teacher_temp, self.warmup_teacher_temp = student_temp, teacher_temp, warmup_teacher_temp
        self.teacher_warmup, self.base_momentum, self.center_momentum = teacher_warmup, base_momentum, center_momentum
        self.freeze_last = freeze_last

    def setup(self, model: Wrapper, dataset: DatasetFiles, options: DataOptions, rows: Rows) -> None:
        super().setup(model, dataset, options, rows)
        self.head = DINOHead(model.backbone.out_dim, self.out_dim, self.hidden, self.bottleneck, self.layers,
                             self.batch_norm)
        self.teacher_backbone = copy.deepcopy(model.backbone).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, self.out_dim))
        # this step's teacher temperature, set by after_step (a buffer: no host sync, kept in checkpoints)
        self.register_buffer("temperature", torch.tensor(self.temperature_at(0, 1)))
        self.register_buffer("last_gate", torch.tensor(self.gate_at(0, 1)))  # 0: the last layer frozen

    def temperature_at(self, step: int, total_steps: int) -> float:
        return teacher_temperature(step, total_steps, self.warmup_teacher_temp, self.teacher_temp, self.teacher_warmup)

    def gate_at(self, step: int, total_steps: int) -> float:
        return float(step >= self.freeze_last * total_steps)

    def objective(self, model: Wrapper, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        b = len(batch.images)
        global_views = torch.cat([batch.images, batch.view2])
        features = model.backbone(global_views)
        student = list(self.head(features, self.last_gate).chunk(2))
        if batch.local_views is not None:  # N x B local views, view-major
            local = self.head(model.backbone(batch.local_views), self.last_gate)
            student += list(local.chunk(len(batch.local_views) // b))
        with torch.no_grad():
            teacher = self.teacher_head(self.teacher_backbone(global_views))
        loss = dino_loss(student, list(teacher.chunk(2)), self.center, self.student_temp, self.temperature)
        if self.training:
            self.update_center(upcast(teacher))
        return loss, {}, features[:b]

    @torch.no_grad()
    def update_center(self, teacher: torch.Tensor) -> None:
        """center <- m center + (1 - m) (the teacher's mean output over both global views)."""
        self.center.mul_(self.center_momentum).add_(teacher.mean(dim=0, keepdim=True), alpha=1 - self.center_momentum)

    def after_step(self, model: Wrapper, step: int, total_steps: int) -> None:
        momentum = ema_momentum(self.base_momentum, step, total_steps)
        momentum_update(self.teacher_backbone, model.backbone, momentum)
        momentum_update(self.teacher_head, self.head, momentum)
        self.temperature.fill_(self.temperature_at(step + 1, total_steps))
        self.last_gate.fill_(self.gate_at(step + 1, total_steps))
