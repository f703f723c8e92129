"""The tolerance rule of docs/design.md §4 (after flash-attn and Cut Cross-Entropy).

Ground truth is computed in float64; the reference is run in the test dtype; a kernel passes
when ``max|kernel - truth| <= 2 * max|ref - truth| + atol``. The factor 2 and the atol values
below are fixed project-wide and are never loosened to make a test pass.
"""

from __future__ import annotations

import pytest
import torch
from backends import REQUIRE_ENV, home_device, required_backends

# atol per test dtype, relative to max(1, max|truth|): it absorbs accumulation-order noise
# where the reference happens to be almost exact.
ATOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-3, torch.float16: 5e-4}


def assert_rule(name: str, kernel: torch.Tensor, ref: torch.Tensor, truth: torch.Tensor, dtype: torch.dtype):
    truth = truth.detach().double().cpu()
    k_err = (kernel.detach().double().cpu() - truth).abs()
    r_err = (ref.detach().double().cpu() - truth).abs()
    scale = max(1.0, truth.abs().max().item()) if truth.numel() else 1.0
    bound = 2 * r_err.max().item() + ATOL[dtype] * scale
    k_max = k_err.max().item() if k_err.numel() else 0.0
    print(
        f"{name}: kernel max {k_max:.3e} mean {k_err.mean().item() if k_err.numel() else 0:.3e} | "
        f"ref max {r_err.max().item() if r_err.numel() else 0:.3e} | bound {bound:.3e}"
    )
    assert torch.isfinite(kernel).all(), f"{name}: non-finite values"
    assert k_max <= bound, f"{name}: max error {k_max:.3e} exceeds 2*ref error + atol = {bound:.3e}"


def device_for(backend: str) -> torch.device:
    """Where a backend's tests run: cpp on CPU; triton/cuda on the GPU, else CPU (interpreter)."""
    return home_device(backend) if torch.cuda.is_available() else torch.device("cpu")


def skip_unless(backend: str, device: torch.device, op: str, dtype: torch.dtype = torch.float32) -> None:
    """Skip, with the reason, when ``backend`` cannot run ``op`` here; *fail* instead when the
    backend is required here (``CI=true`` or ``CTRLAUG_REQUIRE_BACKENDS``, see
    ``backends.required_backends``), so that a missing or broken build is never a green run of
    skips."""
    from ctrlaug.ops import _registry

    if not _registry.available(backend, device, op):
        if backend in required_backends() and device == home_device(backend):
            pytest.fail(
                f"backend {backend!r} is required here ({REQUIRE_ENV} / CI) but cannot run "
                f"{op} on {device.type} tensors: {_registry._why_missing(backend, device)}"
            )
        pytest.skip(f"backend {backend!r} not available for {device.type} tensors here")
    if device.type == "cpu" and backend == "triton" and dtype != torch.float32:
        pytest.skip("the Triton interpreter is exact only in float32 (docs/design.md §5)")


# ---------------------------------------------------------------------------------------------
# A tighter rule for half-precision kernels (docs/testing.md, "Tolerances")
# ---------------------------------------------------------------------------------------------


def flash_rounding_emulation(q, k, targets, owner, queue, tau, grad_out, half: torch.dtype):
    """(loss, dq, dk) of region_contrast as a flash-attention-style half-precision kernel computes
    them: inputs rounded to ``half``, every product and sum in float32, and exactly two roundings
    to ``half`` inside: the probabilities P = exp(l - LSE) before o = P @ keys, and the backward
    coefficients g_i w_i P_ij before their product with the queries (tensor cores take half
    operands there). dq and dk are returned rounded to ``half`` like a kernel's outputs.

    A kernel that keeps P in float32 is more accurate than this; one that also rounds the logits,
    the LSE or the accumulators to ``half`` is much less accurate, and fails :func:`assert_tight`.
    """
    f32 = torch.float32
    qf, kf = q.to(half).to(f32), k.to(half).to(f32)
    keys = kf if queue is None else torch.cat([kf, queue.to(half).to(f32)])
    P_, Nc, Nv = targets.shape
    S = targets.to(f32)
    g = grad_out.to(f32)
    logits = qf @ keys.t() / tau
    lse = torch.logsumexp(logits, 1)
    p = torch.exp(logits - lse[:, None])
    blocks = kf.view(-1, Nv, kf.shape[1])[owner]  # [P, Nv, D] each clip's owner block
    t = torch.bmm(S, blocks).view(P_ * Nc, -1)
    w = S.sum(-1).view(-1)
    loss = w * lse - (qf * t).sum(-1) / tau
    o = p.to(half).to(f32) @ keys
    dq = (g * w)[:, None] * o / tau - g[:, None] * t / tau
    coef = ((g * w)[:, None] * p).to(half).to(f32)[:, : kf.shape[0]]
    dk = coef.t() @ qf / tau
    tgt = torch.bmm(S.transpose(1, 2), (g[:, None] * qf).view(P_, Nc, -1))  # [P, Nv, D]
    dk = dk.view(-1, Nv, kf.shape[1]).index_add(0, owner, tgt, alpha=-1.0 / tau).view_as(kf)
    return loss, dq.to(half), dk.to(half)


def assert_tight(name: str, kernel: torch.Tensor, emul: torch.Tensor, truth: torch.Tensor) -> None:
    """``max|kernel - truth| <= 2 * max|emulation - truth| + ATOL[float32] * scale``: the half
    kernel may round where a flash-style kernel rounds, and accumulate as that kernel does in
    float32, but no worse (the float32 atol, since every accumulation is float32)."""
    truth = truth.detach().double().cpu()
    k_err = (kernel.detach().double().cpu() - truth).abs()
    e_err = (emul.detach().double().cpu() - truth).abs()
    scale = max(1.0, truth.abs().max().item())
    bound = 2 * e_err.max().item() + ATOL[torch.float32] * scale
    print(
        f"{name} (tight): kernel max {k_err.max().item():.3e} | flash-rounding emulation max "
        f"{e_err.max().item():.3e} | bound {bound:.3e}"
    )
    assert k_err.max().item() <= bound, (
        f"{name}: max error {k_err.max().item():.3e} exceeds the flash-rounding bound {bound:.3e}"
    )
