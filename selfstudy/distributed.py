"""Data-parallel training of one trial by several worker processes (`workers_per_trial`).

Every worker holds the whole trial: the same model, data, seed and augmentation generator, so
all of them draw the same batch and the same augmentation of it. Each trains on its share of
that global batch (`share`: a contiguous slice, rank 0 first), so the union of the shares is
what one worker would see. Each worker's loss is weighted by its share (`share_weight`) and
the gradients are averaged over the workers (`reduce_gradients`): the update is the one of
the mean loss over the whole batch, also through the statistics of `GlobalBatchNorm`.
BatchNorm layers normalise with the statistics of the whole batch (`GlobalBatchNorm`), and the
epoch's metric sums are added over the workers (`reduce_sums`), so the report is the
one-worker trial's. Evaluation runs on the whole split in every worker (the same numbers).

Without a process group (`torch.distributed` not initialised) every function here is the
identity: a one-worker trial does exactly what it did before.
"""

from __future__ import annotations

import socket

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn.functional import all_reduce as all_reduce_with_grad

from selfstudy.data import Batch


def world() -> tuple[int, int]:
    """(this worker's rank, the number of workers); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def share_bounds(size: int, rank: int, workers: int) -> tuple[int, int]:
    """Rows [start, end) of a global batch of `size` that worker `rank` trains on."""
    return rank * size // workers, (rank + 1) * size // workers


def share(batch: Batch) -> Batch:
    """This worker's share of an augmented global batch; local views (view-major) by view."""
    rank, workers = world()
    if workers == 1:
        return batch
    b = len(batch.images)
    start, end = share_bounds(b, rank, workers)
    fields = {name: value[start:end] for name, value in batch._asdict().items()
              if value is not None and name != "local_views"}
    if batch.local_views is not None:
        views = batch.local_views.unflatten(0, (-1, b))[:, start:end]
        fields["local_views"] = views.flatten(0, 1)
    return batch._replace(**fields)


def share_weight(size: int) -> float:
    """What this worker's mean loss over its share of a global batch of `size` is multiplied by
    before backward, so that the average over workers is the mean over the batch: its rows x
    the workers / `size` (1 for equal shares)."""
    rank, workers = world()
    start, end = share_bounds(size, rank, workers)
    return (end - start) * workers / size


def reduce_gradients(params: list[torch.nn.Parameter]) -> None:
    """Each gradient <- its mean over the workers; one all-reduce of them all flattened."""
    _, workers = world()
    if workers == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= workers
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()


def reduce_sums(sums: dict[str, torch.Tensor], count: int) -> tuple[dict[str, torch.Tensor], int]:
    """The metric sums (`train.MetricSums`) and their image count, added over the workers."""
    rank, workers = world()
    if workers == 1 or not sums:
        return sums, count
    names = sorted(sums)
    flat = torch.cat([torch.as_tensor(sums[n], dtype=torch.float64).reshape(-1) for n in names] +
                     [torch.tensor([float(count)], dtype=torch.float64, device=sums[names[0]].device)])
    dist.all_reduce(flat)
    reduced, offset = {}, 0
    for n in names:
        size = sums[n].numel()
        reduced[n] = flat[offset: offset + size].view_as(sums[n]).to(sums[n].dtype)
        offset += size
    return reduced, int(flat[-1].item())


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the whole batch over every worker
    (two all-reduces with gradients: the mean, then the variance about it); the running
    statistics follow them as in `nn.BatchNorm*d`, the same in every worker. Without a process
    group, or in eval mode, it is the plain BatchNorm it replaced. torch's SyncBatchNorm is
    for GPUs only; this one also runs on gloo (the CPU)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, workers = world()
        if workers == 1 or not self.training or not self.track_running_stats or self.momentum is None:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=torch.float32)
        total = all_reduce_with_grad(torch.cat([xf.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = xf - mean.view(shape)
        var = all_reduce_with_grad((centred * centred).sum(dims)) / n
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            unbiased = var.detach() * n / (n - 1).clamp(min=1)
            self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def globalise_batch_norm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm layer a `GlobalBatchNorm` of the same settings and state."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            child.__class__ = GlobalBatchNorm
        else:
            globalise_batch_norm(child)
    return module


def free_address() -> tuple[str, int]:
    """This machine's address and a free TCP port, for rank 0's process-group rendezvous."""
    import ray

    host = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
    with socket.socket() as s:
        s.bind(("", 0))
        return host, s.getsockname()[1]


def join(host: str, port: int, rank: int, workers: int, device: torch.device) -> None:
    """Join the trial's process group: gloo on the CPU, NCCL on GPUs."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=rank, world_size=workers)


def leave() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
