"""Region contrast forward+backward throughput: every provider side by side, one group per shape.

Q = query cells (P clips x 32), K = in-batch keys (B videos x 128), D = 128. Each group also has a
``matmul`` row: square matmuls of the same dtype with the same FLOP count (8*Q*K*D), timed in the
same run, so "x matmul" compares against the machine's own GEMM speed at that moment.

CPU (2 cores): Q=2048 x K=32768 (the cpp target shape, the default) and Q=1024 x K=16384, fp32,
providers eager, compile (torch.compile of the reference), cpp. CTRLAUG_BENCH_SMOKE=1 shrinks it
to Q=512 x K=4096 for CI.

GPU (CUDA present): Q=16384, K in CTRLAUG_BENCH_K (default "16384,131072"; comma-separated, e.g.
CTRLAUG_BENCH_K=16384 for a quick ladder or "16384,131072,1048576" for the full one), bf16 and fp32
(TF32 for every provider), providers eager, compile, triton, cuda. The cuda provider in fp32 is
skipped unless CTRLAUG_BENCH_CUDA_FP32=1: its fp32 path is the exact SIMT kernel whatever the
matmul precision says, far too slow for the ladder's time budget. Rows can also be picked with
pytest's -k on the ids, e.g. ``-k "K16384 and bfloat16"``.

    pytest bench/bench_region_contrast.py --benchmark-only

Side by side under a varying load (the shared CPU machine), interleave instead: each round times
every provider once in turn, and the ratios are medians of per-round ratios:

    MALLOC_MMAP_THRESHOLD_=65536 python bench/bench_region_contrast.py [--rounds 5] [--shape QxK]

When other jobs hold the cores, wall times mostly measure the scheduler; ``--clock cpu --threads 1``
compares the providers' CPU time on one thread instead (what each costs when it runs).
"""

from __future__ import annotations

import argparse
import os
import time

import pytest
import torch
import torch.nn.functional as F
from common import CUDA, SMOKE, load_average, matmul_same_flops, peak_extra_bytes, provenance, sync, time_once

from ctrlaug.ops import available, region_contrast, region_contrast_ref

NC, NV = 32, 128
GPU_K = tuple(int(k) for k in os.environ.get("CTRLAUG_BENCH_K", "16384,131072").split(","))
CUDA_FP32 = os.environ.get("CTRLAUG_BENCH_CUDA_FP32", "0") == "1"

if CUDA:
    SHAPES = [(16384, K, 128, dt) for dt in (torch.bfloat16, torch.float32) for K in GPU_K]
    PROVIDERS = ["eager", "compile", "triton", "cuda", "matmul"]
elif SMOKE:
    SHAPES = [(512, 4096, 128, torch.float32)]
    PROVIDERS = ["eager", "compile", "cpp", "matmul"]
else:
    SHAPES = [(2048, 32768, 128, torch.float32), (1024, 16384, 128, torch.float32)]
    PROVIDERS = ["eager", "compile", "cpp", "matmul"]


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
    """The provider's forward+backward as a no-argument callable, and the FLOPs it is charged."""
    global _compiled_ref
    flops = 8 * q.shape[0] * k.shape[0] * q.shape[1]
    if provider == "matmul":
        return matmul_same_flops(q.device, q.dtype, flops)
    if provider in ("eager", "compile"):
        f = region_contrast_ref
        if provider == "compile":
            if _compiled_ref is None:
                _compiled_ref = torch.compile(region_contrast_ref, dynamic=False)
            f = _compiled_ref

        def run():
            q.grad = k.grad = None
            f(q, k, t, owner, tau=0.07).backward()

        return run, flops
    backend = provider

    def run():
        q.grad = k.grad = None
        region_contrast(q, k, t, owner, tau=0.07, backend=backend).backward()

    return run, flops


def _skip_reason(provider, Q, K, dtype, device) -> str | None:
    if provider in ("cpp", "triton", "cuda") and not available(provider, device):
        return f"{provider} backend not available on {device.type}"
    if provider == "cuda" and dtype == torch.float32 and not CUDA_FP32:
        return (
            "cuda fp32 is the exact SIMT kernel, too slow for the ladder (CTRLAUG_BENCH_CUDA_FP32=1 runs it)"
        )
    if provider in ("eager", "compile"):
        budget = torch.cuda.get_device_properties(0).total_memory * 0.6 if CUDA else 8 * 2**30
        if _eager_bytes(Q, K, dtype) > budget:
            return f"{provider}: the materialised logits ({_eager_bytes(Q, K, dtype) / 2**30:.0f} GiB) do not fit"
    return None


def _shape_id(s):
    return f"Q{s[0]}-K{s[1]}-D{s[2]}-{str(s[3]).split('.')[-1]}"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_region_contrast_fwd_bwd(benchmark, request, provider, shape):
    Q, K, D, dtype = shape
    device = torch.device("cuda" if CUDA else "cpu")
    reason = _skip_reason(provider, Q, K, dtype, device)
    if reason:
        pytest.skip(reason)
    if CUDA and dtype == torch.float32:
        # fp32 on the GPU is benchmarked as TF32 for every provider (torch's "high" policy, which
        # the fused backends follow too); exact fp32 is the default outside benchmarks.
        prev = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("high")
        request.addfinalizer(lambda: torch.set_float32_matmul_precision(prev))
    benchmark.group = f"region_contrast Q={Q} K={K} D={D} {dtype}"
    q, k, t, owner = _case(Q, K, D, dtype, device)
    run, flops = _fn(provider, q, k, t, owner)

    def timed():
        run()
        sync(device)

    rounds = 3 if device.type == "cpu" else (5 if K > 200000 else 10)
    load_before = load_average()
    benchmark.pedantic(timed, rounds=rounds, warmup_rounds=1, iterations=1)
    secs = benchmark.stats.stats.median
    tflops = flops / secs / 1e12
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
            "load_average_1min": [load_before, load_average()],
            "peak_extra_mib": peak_extra_bytes(run, device) / 2**20,
        }
    )


def interleaved(shape, providers, rounds: int, clock=time.perf_counter) -> None:
    """Time the providers round-robin (robust to a load that drifts) and print a markdown table."""
    Q, K, D, dtype = shape
    device = torch.device("cuda" if CUDA else "cpu")
    runs = {}
    for p in providers:
        reason = _skip_reason(p, Q, K, dtype, device)
        if reason:
            print(f"skip {p}: {reason}")
            continue
        q, k, t, owner = _case(Q, K, D, dtype, device)
        runs[p] = _fn(p, q, k, t, owner)
        runs[p][0]()  # warm-up (and compilation)
        sync(device)
    load0 = os.getloadavg()
    times = {p: [] for p in runs}
    for _ in range(rounds):
        for p, (run, _) in runs.items():
            times[p].append(time_once(run, device, reps=1, warmup=False, clock=clock))
    load1 = os.getloadavg()

    def med(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2]

    mm = med([runs["matmul"][1] / s for s in times["matmul"]]) if "matmul" in runs else float("nan")
    kind = "wall" if clock is time.perf_counter else "CPU"
    print(f"\n### region_contrast Q={Q} K={K} D={D} {dtype}, {rounds} interleaved rounds, {kind} time\n")
    print(f"| provider | median {kind} ms | min ms | GFLOP/s | x matmul | vs eager | vs compile |")
    print("|---|---|---|---|---|---|---|")
    for p, ts in times.items():
        rate = runs[p][1] / med(ts)
        # speed-ups: median over rounds of the per-round time ratio (pairs run moments apart)
        vs = [
            f"{med([a / b for a, b in zip(times[o], ts)]):.2f}x" if o in times else "-"
            for o in ("eager", "compile")
        ]
        print(
            f"| {p} | {med(ts) * 1e3:.1f} | {min(ts) * 1e3:.1f} | {rate / 1e9:.1f} | {rate / mm:.2f} | "
            f"{vs[0]} | {vs[1]} |"
        )
    print(f"\nload average (1, 5, 15 min) before {load0}, after {load1}; {provenance(device)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--shape", action="append", help="QxK (D=128, fp32 on CPU); default: the CPU shapes")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    shapes = SHAPES
    if args.shape:
        dt = torch.bfloat16 if CUDA else torch.float32
        shapes = [(int(s.split("x")[0]), int(s.split("x")[1]), 128, dt) for s in args.shape]
    for s in shapes:
        interleaved(s, args.providers.split(","), args.rounds, clock)


if __name__ == "__main__":
    main()
