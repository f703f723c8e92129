"""CUDA kernel numerics and architecture guards that need no GPU, plus their GPU counterparts.

* The coefficient scaling of the tensor-core backward (csrc/cuda/rc_numerics.h) is compiled into a
  small host program, with g++ (strict and -ffast-math, which flushes subnormals to zero as the
  kernels' --use_fast_math does) and with nvcc's host pass, and checked for every magnitude of
  max|coef|, down to 0 and to values where the naive 2^15 / max|coef| overflows.
* The PTX for sm_75 holds no sm_80 instruction (so the arch list "7.5;8.0;9.0" builds) while the
  PTX for sm_80 still holds the tensor-core path.
* On a GPU: fp16/bf16 backward with tiny and zero coefficients is finite and right.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess

import pytest
import torch
from tolerance import ATOL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.join(ROOT, "csrc", "cuda")
RC_KERNEL = os.path.join(CUDA_DIR, "region_contrast_kernel.cu")
RC_TENSOR_CORE = os.path.join(CUDA_DIR, "rc_mma.cuh")  # the tensor-core path, included by RC_KERNEL
FLT_MIN = 2.0**-126
FLT_MAX = (2 - 2.0**-23) * 2.0**127
TAU = 0.07
AMAX = (0.0, 1e-38, 1e-30, 1.0, 1e4)  # 1e-38 is below FLT_MIN; 2^15 / 1e-38 overflows float32
P_SCALE = {"fp16": 32768.0, "bf16": 1.0}  # Elt<__half>::kPScale, Elt<__nv_bfloat16>::kPScale

DRIVER = r"""
#include <cstdio>
#include "rc_numerics.h"
int main() {
  const float amaxes[] = {%(amax)s};
  const float p_scales[] = {%(p)s};
  const float inv_tau = 1.0f / %(tau)rf;
  for (float p : p_scales) {
    for (float amax : amaxes) {
      const RcCoefScale s = rc_coef_scale(amax, p, inv_tau);
      const float coefs[] = {amax, -amax, amax / 3.0f, 0.0f};
      for (float c : coefs) {
        const float scaled = rc_scaled_coef(c, s);
        // acc = the scaled coefficient itself (P = 1, q = 1): unscale must give coef / tau
        std::printf("%%a %%a %%a %%a %%a\n", p, amax, c, scaled, rc_unscale(scaled, s));
      }
    }
  }
  return 0;
}
"""

COMPILERS = {
    "gxx": (["g++", "-O2", "-std=c++17"], "cpp"),
    "gxx-fast-math": (["g++", "-O2", "-std=c++17", "-ffast-math"], "cpp"),
    "nvcc-host": (["nvcc", "-O2", "-std=c++17"], "cu"),
}


def _build_and_run(compiler: str, tmp_path) -> list[tuple[float, ...]]:
    cmd, ext = COMPILERS[compiler]
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"{cmd[0]} not on PATH")
    src = tmp_path / f"scale.{ext}"
    src.write_text(
        DRIVER
        % {
            "amax": ", ".join(f"{a!r}f" for a in AMAX),
            "p": ", ".join(f"{p!r}f" for p in P_SCALE.values()),
            "tau": TAU,
        }
    )
    exe = tmp_path / "scale"
    r = subprocess.run([*cmd, f"-I{CUDA_DIR}", str(src), "-o", str(exe)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return [tuple(float.fromhex(x) for x in line.split()) for line in out.splitlines()]


@pytest.mark.parametrize("compiler", sorted(COMPILERS))
def test_coef_scale_is_finite_and_exact(compiler, tmp_path):
    rows = _build_and_run(compiler, tmp_path)
    assert len(rows) == len(P_SCALE) * len(AMAX) * 4
    for p, amax, coef, scaled, unscaled in rows:
        where = f"p_scale={p} amax={amax!r} coef={coef!r}: scaled={scaled!r} unscaled={unscaled!r}"
        assert math.isfinite(scaled) and math.isfinite(unscaled), where
        # |c_i| <= p_scale keeps the fp16 product P * c_i <= 2^15 < 65504 (2 ulp: fast-math division)
        assert abs(scaled) <= p * (1 + 2**-21), where
        if amax >= max(FLT_MIN, 2 * p / FLT_MAX) and abs(coef) == amax:
            # the largest coefficient is normalised to p_scale: small coefficients leave the
            # fp16 subnormal range instead of being flushed
            assert abs(scaled) == pytest.approx(p, rel=1e-6), where
        want = coef / TAU  # in float64
        # inputs below FLT_MIN may be flushed to zero (-ffast-math here, --use_fast_math on the GPU)
        assert abs(unscaled - want) <= 1e-6 * abs(want) + 2 * FLT_MIN / TAU, where
        if amax == 0.0:
            assert scaled == 0.0 and unscaled == 0.0, where


def test_tensor_core_backward_uses_the_tested_scaling():
    """The kernel calls the helpers above instead of its own copy of the formula."""
    assert '#include "rc_mma.cuh"' in open(RC_KERNEL).read()
    text = open(RC_TENSOR_CORE).read()
    assert '#include "rc_numerics.h"' in text
    assert "rc_coef_scale(*coef_absmax, Elt<T>::kPScale, inv_tau)" in text
    assert "rc_scaled_coef(coef[qi], cs)" in text
    assert text.count("rc_unscale(acc[mt][dt]") == 2
    assert "kPScale / amax" not in text


def _ptx(arch: str, tmp_path) -> str:
    out = tmp_path / f"{arch}.ptx"
    cmd = ["nvcc", "-ptx", "-std=c++17", "-O3", f"-arch={arch}", RC_KERNEL, "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr[-4000:]}"
    return out.read_text()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on PATH: PTX check skipped")
def test_tensor_core_path_only_in_sm80_images(tmp_path):
    """sm_75: the tensor-core kernels are traps (no cp.async/ldmatrix/mma); sm_80: they are real."""
    old = _ptx("sm_75", tmp_path)
    for instr in ("cp.async", "ldmatrix", "mma.sync"):
        assert instr not in old, f"sm_75 PTX contains {instr}"
    assert "trap;" in old
    new = _ptx("sm_80", tmp_path)
    for instr in ("cp.async.cg.shared.global", "ldmatrix.sync.aligned", "mma.sync.aligned.m16n8k16"):
        assert instr in new, f"sm_80 PTX lost the tensor-core path ({instr} missing)"
    assert "trap;" not in new


# ------------------------------------------------------------------------------------------
# On a GPU
# ------------------------------------------------------------------------------------------


def _bwd_truth(q, k, lse, coef, tau):
    q64, k64 = q.double().cpu(), k.double().cpu()
    p = torch.exp(q64 @ k64.t() / tau - lse.double().cpu()[:, None])
    return (p * coef.double().cpu()[:, None]).t() @ q64 / tau


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_backward_tiny_and_zero_coefficients(dtype):
    """max|coef| = 0, 1e-36 (below the fp16 overflow floor) and 1e-30: finite, and as accurate
    (relative to the coefficients) as with coefficients of order one."""
    from ctrlaug.ops import available
    from ctrlaug.ops._registry import op_handle

    dev = torch.device("cuda")
    if not available("cuda", dev, "region_contrast_bwd"):
        pytest.skip("cuda backend not built")
    fwd, bwd = op_handle("cuda", "region_contrast_fwd"), op_handle("cuda", "region_contrast_bwd")
    g = torch.Generator().manual_seed(0)
    M, N, D = 200, 300, 64  # D % 8 == 0: the tensor-core path
    q = torch.nn.functional.normalize(torch.randn(M, D, generator=g), dim=-1).to(dev, dtype)
    k = torch.nn.functional.normalize(torch.randn(N, D, generator=g), dim=-1).to(dev, dtype)
    lse, _ = fwd(q, k, None, TAU, False)
    c0 = (torch.rand(M, generator=g) * 2 - 1).to(dev)
    truth = _bwd_truth(q, k, lse, c0, TAU)
    base_err = (bwd(q, k, lse, c0, TAU).double().cpu() - truth).abs().max().item()
    bound = 2 * base_err + ATOL[dtype] * max(1.0, truth.abs().max().item())
    for s in (1e-36, 1e-30):
        dk = bwd(q, k, lse, c0 * s, TAU)
        assert torch.isfinite(dk).all(), f"scale {s}: non-finite dk"
        err = (dk.double().cpu() / s - truth).abs().max().item()
        print(f"{dtype} coef scale {s}: max err {err:.3e} (order-one coefficients: {base_err:.3e})")
        assert err <= bound, f"scale {s}: error {err:.3e} > {bound:.3e}"
    dk = bwd(q, k, lse, torch.zeros_like(c0), TAU)
    assert torch.equal(dk, torch.zeros_like(dk)), "all-zero coefficients must give dk = 0 exactly"
