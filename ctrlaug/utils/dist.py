"""Distributed helpers: torchrun detection, differentiable all-gather, CPU-capable sync BN.

Every helper degrades to a no-op when ``torch.distributed`` is not initialised or the world has
one process, so the training loop and the losses call them unconditionally.

Feature collectives (the all-gathers of the losses) run on their own process group, created by
:func:`init_distributed`, so they never interleave with DDP's gradient buckets on the default
group.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
import torch.nn as nn

__all__ = [
    "init_distributed",
    "is_dist",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "gather_with_grad",
    "all_gather_nograd",
    "all_reduce_mean",
    "all_gather_object",
    "DistBatchNorm3d",
    "convert_sync_bn",
    "feature_group",
]

_FEATURE_GROUP = None


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def feature_group():
    return _FEATURE_GROUP


def barrier() -> None:
    if is_dist():
        dist.barrier()


def init_distributed(device_type: str) -> tuple[int, int, int]:
    """Initialise the default process group when started by torchrun (``WORLD_SIZE`` > 1).

    Backend: nccl for CUDA, gloo for CPU. Returns ``(rank, world_size, local_rank)``; (0, 1, 0)
    without torchrun.
    """
    global _FEATURE_GROUP
    ws = int(os.environ.get("WORLD_SIZE", "1"))
    if ws <= 1:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        kw = {}
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
            kw["device_id"] = torch.device("cuda", local_rank)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30), **kw)
    if _FEATURE_GROUP is None:
        _FEATURE_GROUP = dist.new_group(backend=dist.get_backend())
    return dist.get_rank(), dist.get_world_size(), local_rank


class _GatherWithGrad(torch.autograd.Function):
    """all_gather along dim 0; the backward sums every rank's gradient for this rank's slice."""

    @staticmethod
    def forward(ctx, x):
        group = _FEATURE_GROUP
        ws = dist.get_world_size(group)
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(ws)]
        dist.all_gather(parts, x, group=group)
        ctx.n, ctx.rank = x.shape[0], dist.get_rank(group)
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        # gloo has no reduce_scatter: all_reduce the whole gradient and keep this rank's slice.
        dist.all_reduce(grad, group=_FEATURE_GROUP)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [n, ...] of every rank in rank order -> [world*n, ...], differentiably.

    Rank r's slice of the result is its own ``x``; the gradient that reaches ``x`` is the sum of
    the gradients that every rank's loss puts on that slice, so with DDP's gradient averaging a
    loss over the gathered batch trains exactly like the same loss on one process. All ranks
    must pass the same shape.
    """
    if not is_dist():
        return x
    return _GatherWithGrad.apply(x)


def all_gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` of every rank along dim 0 (no gradient)."""
    if not is_dist():
        return x
    x = x.detach().contiguous()
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x, group=_FEATURE_GROUP)
    return torch.cat(parts, 0)


def all_gather_object(obj) -> list:
    """``obj`` of every rank, in rank order (picklable objects; default group); ``[obj]`` on one
    process."""
    if not is_dist():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Elementwise max over ranks of a tensor (no gradient); identity on one process."""
    if not is_dist():
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a tensor (no gradient); identity on one process."""
    if not is_dist():
        return x
    x = x.detach().clone()
    dist.all_reduce(x, group=_FEATURE_GROUP)
    return x / world_size()


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.clone()
        dist.all_reduce(x, group=_FEATURE_GROUP)
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=_FEATURE_GROUP)
        return grad


class DistBatchNorm3d(nn.BatchNorm3d):
    """BatchNorm3d whose training statistics span every rank (works on gloo/CPU).

    ``torch.nn.SyncBatchNorm`` only runs on accelerators; this one all-reduces the per-channel
    sums (two passes: mean, then centred squares, differentiably) so a DDP run on CPU normalises
    exactly like one process holding the whole global batch. Identical to BatchNorm3d outside
    training or without a process group.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_dist()):
            return super().forward(x)
        dims = (0, 2, 3, 4)
        count = torch.tensor([x.numel() // x.shape[1]], dtype=torch.float64, device=x.device)
        count = _AllReduceSum.apply(count)
        n = float(count.item())
        xf = x.float()
        mean = _AllReduceSum.apply(xf.sum(dims)) / n
        xc = xf - mean[None, :, None, None, None]
        var = _AllReduceSum.apply((xc * xc).sum(dims)) / n
        y = xc * torch.rsqrt(var + self.eps)[None, :, None, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None, None] + self.bias[None, :, None, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * (n / max(n - 1.0, 1.0))
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return y.to(x.dtype)


def convert_sync_bn(module: nn.Module, device_type: str) -> nn.Module:
    """Swap every BatchNorm3d for a synchronised one: torch's SyncBatchNorm on CUDA (NCCL),
    :class:`DistBatchNorm3d` elsewhere. Parameters and running statistics are kept."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group=None)
    out = module
    if isinstance(module, nn.BatchNorm3d) and not isinstance(module, DistBatchNorm3d):
        out = DistBatchNorm3d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        out.load_state_dict(module.state_dict())
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, convert_sync_bn(child, device_type))
    return out
