"""Region contrast forward+backward throughput: every provider side by side, one group per shape.

CPU defaults (2 cores): Q=2048, K=32768, D=128 fp32 (the cpp target shape). CTRLAUG_BENCH_SMOKE=1
shrinks it for CI. With CUDA: Q=16384, D=128, K in {16384, 131072, 1048576}, bf16 and fp32.
Q = query cells (P clips x 32), K = in-batch keys (B videos x 128). Run:

    pytest bench/bench_region_contrast.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from common import CUDA, SMOKE, matmul_tflops, peak_extra_bytes, provenance, sync

from ctrlaug.ops import available, region_contrast, region_contrast_ref

NC, NV = 32, 128

if CUDA:
    SHAPES = [(16384, K, 128, dt) for dt in (torch.bfloat16, torch.float32) for K in (16384, 131072, 1048576)]
    PROVIDERS = ["eager", "compile", "triton", "cuda"]
elif SMOKE:
    SHAPES = [(512, 4096, 128, torch.float32)]
    PROVIDERS = ["eager", "compile", "cpp"]
else:
    SHAPES = [(2048, 32768, 128, torch.float32)]
    PROVIDERS = ["eager", "compile", "cpp"]


def _case(Q, K, D, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    P, B = Q // NC, K // NV
    q = F.normalize(torch.randn(Q, D, generator=g), dim=-1).to(device, dtype).requires_grad_(True)
    k = F.normalize(torch.randn(K, D, generator=g), dim=-1).to(device, dtype).requires_grad_(True)
    t = torch.rand(P, NC, NV, generator=g)
    t = (t / t.sum(-1, keepdim=True)).to(device)
    owner = torch.randint(0, B, (P,), generator=g).to(device)
    return q, k, t, owner


def _eager_bytes(Q, K, dtype) -> int:
    # logits, log-softmax, dense targets, and their gradients: ~6 QxK buffers
    return 6 * Q * K * max(4, torch.tensor([], dtype=dtype).element_size())


_compiled_ref = None


def _fn(provider, q, k, t, owner):
    global _compiled_ref
    if provider in ("eager", "compile"):
        f = region_contrast_ref
        if provider == "compile":
            if _compiled_ref is None:
                _compiled_ref = torch.compile(region_contrast_ref, dynamic=False)
            f = _compiled_ref

        def run():
            q.grad = k.grad = None
            f(q, k, t, owner, tau=0.07).backward()

        return run
    backend = provider

    def run():
        q.grad = k.grad = None
        region_contrast(q, k, t, owner, tau=0.07, backend=backend).backward()

    return run


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"Q{s[0]}-K{s[1]}-D{s[2]}-{str(s[3]).split('.')[-1]}")
def test_region_contrast_fwd_bwd(benchmark, request, provider, shape):
    Q, K, D, dtype = shape
    device = torch.device("cuda" if CUDA else "cpu")
    if provider in ("cpp", "triton", "cuda") and not available(provider, device):
        pytest.skip(f"{provider} backend not available on {device.type}")
    if provider in ("eager", "compile"):
        budget = torch.cuda.get_device_properties(0).total_memory * 0.6 if CUDA else 8 * 2**30
        if _eager_bytes(Q, K, dtype) > budget:
            pytest.skip(
                f"{provider}: the materialised logits ({_eager_bytes(Q, K, dtype) / 2**30:.0f} GiB) do not fit"
            )
    if CUDA and dtype == torch.float32:
        # fp32 on the GPU is benchmarked as TF32 for every provider (torch's "high" policy, which
        # the fused backends follow too); exact fp32 is the default outside benchmarks.
        prev = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        request.addfinalizer(lambda: torch.set_float32_matmul_precision(prev))
    benchmark.group = f"region_contrast Q={Q} K={K} D={D} {dtype}"
    q, k, t, owner = _case(Q, K, D, dtype, device)
    run = _fn(provider, q, k, t, owner)

    def timed():
        run()
        sync(device)

    rounds = 3 if device.type == "cpu" else (5 if K > 200000 else 10)
    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=1, iterations=1)
    flops = 8 * Q * K * D
    secs = benchmark.stats.stats.median
    tflops = flops / secs / 1e12
    peak = matmul_tflops(str(device), dtype, float(flops))
    benchmark.extra_info.update(provenance(device))
    benchmark.extra_info.update(
        {
            "provider": provider,
            "Q": Q,
            "K": K,
            "D": D,
            "dtype": str(dtype),
            "median_ms": secs * 1e3,
            "tflops": tflops,
            "matmul_tflops_same_run": peak,
            "fraction_of_matmul": tflops / peak,
            "peak_extra_mib": peak_extra_bytes(run, device) / 2**20,
        }
    )
