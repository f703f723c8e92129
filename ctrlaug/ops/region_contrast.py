"""Fused soft-target spatio-temporal region contrast (paper eq. 3-4) with large negative pools.

How the loss is split so the fused backends never materialise the [M, N + Nq] logits
(M = P*Nc query cells, N = B*Nv in-batch keys, Nq queue keys, l = q k^T / tau):

    loss_i = w_i * LSE_i - <q_i, t_i> / tau
    w_i    = sum_v S_i(v)                      (row sum of the soft target, 1 when nested)
    t_i    = sum_v S_i(v) k_{owner(i), v}      (target-weighted key average: a small gather)

Gradients, with g_i = dL/dloss_i:

    dq_i = g_i * (w_i * o_i - t_i) / tau       with o_i = softmax(l_i) @ [keys; queue]
    dk_j = (1/tau) sum_i g_i w_i softmax(l_i)_j q_i  -  (1/tau) sum_{i: owner block} g_i S_i(v) q_i

The dense pieces are two registered ops per backend: ``region_contrast_fwd`` returns LSE and
o in one flash-style pass over the keys (o is the attention output with V = K, so dq costs no
second pass), and ``region_contrast_bwd`` recomputes the logits tile by tile from LSE to form
the dense dk. The target pieces touch only the owner block (Nv keys per row) and run here as
batched matmuls. Forward + backward = 8*M*N*D FLOPs, the same count as the minimal scheme.
"""

from __future__ import annotations

import math

import torch

from . import _registry
from .reference import acc_dtype, reduce_loss, region_contrast_ref

__all__ = ["region_contrast"]

_REDUCTIONS = ("mean", "sum", "none")
_OWNER_DTYPES = (torch.int64, torch.int32)


def _validate(queries, keys, targets, owner, queue, tau, reduction):
    """Every check of the op, once, before a backend is chosen: the backends only assert.

    One exception type per kind of problem: TypeError for a wrong type or dtype, ValueError for
    a wrong shape, size, device or value, IndexError for an owner index out of range.
    """
    for name, t in (("queries", queries), ("keys", keys), ("targets", targets), ("owner", owner)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if queue is not None and not isinstance(queue, torch.Tensor):
        raise TypeError(f"queue must be a torch.Tensor or None, got {type(queue).__name__}")
    if queries.dim() != 2 or keys.dim() != 2:
        raise ValueError(
            f"queries must be [P*Nc, D] and keys [B*Nv, D]; got queries {tuple(queries.shape)}, "
            f"keys {tuple(keys.shape)}"
        )
    if targets.dim() != 3:
        raise ValueError(f"targets must be [P, Nc, Nv] (from correspondence), got {tuple(targets.shape)}")
    P, Nc, Nv = targets.shape
    M, D = queries.shape
    if P == 0 or Nc == 0 or Nv == 0 or D == 0:
        raise ValueError(f"empty input: targets {tuple(targets.shape)}, queries {tuple(queries.shape)}")
    if M != P * Nc:
        raise ValueError(f"queries has {M} rows but targets {tuple(targets.shape)} implies P*Nc = {P * Nc}")
    if keys.shape[1] != D:
        raise ValueError(f"feature dim mismatch: queries D={D}, keys D={keys.shape[1]}")
    if keys.shape[0] % Nv != 0 or keys.shape[0] == 0:
        raise ValueError(
            f"keys has {keys.shape[0]} rows, not a positive multiple of Nv={Nv} (targets' last dim)"
        )
    if owner.shape != (P,):
        raise ValueError(f"owner must have shape [P] = [{P}], got {tuple(owner.shape)}")
    if owner.dtype not in _OWNER_DTYPES:
        raise TypeError(f"owner must be an int64 or int32 tensor, got {owner.dtype}")
    if queries.dtype not in _registry.FEATURE_DTYPES:
        raise TypeError(f"queries dtype must be one of {_registry.FEATURE_DTYPES}, got {queries.dtype}")
    if keys.dtype != queries.dtype:
        raise TypeError(f"queries and keys must share a dtype, got {queries.dtype} and {keys.dtype}")
    if not targets.is_floating_point():
        raise TypeError(f"targets must be floating point, got {targets.dtype}")
    dev = queries.device
    for name, t in (("keys", keys), ("targets", targets), ("owner", owner)):
        if t.device != dev:
            raise ValueError(f"{name} is on {t.device} but queries on {dev}")
    if queue is not None:
        if queue.dim() != 2 or queue.shape[1] != D:
            raise ValueError(f"queue must be [Nq, {D}], got {tuple(queue.shape)}")
        if not queue.is_floating_point():
            raise TypeError(f"queue must be floating point, got {queue.dtype}")
        if queue.device != dev:
            raise ValueError(f"queue is on {queue.device} but queries on {dev}")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise TypeError(f"tau must be a float, got {type(tau).__name__}")
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive finite float, got {tau!r}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    B = keys.shape[0] // Nv
    # One tiny host sync; skipped while torch.compile traces (it cannot be data-dependent there).
    if not torch.compiler.is_compiling() and owner.numel() > 0:
        lo, hi = torch.stack(torch.aminmax(owner)).tolist()
        if lo < 0 or hi >= B:
            raise IndexError(
                f"owner values must lie in [0, {B}) (B = keys rows / Nv), got min {lo}, max {hi}"
            )


def _expand_grad(grad: torch.Tensor, M: int, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    g = grad.to(dtype)
    if reduction == "none":
        return g
    if reduction == "mean":
        g = g / M
    return g.expand(M)


class _RegionContrast(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries, keys, targets, owner, queue, tau, reduction, backend):
        P, Nc, Nv = targets.shape
        M, D = queries.shape
        acc = acc_dtype(queries.dtype)
        need_dq = ctx.needs_input_grad[0]
        queries = queries.contiguous()
        keys = keys.contiguous()
        if queue is not None:
            queue = queue.detach().to(queries.dtype).contiguous()
        fwd = _registry.op_handle(backend, "region_contrast_fwd")
        lse, o = fwd(queries, keys, queue, float(tau), bool(need_dq))
        S = targets.detach().to(acc)
        owner = owner.to(torch.int64)
        kblk = keys.view(-1, Nv, D).index_select(0, owner).to(acc)  # [P, Nv, D]: each clip's owner block
        t = torch.bmm(S, kblk).view(M, D)  # target-weighted key sums
        w = S.sum(-1).view(M)
        loss = w * lse - (queries.to(acc) * t).sum(-1) / tau
        ctx.save_for_backward(queries, keys, S, owner, lse, o, t, w)
        ctx.tau, ctx.reduction, ctx.backend = float(tau), reduction, backend
        return reduce_loss(loss, reduction)

    @staticmethod
    def backward(ctx, grad):
        queries, keys, S, owner, lse, o, t, w = ctx.saved_tensors
        tau = ctx.tau
        P, Nc, Nv = S.shape
        M, D = queries.shape
        g = _expand_grad(grad, M, ctx.reduction, lse.dtype)
        dq = dk = None
        if ctx.needs_input_grad[0]:
            dq = ((g * w)[:, None] * o - g[:, None] * t) / tau
            dq = dq.to(queries.dtype)
        if ctx.needs_input_grad[1]:
            bwd = _registry.op_handle(ctx.backend, "region_contrast_bwd")
            dk = bwd(queries, keys, lse, (g * w).contiguous(), tau)  # dense part, [N, D]
            gq = (g[:, None] * queries.to(lse.dtype)).view(P, Nc, D)
            tgt = torch.bmm(S.transpose(1, 2), gq)  # [P, Nv, D]: target part, owner block only
            # in place: dk is the op's fresh output, so no [N, D] copy
            dk.view(-1, Nv, D).index_add_(0, owner, tgt, alpha=-1.0 / tau)
            dk = dk.to(keys.dtype)
        return dq, dk, None, None, None, None, None, None


def region_contrast(
    queries: torch.Tensor,
    keys: torch.Tensor,
    targets: torch.Tensor,
    owner: torch.Tensor,
    *,
    tau: float = 0.07,
    queue: torch.Tensor | None = None,
    reduction: str = "mean",
    backend: str = "auto",
) -> torch.Tensor:
    """Soft-target region contrast L_rc (paper eq. 3-4) over a large negative pool.

    For query cell i of clip p (row ``p*Nc + c``) and every key j of the pool (all B*Nv global
    cells of the batch, then the queue): l[i, j] = <q_i, k_j> / tau and

        loss_i = sum_j S_i(j) * (LSE_i - l[i, j]),

    where S_i = ``targets[p, c]`` sits on the block of video ``owner[p]`` and is zero elsewhere.
    Features are expected L2-normalised (the paper's cosine similarity); the op does not
    normalise.

    Args:
        queries: [P*Nc, D] clip-cell features, clip p's Nc cells contiguous. float32/bf16/fp16
            (float64 on the reference and cpp backends; what each backend takes, D included:
            ``ctrlaug.ops._registry.CAPABILITIES``, which "auto" follows).
        keys: [B*Nv, D] global-view cell features, video b's Nv cells contiguous, same dtype.
        targets: [P, Nc, Nv] soft targets from :func:`ctrlaug.ops.correspondence`. No gradient.
        owner: [P] int64 or int32, the video index (in [0, B)) of clip p.
        tau: temperature > 0 (0.07 by default: the paper gives no value; our choice).
        queue: optional [Nq, D] extra negatives (e.g. a memory bank). No gradient.
        reduction: "mean" over rows, "sum", or "none" (returns [P*Nc]).
        backend: "auto", "reference", "cpp", "triton" or "cuda".

    Returns:
        The loss in float32 (float64 for float64 inputs). Gradients flow to ``queries`` and
        ``keys`` (accumulated in float32 for half inputs), never to ``targets`` or ``queue``.
        Fused backends keep O((M + N) * D) extra memory: the logits are never materialised.
    """
    _validate(queries, keys, targets, owner, queue, tau, reduction)
    chosen = _registry.resolve(
        backend, queries.device, "region_contrast_fwd", queries.dtype, queries.shape[1]
    )
    if chosen == "reference":
        return region_contrast_ref(queries, keys, targets, owner, tau=tau, queue=queue, reduction=reduction)
    return _RegionContrast.apply(queries, keys, targets, owner, queue, float(tau), reduction, chosen)
