"""The tolerance rule of DESIGN.md §4 (after flash-attn and Cut Cross-Entropy).

Ground truth is computed in float64; the reference is run in the test dtype; a kernel passes
when ``max|kernel - truth| <= 2 * max|ref - truth| + atol``. The factor 2 and the atol values
below are fixed project-wide and are never loosened to make a test pass.
"""

from __future__ import annotations

import pytest
import torch

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
    if backend == "cpp" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda")


def skip_unless(backend: str, device: torch.device, op: str, dtype: torch.dtype = torch.float32) -> None:
    """Skip, with the reason, when ``backend`` cannot run ``op`` here."""
    from ctrlaug.ops import available

    if not available(backend, device, op):
        pytest.skip(f"backend {backend!r} not available for {device.type} tensors here")
    if device.type == "cpu" and backend == "triton" and dtype != torch.float32:
        pytest.skip("the Triton interpreter is exact only in float32 (DESIGN.md §5)")
