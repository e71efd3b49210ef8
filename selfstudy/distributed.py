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

import contextlib
import datetime
import socket
from typing import Iterator

import gin
import torch
import torch.distributed as dist
from torch import nn

from selfstudy.data import Batch
from selfstudy.errors import UserError


def world() -> tuple[int, int]:
    """(this worker's rank, the number of workers); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@gin.configurable("workers")
def sync_batch_norm(sync: bool = True) -> bool:
    """`workers.sync = True`: in a trial of several workers, BatchNorm normalises with the
    statistics of the whole batch (`GlobalBatchNorm`), as one worker would; False: of each
    worker's share (torch DDP's default: faster, and the numbers differ from one worker's).
    A method with BatchNorm of its own sub-batches (MoCo's shuffle-BN) keeps it either way."""
    if not isinstance(sync, bool):
        raise UserError(f"workers.sync = {sync!r} must be True or False")
    return sync


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


def broadcast_buffers(modules: tuple[nn.Module, ...]) -> None:
    """Every worker's buffers (BatchNorm running statistics) <- rank 0's, as torch DDP does: with
    `workers.sync = False` each worker's statistics follow its own shares."""
    if world()[1] == 1:
        return
    for module in modules:
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


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


class _SumOverWorkers(torch.autograd.Function):
    """x summed over the workers; its gradient is summed the same way, since every worker's
    loss depends on every worker's x."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _GatherRows(torch.autograd.Function):
    """The rows of every worker's x (equal counts), in rank order; the gradient of this worker's
    rows is their gradient summed over the workers."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        rank, workers = world()
        parts = [torch.empty_like(x) for _ in range(workers)]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = (rank * len(x), (rank + 1) * len(x))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        start, end = ctx.rows
        return grad[start:end]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Every worker's rows of x (its share of a batch), in rank order, with gradients: the whole
    batch, as one worker has it; x itself for one worker. With the gradients averaged over the
    workers (`reduce_gradients`), a loss each worker computes on gathered rows trains as the one
    worker's loss on the whole batch: a mean over its own rows against all rows (contrastive
    negatives), or the same whole-batch loss in every worker (Barlow Twins, VICReg)."""
    if world()[1] == 1:
        return x
    return _GatherRows.apply(x)


@contextlib.contextmanager
def chained_batch_norm(modules: tuple[nn.Module, ...], updates: int) -> Iterator[None]:
    """For BatchNorm over sub-batches (MoCo's shuffle-BN): inside, the BatchNorm layers of
    `modules` in each worker update their running statistics `updates` times, from that
    worker's sub-batches; after, every worker holds the statistics one worker has after all
    workers' sub-batches in rank order. Each update is linear (x <- (1 - m) x + m s), so with
    a = (1 - m)^updates and x0 the statistics before, worker r's x_r = a x0 + d_r and the
    chain gives a^N x0 + sum_r a^(N-1-r) d_r. Nothing to do for one worker or in evaluation."""
    _, workers = world()
    layers = [m for module in modules for m in module.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.momentum is not None]
    if workers == 1 or not layers or not layers[0].training:
        yield
        return
    before = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers]
    yield
    with torch.no_grad():
        decay = [(1 - m.momentum) ** updates for m in layers]
        deltas = torch.cat([torch.cat([m.running_mean - a * x0, m.running_var - a * v0]).double()
                            for m, a, (x0, v0, _) in zip(layers, decay, before)])
        parts = [torch.empty_like(deltas) for _ in range(workers)]
        dist.all_gather(parts, deltas)
        offset = 0
        for m, a, (x0, v0, n0) in zip(layers, decay, before):
            size = m.running_mean.numel()
            chained = sum(a ** (workers - 1 - r) * part[offset: offset + 2 * size] for r, part in enumerate(parts))
            # new tensors, not copies into the old: the forward's graph holds the old ones for backward
            m.running_mean = (a ** workers * x0 + chained[:size]).to(x0.dtype)
            m.running_var = (a ** workers * v0 + chained[size:]).to(v0.dtype)
            m.num_batches_tracked = n0 + workers * updates
            offset += 2 * size


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
        if workers == 1 or not self.training:  # evaluation batches are not shared
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # fp32 under autocast, fp64 as it is
        count = torch.tensor([x.numel() / x.shape[1]], device=x.device, dtype=xf.dtype)
        total = _SumOverWorkers.apply(torch.cat([xf.sum(dims), count]))
        n = total[-1]
        mean = total[:-1] / n
        centred = xf - mean.view(shape)
        var = _SumOverWorkers.apply((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                weight = self.momentum if self.momentum is not None else 1 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), weight)
                unbiased = var.detach() * n / (n - 1).clamp(min=1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), weight)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def globalise_batch_norm(module: nn.Module, keep: tuple[nn.Module, ...] = ()) -> nn.Module:
    """`module` with every BatchNorm layer a `GlobalBatchNorm` of the same settings and state,
    but for those inside the modules `keep`."""
    if any(module is kept for kept in keep):
        return module
    for child in module.children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GlobalBatchNorm):
            child.__class__ = GlobalBatchNorm
        else:
            globalise_batch_norm(child, keep)
    return module


def free_address() -> tuple[str, int]:
    """This machine's address and a free TCP port, for rank 0's process-group rendezvous."""
    import ray

    host = ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1"
    with socket.socket() as s:
        s.bind(("", 0))
        return host, s.getsockname()[1]


JOIN_TIMEOUT = datetime.timedelta(minutes=5)  # a worker that never arrives, or a collective that never ends


def join(host: str, port: int, rank: int, workers: int, device: torch.device) -> None:
    """Join the trial's process group: gloo on the CPU, NCCL on GPUs."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://{host}:{port}", rank=rank, world_size=workers,
                            timeout=JOIN_TIMEOUT)


def leave() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
