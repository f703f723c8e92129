"""Pure-PyTorch reference implementations: the spec, the fallback, the test oracle.

Every fused backend (``cpp``, ``triton``, ``cuda``) is checked against these functions.
They favour being an obviously-correct transcription of the paper over speed, and they
may materialise everything (the full logits matrix, every pairwise tube intersection).

Box contract (docs/design.md §2): a view box is 7 floats ``(t0, t1, y0, y1, x0, x1, flip)`` in
the *source video's* normalised coordinates. A feature grid ``(T, H, W)`` splits the box
evenly; cells are flattened t-major, then h, then w. When ``flip`` is 1 the view is mirrored,
so feature column ``w`` covers the source x-range of column ``W-1-w`` of the unflipped view.
"""

from __future__ import annotations

import torch

__all__ = [
    "cell_bounds_ref",
    "correspondence_ref",
    "region_contrast_ref",
    "region_contrast_fwd_ref",
    "region_contrast_bwd_ref",
]


def cell_bounds_ref(boxes: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """Source-coordinate extent of every feature cell of every box.

    boxes: [P, 7] float. grid: (T, H, W). Returns [P, T*H*W, 6] with
    ``(t_lo, t_hi, y_lo, y_hi, x_lo, x_hi)`` per cell, cells flattened t, h, w.
    """
    T, H, W = grid
    P = boxes.shape[0]
    b = boxes.to(torch.float64)
    dev = boxes.device

    def edges(lo, hi, n):
        # [P, n] lower and upper edges of n equal segments of [lo, hi]
        k = torch.arange(n, device=dev, dtype=torch.float64)
        step = (hi - lo)[:, None] / n
        return lo[:, None] + step * k, lo[:, None] + step * (k + 1)

    t_lo, t_hi = edges(b[:, 0], b[:, 1], T)
    y_lo, y_hi = edges(b[:, 2], b[:, 3], H)
    x_lo, x_hi = edges(b[:, 4], b[:, 5], W)
    # A mirrored view's column w shows the source content of unflipped column W-1-w.
    flip = b[:, 6:7] > 0.5
    x_lo, x_hi = (
        torch.where(flip, x_lo.flip(1), x_lo),
        torch.where(flip, x_hi.flip(1), x_hi),
    )
    shape = (P, T, H, W)
    out = torch.stack(
        [
            t_lo[:, :, None, None].expand(shape),
            t_hi[:, :, None, None].expand(shape),
            y_lo[:, None, :, None].expand(shape),
            y_hi[:, None, :, None].expand(shape),
            x_lo[:, None, None, :].expand(shape),
            x_hi[:, None, None, :].expand(shape),
        ],
        dim=-1,
    )
    return out.reshape(P, T * H * W, 6)


def correspondence_ref(
    clip_boxes: torch.Tensor,
    video_boxes: torch.Tensor,
    clip_grid: tuple[int, int, int],
    video_grid: tuple[int, int, int],
) -> torch.Tensor:
    """Tube-intersection correspondence, supplementary eq. 1-5, written literally.

    S[p, i, j] = |tube(clip p, cell i) ∩ tube(video of clip p, cell j)| / |tube(clip p, cell i)|

    clip_boxes, video_boxes: [P, 7] (the video box of clip p sits in row p).
    Returns float32 [P, Tc*H*W, Tv*Hv*Wv]. A degenerate clip cell (zero volume) gets a zero row.
    Computed in float64 and rounded once.
    """
    c = cell_bounds_ref(clip_boxes, clip_grid)[:, :, None, :]  # [P, Nc, 1, 6]
    v = cell_bounds_ref(video_boxes, video_grid)[:, None, :, :]  # [P, 1, Nv, 6]
    inter_t = (torch.minimum(c[..., 1], v[..., 1]) - torch.maximum(c[..., 0], v[..., 0])).clamp_min(0)
    inter_h = (torch.minimum(c[..., 3], v[..., 3]) - torch.maximum(c[..., 2], v[..., 2])).clamp_min(0)
    inter_w = (torch.minimum(c[..., 5], v[..., 5]) - torch.maximum(c[..., 4], v[..., 4])).clamp_min(0)
    inter = inter_t * inter_h * inter_w
    vol = (c[..., 1] - c[..., 0]) * (c[..., 3] - c[..., 2]) * (c[..., 5] - c[..., 4])
    s = torch.where(vol > 0, inter / vol.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return s.to(torch.float32)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the fused building blocks: float64 stays, everything else float32.
    The one definition: the ops' autograd function and the fake kernels use it too."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _all_keys(keys: torch.Tensor, queue: torch.Tensor | None) -> torch.Tensor:
    return keys if queue is None else torch.cat([keys, queue.to(keys.dtype)], 0)


def region_contrast_ref(
    queries: torch.Tensor,
    keys: torch.Tensor,
    targets: torch.Tensor,
    owner: torch.Tensor,
    tau: float = 0.07,
    queue: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Soft-target spatio-temporal region contrast, paper eq. 3-4, materialising the logits.

    queries [P*Nc, D], keys [B*Nv, D], targets [P, Nc, Nv], owner [P] int64, queue [Nq, D].
    l[i, j] = <q_i, k_j> / tau over all B*Nv keys, then the queue (which gets no gradient).
    loss_i = sum_j S_i(j) * (LSE_i - l[i, j]), with S_i placed on the owner video's block.
    Computed in the inputs' own dtype (a bf16 input gives a bf16 computation: that is the
    "reference in the test dtype" of the tolerance rule); the per-row losses are summed in at
    least float32 and returned as such. Autograd gives the gradients.
    """
    P, Nc, Nv = targets.shape
    ct = queries.dtype
    q = queries
    k_all = _all_keys(keys, None if queue is None else queue.detach().to(ct))
    logits = q @ k_all.t() / tau  # [M, N + Nq]
    logp = torch.log_softmax(logits, dim=-1)
    # Place each clip's soft target on its owner video's key block.
    N_total = k_all.shape[0]
    acc = torch.promote_types(ct, torch.float32)  # targets are never rounded to a half type
    dense = torch.zeros(P, Nc, N_total, dtype=acc, device=queries.device)
    cols = owner.to(torch.int64)[:, None] * Nv + torch.arange(Nv, device=queries.device)  # [P, Nv]
    dense.scatter_(2, cols[:, None, :].expand(P, Nc, Nv), targets.detach().to(acc))
    loss = -(dense.reshape(P * Nc, N_total) * logp.to(acc)).sum(-1)
    return reduce_loss(loss, reduction)


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """The per-row losses reduced as ``reduction`` says (the ops' autograd function uses it too)."""
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


# ---------------------------------------------------------------------------------------------
# The two dense building blocks every fused backend implements (see ctrlaug/ops/region_contrast.py
# for how they compose into the loss and its gradients). These reference versions materialise.
# ---------------------------------------------------------------------------------------------


def region_contrast_fwd_ref(
    queries: torch.Tensor,
    keys: torch.Tensor,
    queue: torch.Tensor | None,
    tau: float,
    with_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row statistics of the dense logits l = q k^T / tau over [keys; queue].

    Returns ``lse`` [M] and ``o`` [M, D] (float32; float64 for float64 inputs) with
    ``o_i = sum_j softmax(l_i)_j k_j`` (the softmax-weighted key average, which is the dense
    part of dloss/dq), or an empty [0, D] tensor when ``with_grad`` is False.
    """
    acc = acc_dtype(queries.dtype)
    q = queries.to(acc)
    k_all = _all_keys(keys.to(acc), None if queue is None else queue.to(acc))
    logits = q @ k_all.t() / tau
    lse = torch.logsumexp(logits, dim=-1)
    if with_grad:
        o = torch.softmax(logits, dim=-1) @ k_all
    else:
        o = queries.new_empty((0, queries.shape[1]), dtype=acc)
    return lse, o


def region_contrast_bwd_ref(
    queries: torch.Tensor,
    keys: torch.Tensor,
    lse: torch.Tensor,
    coef: torch.Tensor,
    tau: float,
) -> torch.Tensor:
    """Dense part of dloss/dkeys for the in-batch keys (the queue gets no gradient).

    ``dk_j = (1/tau) * sum_i coef_i * exp(l_ij - lse_i) * q_i`` for every key j of ``keys``.
    queries [M, D], keys [N, D], lse [M], coef [M]. Returns [N, D] float32 (float64 for float64).
    """
    acc = acc_dtype(queries.dtype)
    q = queries.to(acc)
    p = torch.exp(q @ keys.to(acc).t() / tau - lse.to(acc)[:, None])  # [M, N]
    return (p * coef.to(acc)[:, None]).t() @ q / tau
