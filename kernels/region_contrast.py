"""Triton kernels for the dense part of the region-contrast loss (docs/design.md §2).

Two building blocks, specified by ``ctrlaug.ops.reference.region_contrast_{fwd,bwd}_ref``:

- forward: per query row i, ``lse_i = logsumexp_j l_ij`` with ``l_ij = <q_i, k_j> / tau`` over
  the N in-batch keys and then the Nq queue rows, and (``with_grad``) ``o_i = softmax(l_i) @
  [keys; queue]``. This is a flash-attention forward with V = K: the [M, N + Nq] logits are
  never materialised.
- backward: ``dk_j = (1/tau) * sum_i coef_i * exp(l_ij - lse_i) * q_i`` for the in-batch keys
  (the queue gets no gradient). One program per block of keys walks over every query tile and
  accumulates ``P^T @ Q`` in registers: no atomics, deterministic.

Numerics
--------
- Logits live in base-2 units: ``s = (q . k) * log2(e) / tau`` (one fp32 multiply folded into
  the max/exp2 update, fused into an FMA by the compiler), so every exponential is ``exp2``.
  ``lse`` is converted back to natural-log units once at the store (``(m + log2 l) * ln 2``).
  The backward forms ``l - lse`` in natural units first (one FMA, ``s * (1/tau) - lse``) and
  only then scales by log2(e), rather than ``s * (log2(e)/tau) - lse * log2(e)``: the
  cancellation of ``l - lse`` then happens before the extra rounding of the scale, at the cost
  of one extra multiply per element.
- Online softmax: running row max ``m`` (init -inf) and running sum ``l``; every tile rescales
  by ``exp2(m_old - m_new)``. Every key tile visited has at least one valid column, so ``m`` is
  finite after the first tile and no ``-inf - -inf`` NaN can arise.
- Accumulation is fp32 (``tl.dot`` with an fp32 accumulator). bf16/fp16 inputs feed the tensor
  cores directly; the softmax weights are cast to the input dtype for the second matmul (the
  usual flash-attention trade): ``lse`` keeps fp32 accuracy, while ``o`` and ``dk`` carry the
  rounding of the weights to the input dtype, so half-precision tests need a tolerance of that
  dtype's size. fp32 inputs use TF32 tensor cores unless ``precise=True``, which
  selects exact IEEE fp32 products (``input_precision="ieee"``; the keyword exists in triton
  3.0 onwards, ``allow_tf32`` is deprecated).
- Masking: key tiles are split into full tiles (no masks in the hot loop) and one masked tail
  tile whose padded columns get logit ``-inf`` (weight exactly 0). Padded query rows load q = 0
  and, in the backward, ``coef = 0`` and ``lse = 0``, so they add exactly 0 to dk. D is padded
  to the next power of two (>= 16, the smallest ``tl.dot`` size) with zero-filled loads; the
  D mask is compiled out when D is already a power of two.
- Index arithmetic: row offsets are cast to int64 before the multiply by the row stride, so
  M * D, N * D beyond 2^31 are safe.

Tiling
------
Forward: a program owns BLOCK_M query rows, keeps its q tile in registers and streams
[BLOCK_N, D] tiles of keys, then of the queue (two base pointers, no concatenation).
Backward: a program owns BLOCK_N keys (k tile and fp32 dk accumulator in registers) and streams
[BLOCK_M, D] query tiles; the logits are recomputed transposed (``k @ q^T``) so that ``P^T``
comes out of the MMA already in the layout the second MMA (``P^T @ Q``) wants.
On GPU the block sizes come from a short ``triton.autotune`` list keyed on D (and, implicitly,
the input dtypes); the candidates are the usual flash-attention tiles for sm_80/sm_90 and are
pruned by a shared-memory estimate before benchmarking (``CTRLAUG_TRITON_AUTOTUNE=0`` skips the
benchmarking and takes the first candidate that fits). Under ``TRITON_INTERPRET=1`` autotune
is off and one fixed large tile is used (``_INTERP_BLOCK_M/_N``) because the interpreter's cost
is per program and per loop iteration. Timings, the configs autotune picked and the largest
shapes run: bench/RESULTS.md.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

__all__ = ["region_contrast_fwd", "region_contrast_bwd", "MAX_D"]

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MAX_D = 256  # largest feature width the register-resident tiles are designed for

_LOG2E = 1.4426950408889634  # log2(e)

# Fixed tiles for the interpreter (module attributes so tests can shrink them to exercise the
# full-tile and tail paths at tiny shapes).
_INTERP_BLOCK_M = 64
_INTERP_BLOCK_N = 64

# Shared memory assumed available per program when pruning autotune candidates: below the
# per-block limit of the sm_80 / sm_90 GPUs these tiles target, with headroom left for the
# layout-conversion scratch.
_SMEM_BUDGET = 160 * 1024


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------


@triton.jit
def _load_rows(
    base,
    row0,
    n_rows,
    stride,
    offs_r,
    offs_d,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASK_R: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """Load rows ``row0 + offs_r`` (columns ``offs_d``) of a row-major [n_rows, D] matrix.

    Out-of-range rows (only checked when MASK_R) and padded columns (only when D < BLOCK_D)
    read as 0. UPCAST converts to fp32 (interpreter: its bf16/fp16 ``tl.dot`` is wrong).
    """
    rows = row0 + offs_r
    ptrs = base + rows.to(tl.int64)[:, None] * stride + offs_d[None, :]
    if MASK_R:
        if BLOCK_D != D:
            x = tl.load(ptrs, mask=(rows < n_rows)[:, None] & (offs_d < D)[None, :], other=0.0)
        else:
            x = tl.load(ptrs, mask=(rows < n_rows)[:, None], other=0.0)
    else:
        if BLOCK_D != D:
            x = tl.load(ptrs, mask=(offs_d < D)[None, :], other=0.0)
        else:
            x = tl.load(ptrs)
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _fwd_tile(
    q,
    acc,
    m_i,
    l_i,
    base,
    row0,
    n_rows,
    stride,
    qk_scale,
    offs_n,
    offs_d,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASK_N: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """One online-softmax step over key rows ``row0 .. row0 + BLOCK_N`` of one key matrix."""
    k = _load_rows(base, row0, n_rows, stride, offs_n, offs_d, D, BLOCK_D, MASK_N, UPCAST)
    s = tl.dot(q, tl.trans(k), input_precision=INPUT_PRECISION)  # raw q.k, fp32 [BLOCK_M, BLOCK_N]
    if MASK_N:
        s = tl.where((row0 + offs_n < n_rows)[None, :], s, float("-inf"))
    # Base-2 units: s * qk_scale with qk_scale = log2(e)/tau > 0, so max commutes with the scale.
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s * qk_scale - m_new[:, None])  # masked columns: exp2(-inf) = 0
    l_i = l_i * alpha + tl.sum(p, 1)
    if WITH_GRAD:
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(k.dtype), k, acc, input_precision=INPUT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _fwd_pool(
    q,
    acc,
    m_i,
    l_i,
    base,
    n_rows,
    stride,
    qk_scale,
    offs_n,
    offs_d,
    D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """Stream every row of one key matrix: unmasked full tiles, then one masked tail tile."""
    n_full = (n_rows // BLOCK_N) * BLOCK_N
    for row0 in range(0, n_full, BLOCK_N):
        acc, m_i, l_i = _fwd_tile(
            q,
            acc,
            m_i,
            l_i,
            base,
            row0,
            n_rows,
            stride,
            qk_scale,
            offs_n,
            offs_d,
            D,
            BLOCK_D,
            False,
            WITH_GRAD,
            UPCAST,
            INPUT_PRECISION,
        )
    if n_full < n_rows:
        acc, m_i, l_i = _fwd_tile(
            q,
            acc,
            m_i,
            l_i,
            base,
            n_full,
            n_rows,
            stride,
            qk_scale,
            offs_n,
            offs_d,
            D,
            BLOCK_D,
            True,
            WITH_GRAD,
            UPCAST,
            INPUT_PRECISION,
        )
    return acc, m_i, l_i


@triton.jit
def _region_contrast_fwd_kernel(
    q_ptr, k_ptr, kq_ptr, lse_ptr, o_ptr,
    M, N, NQ,
    stride_q, stride_k, stride_kq, stride_o,
    qk_scale,  # log2(e) / tau
    D: tl.constexpr,
    WITH_GRAD: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    row0 = pid * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    # Padded query rows read q = 0: their statistics are finite garbage, never stored.
    q = _load_rows(q_ptr, row0, M, stride_q, offs_m, offs_d, D, BLOCK_D, True, UPCAST)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # In-batch keys, then the queue: one softmax over the concatenation without building it.
    acc, m_i, l_i = _fwd_pool(
        q,
        acc,
        m_i,
        l_i,
        k_ptr,
        N,
        stride_k,
        qk_scale,
        offs_n,
        offs_d,
        D,
        BLOCK_N,
        BLOCK_D,
        WITH_GRAD,
        UPCAST,
        INPUT_PRECISION,
    )
    acc, m_i, l_i = _fwd_pool(
        q,
        acc,
        m_i,
        l_i,
        kq_ptr,
        NQ,
        stride_kq,
        qk_scale,
        offs_n,
        offs_d,
        D,
        BLOCK_N,
        BLOCK_D,
        WITH_GRAD,
        UPCAST,
        INPUT_PRECISION,
    )

    rows = row0 + offs_m
    row_mask = rows < M
    # Back to natural-log units: lse = ln(sum_j e^{l_ij}) = (m + log2 l) * ln 2.
    lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
    tl.store(lse_ptr + rows.to(tl.int64), lse, mask=row_mask)
    if WITH_GRAD:
        o = acc / l_i[:, None]
        o_ptrs = o_ptr + rows.to(tl.int64)[:, None] * stride_o + offs_d[None, :]
        tl.store(o_ptrs, o, mask=row_mask[:, None] & (offs_d < D)[None, :])


# ---------------------------------------------------------------------------------------------
# Backward (dk)
# ---------------------------------------------------------------------------------------------


@triton.jit
def _bwd_tile(
    k,
    dk,
    q_ptr,
    lse_ptr,
    coef_ptr,
    row0,
    M,
    stride_q,
    inv_tau,
    offs_m,
    offs_d,
    D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    MASK_M: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """dk += (coef * exp(l - lse))^T @ q for query rows ``row0 .. row0 + BLOCK_M``."""
    q = _load_rows(q_ptr, row0, M, stride_q, offs_m, offs_d, D, BLOCK_D, MASK_M, UPCAST)
    rows = (row0 + offs_m).to(tl.int64)
    if MASK_M:
        # Padded rows: q = 0, lse = 0, coef = 0  ->  weight exp2(0) * 0 = 0 exactly.
        rmask = (row0 + offs_m) < M
        lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
        coef = tl.load(coef_ptr + rows, mask=rmask, other=0.0)
    else:
        lse = tl.load(lse_ptr + rows)
        coef = tl.load(coef_ptr + rows)
    # Transposed logits tile [BLOCK_N, BLOCK_M]; weights exp(l - lse) <= 1 (up to rounding).
    s_t = tl.dot(k, tl.trans(q), input_precision=INPUT_PRECISION)
    p_t = tl.exp2((s_t * inv_tau - lse[None, :]) * 1.4426950408889634) * coef[None, :]
    dk = tl.dot(p_t.to(q.dtype), q, dk, input_precision=INPUT_PRECISION)
    return dk


@triton.jit
def _region_contrast_bwd_kernel(
    q_ptr, k_ptr, lse_ptr, coef_ptr, dk_ptr,
    M, N,
    stride_q, stride_k, stride_dk,
    inv_tau,  # 1 / tau
    D: tl.constexpr,
    UPCAST: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0)
    krow0 = pid * BLOCK_N
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)

    # Padded key rows read k = 0; their dk rows are never stored.
    k = _load_rows(k_ptr, krow0, N, stride_k, offs_n, offs_d, D, BLOCK_D, True, UPCAST)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    m_full = (M // BLOCK_M) * BLOCK_M
    for row0 in range(0, m_full, BLOCK_M):
        dk = _bwd_tile(
            k,
            dk,
            q_ptr,
            lse_ptr,
            coef_ptr,
            row0,
            M,
            stride_q,
            inv_tau,
            offs_m,
            offs_d,
            D,
            BLOCK_D,
            False,
            UPCAST,
            INPUT_PRECISION,
        )
    if m_full < M:
        dk = _bwd_tile(
            k,
            dk,
            q_ptr,
            lse_ptr,
            coef_ptr,
            m_full,
            M,
            stride_q,
            inv_tau,
            offs_m,
            offs_d,
            D,
            BLOCK_D,
            True,
            UPCAST,
            INPUT_PRECISION,
        )

    rows = krow0 + offs_n
    dk_ptrs = dk_ptr + rows.to(tl.int64)[:, None] * stride_dk + offs_d[None, :]
    tl.store(dk_ptrs, dk * inv_tau, mask=(rows < N)[:, None] & (offs_d < D)[None, :])


# ---------------------------------------------------------------------------------------------
# Autotuning (GPU only)
# ---------------------------------------------------------------------------------------------


def _smem_filter(configs, rows_name: str, stream_name: str, elt: int, block_d: int) -> list:
    """Candidates whose resident tile + pipelined stream tiles fit the shared-memory budget.

    A rough estimate (the resident tile may live in registers); configs that still fail to
    compile are skipped by the autotuner. Never empty: D = 256 in fp32 falls back to 64 x 32.
    """
    kept = []
    for cfg in configs:
        resident = cfg.kwargs[rows_name] * block_d * elt
        stream = cfg.kwargs[stream_name] * block_d * elt * max(cfg.num_stages - 1, 1)
        if resident + stream <= _SMEM_BUDGET:
            kept.append(cfg)
    if not kept:
        kept = [triton.Config({rows_name: 64, stream_name: 32}, num_warps=4, num_stages=2)]
    return kept


def _prune_by_smem(rows_name: str, stream_name: str):
    def prune(configs, named_args, **kwargs):
        q = named_args.get("q_ptr")
        elt = q.element_size() if q is not None else 2
        block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 128))
        return _smem_filter(configs, rows_name, stream_name, elt, block_d)

    return prune


def _cfg(bm, bn, warps, stages):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=warps, num_stages=stages)


# Forward: FA2-style tiles (q resident, keys streamed). 128x64 with 8 warps comes first, as the
# expected best at D = 128 in half precision (a launch without autotuning takes the first
# candidate that fits); 64-row tiles are there for when M / BLOCK_M programs would leave SMs idle.
_FWD_CONFIGS = [
    _cfg(128, 64, 8, 3),
    _cfg(128, 128, 8, 3),
    _cfg(128, 64, 4, 3),
    _cfg(64, 64, 4, 4),
    _cfg(64, 128, 4, 3),
    _cfg(128, 32, 4, 4),
]
# Backward: a program owns BLOCK_N keys (k + fp32 dk resident) and streams query tiles.
_BWD_CONFIGS = [
    _cfg(64, 128, 8, 3),
    _cfg(128, 128, 8, 3),
    _cfg(64, 128, 4, 3),
    _cfg(64, 64, 4, 4),
    _cfg(128, 64, 4, 3),
    _cfg(32, 128, 4, 4),
]

# Autotune only on GPU, and only when not switched off: CTRLAUG_TRITON_AUTOTUNE=0 launches the
# first candidate that fits shared memory instead (quick GPU test sweeps over many shapes, each of
# which would otherwise benchmark every candidate once per (D, dtype) key).
_AUTOTUNE = not _INTERPRET and os.environ.get("CTRLAUG_TRITON_AUTOTUNE", "1") != "0"

if _AUTOTUNE:  # exact-fp32 launches bypass these wrappers (see _PRECISE_CFG)
    _fwd_kernel = triton.autotune(
        configs=_FWD_CONFIGS,
        key=["D", "WITH_GRAD", "INPUT_PRECISION"],
        prune_configs_by={"early_config_prune": _prune_by_smem("BLOCK_M", "BLOCK_N")},
    )(_region_contrast_fwd_kernel)
    _bwd_kernel = triton.autotune(
        configs=_BWD_CONFIGS,
        key=["D", "INPUT_PRECISION"],
        prune_configs_by={"early_config_prune": _prune_by_smem("BLOCK_N", "BLOCK_M")},
    )(_region_contrast_bwd_kernel)
else:
    _fwd_kernel = _region_contrast_fwd_kernel
    _bwd_kernel = _region_contrast_bwd_kernel


# Exact fp32 (precise=True) is a testing mode: tl.dot with input_precision="ieee" lowers to FMA
# loops fully unrolled over the tile, whose compile time grows with BLOCK_M * BLOCK_N * D. A small
# fixed tile keeps compiles short (compile times: bench/RESULTS.md); speed is irrelevant there,
# so it is never autotuned.
_PRECISE_CFG = dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=2)


def _launch_cfg(configs, rows_name: str, stream_name: str, x: torch.Tensor, block_d: int, prec: str) -> dict:
    """Launch keywords for a non-autotuned launch (interpreter, exact fp32, or autotune off)."""
    if _INTERPRET:
        return dict(BLOCK_M=_INTERP_BLOCK_M, BLOCK_N=_INTERP_BLOCK_N, num_warps=4)
    if prec == "ieee":
        return dict(_PRECISE_CFG)
    cfg = _smem_filter(configs, rows_name, stream_name, x.element_size(), block_d)[0]
    return dict(**cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


# Cheap asserts only: ``ctrlaug.ops.region_contrast`` validates every argument (and resolves the
# backend against the capability table, D <= MAX_D and the dtypes included) before these run.


def _assert_features(queries: torch.Tensor, keys: torch.Tensor, *others: torch.Tensor) -> int:
    """Shared asserts of both launchers; returns BLOCK_D."""
    assert queries.dim() == 2 and keys.dim() == 2, "queries and keys must be 2-D [rows, D]"
    assert queries.dtype in _DTYPES and keys.dtype == queries.dtype, f"dtypes {queries.dtype}, {keys.dtype}"
    D = queries.shape[1]
    assert keys.shape[1] == D, f"feature widths {D} and {keys.shape[1]}"
    assert D <= MAX_D, f"feature width D = {D} > {MAX_D}"
    dev = queries.device
    assert all(t.device == dev for t in (keys, *others)), "all inputs on one device"
    assert dev.type == "cuda" or (_INTERPRET and dev.type == "cpu"), f"Triton kernels got device {dev}"
    return max(16, triton.next_power_of_2(D))


def _assert_tau(tau: float) -> float:
    tau = float(tau)
    assert math.isfinite(tau) and tau > 0, f"tau = {tau}"
    return tau


def _precision(dtype: torch.dtype, precise: bool) -> str:
    # Only meaningful for fp32 inputs: bf16/fp16 get tl.dot's default ("tf32", ignored for 16-bit
    # operands), so their compiled kernels are the plain tensor-core ones. The interpreter does
    # numpy fp32 matmuls whatever the setting.
    return "ieee" if (precise and dtype == torch.float32) else "tf32"


def region_contrast_fwd(
    queries: torch.Tensor,
    keys: torch.Tensor,
    queue: torch.Tensor | None,
    tau: float,
    with_grad: bool,
    precise: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row log-sum-exp of ``q @ [keys; queue]^T / tau`` and the softmax-weighted key average.

    queries [M, D], keys [N, D], queue [Nq, D] or None: float32/bfloat16/float16, queries and
    keys of one dtype (a queue of another dtype is cast to the keys' dtype), D <= 256.
    Returns ``lse`` [M] float32 and ``o`` [M, D] float32 (``softmax(l_i) @ [keys; queue]``), or
    ``o`` = empty [0, D] float32 when ``with_grad`` is False. ``precise=True`` makes fp32 inputs
    use exact IEEE fp32 products instead of TF32 (no effect for bf16/fp16). An empty key pool
    (N + Nq = 0) gives ``lse = -inf`` and ``o = 0``.
    """
    block_d = _assert_features(queries, keys, *(() if queue is None else (queue,)))
    D = queries.shape[1]
    dev = queries.device
    if queue is not None:
        assert queue.dim() == 2 and queue.shape[1] == D and queue.is_floating_point(), "queue [Nq, D] float"
        if queue.dtype != keys.dtype:
            queue = queue.to(keys.dtype)
    tau = _assert_tau(tau)

    M, N = queries.shape[0], keys.shape[0]
    NQ = 0 if queue is None else queue.shape[0]
    lse = torch.empty(M, dtype=torch.float32, device=dev)
    o = torch.empty((M if with_grad else 0, D), dtype=torch.float32, device=dev)
    if M == 0:
        return lse, o
    if N + NQ == 0:
        lse.fill_(float("-inf"))
        o.zero_()
        return lse, o

    queries = queries.contiguous()
    keys = keys.contiguous()
    queue = keys if queue is None or NQ == 0 else queue.contiguous()  # dummy pointer when NQ = 0
    o_arg = o if with_grad else lse  # dummy pointer, never written when WITH_GRAD is False
    common = dict(
        D=D,
        WITH_GRAD=bool(with_grad),
        UPCAST=_INTERPRET,
        INPUT_PRECISION=_precision(queries.dtype, precise),
        BLOCK_D=block_d,
    )
    args = (
        queries, keys, queue, lse, o_arg, M, N, NQ,
        queries.stride(0), keys.stride(0), queue.stride(0), D,
        _LOG2E / tau,
    )  # fmt: skip
    prec = common["INPUT_PRECISION"]
    if _AUTOTUNE and prec != "ieee":
        _fwd_kernel[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]),)](*args, **common)
    else:
        cfg = _launch_cfg(_FWD_CONFIGS, "BLOCK_M", "BLOCK_N", queries, block_d, prec)
        _region_contrast_fwd_kernel[(triton.cdiv(M, cfg["BLOCK_M"]),)](*args, **common, **cfg)
    return lse, o


def region_contrast_bwd(
    queries: torch.Tensor,
    keys: torch.Tensor,
    lse: torch.Tensor,
    coef: torch.Tensor,
    tau: float,
    precise: bool = False,
) -> torch.Tensor:
    """Dense part of dloss/dkeys: ``dk_j = (1/tau) * sum_i coef_i * exp(q_i.k_j/tau - lse_i) * q_i``.

    queries [M, D], keys [N, D] (float32/bfloat16/float16, one dtype, D <= 256), lse [M] and
    coef [M] (cast to float32). Returns dk [N, D] float32. ``precise`` as in the forward.
    """
    block_d = _assert_features(queries, keys, lse, coef)
    D = queries.shape[1]
    M, N = queries.shape[0], keys.shape[0]
    for v in (lse, coef):
        assert v.shape == (M,) and v.is_floating_point(), f"lse and coef must be float [M] = [{M}]"
    dev = queries.device
    tau = _assert_tau(tau)

    dk = torch.empty((N, D), dtype=torch.float32, device=dev)
    if N == 0:
        return dk
    if M == 0:
        return dk.zero_()

    queries = queries.contiguous()
    keys = keys.contiguous()
    lse = lse.to(torch.float32).contiguous()
    coef = coef.to(torch.float32).contiguous()
    common = dict(
        D=D,
        UPCAST=_INTERPRET,
        INPUT_PRECISION=_precision(queries.dtype, precise),
        BLOCK_D=block_d,
    )
    args = (
        queries, keys, lse, coef, dk, M, N,
        queries.stride(0), keys.stride(0), dk.stride(0),
        1.0 / tau,
    )  # fmt: skip
    prec = common["INPUT_PRECISION"]
    if _AUTOTUNE and prec != "ieee":
        _bwd_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]),)](*args, **common)
    else:
        cfg = _launch_cfg(_BWD_CONFIGS, "BLOCK_N", "BLOCK_M", queries, block_d, prec)
        _region_contrast_bwd_kernel[(triton.cdiv(N, cfg["BLOCK_N"]),)](*args, **common, **cfg)
    return dk
