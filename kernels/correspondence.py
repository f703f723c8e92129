"""Triton kernel for the clip-cell / video-cell correspondence matrix (docs/design.md §2).

``S[p, i, j] = |tube(clip p, cell i) ∩ tube(video of clip p, cell j)| / |tube(clip p, cell i)|``

Spec and oracle: ``ctrlaug.ops.reference.correspondence_ref``. One launch covers the whole batch:
the grid is (P, row blocks of the clip cells, column blocks of the video cells); every program
rebuilds the cell extents of its rows and columns from the two 7-float boxes of clip p (no
intermediate tensors), intersects them in 1-D per axis and writes one [BLOCK_I, BLOCK_J] tile.

Numerics: the cell geometry is computed in float64 with the same operation order as the
reference (``step = (hi - lo) / n``, ``edge_k = lo + step * k``) and rounded to float32 once at
the store, so the kernel agrees with the float64 truth to float32 rounding. Doing this in float32
would lose ~1e-7 absolute per edge, which, divided by a small clip cell's volume, reaches ~1e-5
relative error. The op is tiny (P * Nc * Nv values with a handful of flops each), so the float64
cost is irrelevant even on GPUs with slow float64 (timing: bench/RESULTS.md).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["correspondence"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@triton.jit
def _cell_extents(box_ptr, idx, NT: tl.constexpr, NH: tl.constexpr, NW: tl.constexpr):
    """Source-coordinate extent (t_lo, t_hi, y_lo, y_hi, x_lo, x_hi) of flattened cells ``idx``.

    ``box_ptr`` points at one 7-float box; the grid (NT, NH, NW) splits it evenly; cells are
    flattened t, h, w. Float64 throughout (see module docstring).
    """
    t0 = tl.load(box_ptr + 0).to(tl.float64)
    t1 = tl.load(box_ptr + 1).to(tl.float64)
    y0 = tl.load(box_ptr + 2).to(tl.float64)
    y1 = tl.load(box_ptr + 3).to(tl.float64)
    x0 = tl.load(box_ptr + 4).to(tl.float64)
    x1 = tl.load(box_ptr + 5).to(tl.float64)
    flip = tl.load(box_ptr + 6).to(tl.float64)

    ct = idx // (NH * NW)
    ch = (idx // NW) % NH
    cw = idx % NW
    # A mirrored view's column w shows the source content of unflipped column NW-1-w. Written as
    # arithmetic, not tl.where: selects on 1-D slices of a 2-D layout are fragile in triton 3.6.
    is_flip = (flip > 0.5).to(tl.int32)
    cw = cw + is_flip * (NW - 1 - 2 * cw)

    step_t = (t1 - t0) / NT
    step_y = (y1 - y0) / NH
    step_x = (x1 - x0) / NW
    ft = ct.to(tl.float64)
    fh = ch.to(tl.float64)
    fw = cw.to(tl.float64)
    return (
        t0 + step_t * ft,
        t0 + step_t * (ft + 1.0),
        y0 + step_y * fh,
        y0 + step_y * (fh + 1.0),
        x0 + step_x * fw,
        x0 + step_x * (fw + 1.0),
    )


@triton.jit
def _correspondence_kernel(
    clip_ptr,  # [P, 7] clip boxes (any float dtype), row stride 7
    video_ptr,  # [P, 7] video boxes, row p = the video of clip p
    out_ptr,  # [P, NC, NV] float32
    TC: tl.constexpr,
    HC: tl.constexpr,
    WC: tl.constexpr,
    TV: tl.constexpr,
    HV: tl.constexpr,
    WV: tl.constexpr,
    BLOCK_I: tl.constexpr,
    BLOCK_J: tl.constexpr,
):
    NC: tl.constexpr = TC * HC * WC
    NV: tl.constexpr = TV * HV * WV
    p = tl.program_id(0).to(tl.int64)
    offs_i = tl.program_id(1) * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_j = tl.program_id(2) * BLOCK_J + tl.arange(0, BLOCK_J)
    mask_i = offs_i < NC
    mask_j = offs_j < NV

    # Padded rows/columns compute harmless geometry for out-of-range cell indices; they are
    # masked at the store only.
    c_tlo, c_thi, c_ylo, c_yhi, c_xlo, c_xhi = _cell_extents(clip_ptr + p * 7, offs_i, TC, HC, WC)
    v_tlo, v_thi, v_ylo, v_yhi, v_xlo, v_xhi = _cell_extents(video_ptr + p * 7, offs_j, TV, HV, WV)

    # 1-D overlaps clamped at 0, exactly as the reference: [BLOCK_I, BLOCK_J] each.
    inter_t = tl.minimum(c_thi[:, None], v_thi[None, :]) - tl.maximum(c_tlo[:, None], v_tlo[None, :])
    inter_y = tl.minimum(c_yhi[:, None], v_yhi[None, :]) - tl.maximum(c_ylo[:, None], v_ylo[None, :])
    inter_x = tl.minimum(c_xhi[:, None], v_xhi[None, :]) - tl.maximum(c_xlo[:, None], v_xlo[None, :])
    inter_t = tl.maximum(inter_t, 0.0)
    inter_y = tl.maximum(inter_y, 0.0)
    inter_x = tl.maximum(inter_x, 0.0)
    inter = inter_t * inter_y * inter_x

    # Clip-cell volume (signed product, as the reference): a non-positive volume (degenerate or
    # inverted box) gives a zero row instead of inf/nan. Broadcast to the full tile before the
    # selects: triton 3.6 fails to compile (RemoveLayoutConversions) a select on the 1-D
    # row vector here.
    vol = ((c_thi - c_tlo) * (c_yhi - c_ylo) * (c_xhi - c_xlo))[:, None] + tl.zeros_like(inter)
    pos = vol > 0.0
    s = tl.where(pos, inter / tl.where(pos, vol, 1.0), 0.0)

    out_offs = p * (NC * NV) + offs_i.to(tl.int64)[:, None] * NV + offs_j[None, :]
    tl.store(out_ptr + out_offs, s.to(tl.float32), mask=mask_i[:, None] & mask_j[None, :])


def _assert_boxes(clip_boxes: torch.Tensor, video_boxes: torch.Tensor) -> None:
    """Cheap asserts only: ``ctrlaug.ops.correspondence`` validates every argument first."""
    for b in (clip_boxes, video_boxes):
        assert b.dim() == 2 and b.shape[1] == 7, f"boxes must be [P, 7], got {tuple(b.shape)}"
        assert b.dtype in _FLOAT_DTYPES, f"boxes must be floating point, got {b.dtype}"
    assert clip_boxes.shape[0] == video_boxes.shape[0], "one video box per clip box"
    assert clip_boxes.device == video_boxes.device, "boxes on one device"


def _block(n: int, cap: int) -> int:
    return max(2, min(cap, triton.next_power_of_2(n)))


def correspondence(
    clip_boxes: torch.Tensor,
    video_boxes: torch.Tensor,
    clip_grid: tuple[int, int, int],
    video_grid: tuple[int, int, int],
) -> torch.Tensor:
    """Tube-intersection correspondence S [P, Tc*H*W, Tv*Hv*Wv] float32 (one kernel launch).

    clip_boxes, video_boxes: [P, 7] float boxes ``(t0, t1, y0, y1, x0, x1, flip)`` in source
    coordinates (row p of ``video_boxes`` is the video of clip p). clip_grid (Tc, H, W) and
    video_grid (Tv, Hv, Wv) are the feature grids. Rows of degenerate clip cells are zero.
    Tensors must be on a CUDA device, or on CPU with ``TRITON_INTERPRET=1``. The arguments are
    validated by ``ctrlaug.ops.correspondence``; this launcher only asserts.
    """
    _assert_boxes(clip_boxes, video_boxes)
    dev = clip_boxes.device
    assert dev.type == "cuda" or (_INTERPRET and dev.type == "cpu"), f"Triton kernel got device {dev}"
    tc, hc, wc = (int(v) for v in clip_grid)
    tv, hv, wv = (int(v) for v in video_grid)
    assert min(tc, hc, wc, tv, hv, wv) > 0, f"grids must be positive, got {clip_grid} and {video_grid}"
    nc, nv = tc * hc * wc, tv * hv * wv
    P = clip_boxes.shape[0]

    out = torch.empty((P, nc, nv), dtype=torch.float32, device=dev)
    if P == 0:
        return out
    clip_boxes = clip_boxes.contiguous()
    video_boxes = video_boxes.contiguous()
    # Tile: all clip cells of a typical grid (2x4x4 = 32) by up to 128 video cells; big enough
    # that a P-row batch is a single wave of small programs, small enough to keep the float64
    # temporaries (6 + 4 per element) in registers.
    block_i = _block(nc, 32)
    block_j = _block(nv, 128)
    grid = (P, triton.cdiv(nc, block_i), triton.cdiv(nv, block_j))
    _correspondence_kernel[grid](
        clip_boxes, video_boxes, out, tc, hc, wc, tv, hv, wv,
        BLOCK_I=block_i, BLOCK_J=block_j, num_warps=4,
    )  # fmt: skip
    return out
