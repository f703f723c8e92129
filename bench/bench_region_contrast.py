"""Region contrast forward and backward throughput: every provider side by side, one group per shape
and layout.

Q = query cells (P clips x 32), K = in-batch keys (B videos x Nv cells), D = 128. Two layouts of the
same Q and K: ``default`` (Nv = 128, the bench's original layout) and ``training`` (Nv = 256, the
training run's 8x4x8 global grid: Q=2048 K=32768 is 64 clips x 32 against 128 videos x 256). Each
group also has a ``matmul`` row: square matmuls of the same dtype with the same FLOP count, timed in
the same run, and on the CPU an ``onednn`` row: the same problems on oneDNN's sgemm (torch's mkldnn
linear). "x sgemm" divides by the faster of the two (named in the table's header and the JSON's
``sgemm_by``): torch's matmul is MKL, which runs its AVX2 code on AMD CPUs, half of what the cores
reach there, so the machine's best same-run sgemm is the roofline, and the MKL figure stays a row.

CPU (2 cores): Q=2048 x K=32768 (the cpp target shape, the default) and Q=1024 x K=16384, fp32,
providers eager, compile (torch.compile of the reference), cpp (the path the extension picks here),
one ``cpp-<path>`` row per instruction-set path of the cpp backend (avx512, avx2, blas, portable;
CTRLAUG_CPU_ISA, csrc/cpu/rc_kernels.h; a path this CPU cannot run is skipped with the reason).
CTRLAUG_BENCH_SMOKE=1 shrinks it to Q=512 x K=4096 for CI. The JSON's extra_info records the CPU
model, its ISA flags, the layout and the cpp path of each row, and auto's race (the chosen path, its
source "measured" or "cache", and the per-path trial timings: ctrlaug/ops/_registry.py).

GPU (CUDA present): Q=16384, K in CTRLAUG_BENCH_K (default "16384,131072"; comma-separated, e.g.
CTRLAUG_BENCH_K=16384 for a quick ladder or "16384,131072,1048576" for the full one), bf16 and fp32
(TF32 for every provider), providers eager, compile, triton, cuda, default layout. The cuda provider
in fp32 is skipped unless CTRLAUG_BENCH_CUDA_FP32=1: its fp32 path is the exact SIMT kernel whatever
the matmul precision says, far too slow for the ladder's time budget. Rows can also be picked with
pytest's -k on the ids, e.g. ``-k "K16384 and bfloat16"``.

    pytest bench/bench_region_contrast.py --benchmark-only

Side by side under a varying load (the shared CPU machine), interleave instead: each round times
every provider's forward, then its backward, in turn, and the ratios are medians of per-round
ratios; forward and backward are reported separately and summed, and --json writes every row:

    MALLOC_MMAP_THRESHOLD_=65536 python bench/bench_region_contrast.py [--rounds 5] [--shape QxK]
        [--layout default,training] [--providers compile,cpp,matmul,onednn] [--json out.json]

(``cpp`` there expands to one row per path this CPU runs.) When other jobs hold the cores, wall
times mostly measure the scheduler; ``--clock cpu --threads 1`` compares the providers' CPU time on
one thread instead (what each costs when it runs).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import pytest
import torch
import torch.nn.functional as F
from common import (
    CUDA,
    SMOKE,
    load_average,
    matmul_same_flops,
    onednn_same_flops,
    peak_extra_bytes,
    provenance,
    sync,
    time_once,
)

from ctrlaug.ops import available, region_contrast, region_contrast_ref
from ctrlaug.ops._registry import CPU_ISA_ENV, cpu_isa

NC = 32
LAYOUTS = {"default": 128, "training": 256}  # video cells Nv per layout (clips always 32 cells)
GPU_K = tuple(int(k) for k in os.environ.get("CTRLAUG_BENCH_K", "16384,131072").split(","))
CUDA_FP32 = os.environ.get("CTRLAUG_BENCH_CUDA_FP32", "0") == "1"
# The cpp paths a cpp-<path> row may force (emu512, a test path, is not benchmarked).
CPP_PATHS = ("avx512", "avx2", "blas", "portable")
# The same-FLOP sgemm rows: torch's matmul (MKL on x86 wheels) and oneDNN's; the faster one in the
# same run is the roofline that "x sgemm" divides by.
SGEMM_PROVIDERS = ("matmul", "onednn")

if CUDA:
    SHAPES = [(16384, K, 128, dt) for dt in (torch.bfloat16, torch.float32) for K in GPU_K]
    PROVIDERS = ["eager", "compile", "triton", "cuda", "matmul"]
    BENCH_LAYOUTS = ["default"]
else:
    if SMOKE:
        SHAPES = [(512, 4096, 128, torch.float32)]
    else:
        SHAPES = [(2048, 32768, 128, torch.float32), (1024, 16384, 128, torch.float32)]
    PROVIDERS = ["eager", "compile", "cpp"] + [f"cpp-{p}" for p in CPP_PATHS] + ["matmul", "onednn"]
    BENCH_LAYOUTS = list(LAYOUTS)


def _case(Q, K, D, dtype, device, nv=LAYOUTS["default"]):
    g = torch.Generator(device="cpu").manual_seed(0)
    P, B = Q // NC, K // nv
    q = F.normalize(torch.randn(Q, D, generator=g), dim=-1).to(device, dtype).requires_grad_(True)
    k = F.normalize(torch.randn(K, D, generator=g), dim=-1).to(device, dtype).requires_grad_(True)
    t = torch.rand(P, NC, nv, generator=g)
    t = (t / t.sum(-1, keepdim=True)).to(device)
    owner = torch.randint(0, B, (P,), generator=g).to(device)
    return q, k, t, owner


def _eager_bytes(Q, K, dtype) -> int:
    # logits, log-softmax, dense targets, and their gradients: ~6 QxK buffers
    return 6 * Q * K * max(4, torch.tensor([], dtype=dtype).element_size())


_compiled_ref = None


def _cpp_path(provider: str) -> str | None:
    """The forced cpp path of a ``cpp-<path>`` provider; None for every other provider."""
    return provider[4:] if provider.startswith("cpp-") else None


def _forced(path: str | None, fn):
    """fn with CTRLAUG_CPU_ISA set to ``path`` while it runs (the extension reads it per call)."""
    if path is None:
        return fn

    def run(*args):
        old = os.environ.get(CPU_ISA_ENV)
        os.environ[CPU_ISA_ENV] = path
        try:
            return fn(*args)
        finally:
            if old is None:
                del os.environ[CPU_ISA_ENV]
            else:
                os.environ[CPU_ISA_ENV] = old

    return run


def _loss_fn(provider):
    """The provider's loss as a function of (q, k, t, owner)."""
    global _compiled_ref
    if provider in ("eager", "compile"):
        if provider == "eager":
            return region_contrast_ref
        if _compiled_ref is None:
            _compiled_ref = torch.compile(region_contrast_ref, dynamic=False)
        return _compiled_ref
    backend = "cpp" if provider.startswith("cpp") else provider
    return lambda q, k, t, owner, tau: region_contrast(q, k, t, owner, tau=tau, backend=backend)


def _sgemm(provider, q, flops):
    if provider == "matmul":
        return matmul_same_flops(q.device, q.dtype, flops)
    return onednn_same_flops(q.dtype, flops)


def _fn(provider, q, k, t, owner):
    """The provider's forward+backward as a no-argument callable, and the FLOPs it is charged."""
    flops = 8 * q.shape[0] * k.shape[0] * q.shape[1]
    if provider in SGEMM_PROVIDERS:
        return _sgemm(provider, q, flops)
    f = _loss_fn(provider)

    def run():
        q.grad = k.grad = None
        f(q, k, t, owner, 0.07).backward()

    return _forced(_cpp_path(provider), run), flops


def _phases(provider, q, k, t, owner):
    """The provider's forward and backward as two no-argument callables (the backward uses the
    loss of the last forward), each charged 4*Q*K*D FLOPs; matmul / onednn: one same-FLOP sgemm
    callable."""
    flops = 4 * q.shape[0] * k.shape[0] * q.shape[1]
    if provider in SGEMM_PROVIDERS:
        run, f = _sgemm(provider, q, flops)
        return run, None, f
    f = _loss_fn(provider)
    state = {}

    def fwd():
        q.grad = k.grad = None
        state["loss"] = f(q, k, t, owner, 0.07)

    def bwd():
        state.pop("loss").backward()

    path = _cpp_path(provider)
    return _forced(path, fwd), _forced(path, bwd), flops


def _skip_reason(provider, Q, K, dtype, device) -> str | None:
    path = _cpp_path(provider)
    if provider.startswith("cpp") and not available("cpp", device):
        return f"cpp backend not available on {device.type}"
    if path is not None:
        why = (cpu_isa() or {}).get("paths", {}).get(path, "unknown path")
        if why != "ok":
            return f"cpp path {path} cannot run here: {why}"
    if provider == "onednn" and (device.type != "cpu" or dtype != torch.float32):
        return "onednn: the oneDNN sgemm row is for float32 CPU runs"
    if provider == "onednn" and not torch.backends.mkldnn.is_available():
        return "onednn: torch is built without oneDNN (mkldnn)"
    if provider in ("triton", "cuda") and not available(provider, device):
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


def _row_path(provider) -> str | None:
    """The cpp path a row runs (what the extension picks for ``cpp``), None for non-cpp rows."""
    if not provider.startswith("cpp"):
        return None
    return _cpp_path(provider) or (cpu_isa() or {}).get("chosen")


def _shape_id(s):
    return f"Q{s[0]}-K{s[1]}-D{s[2]}-{str(s[3]).split('.')[-1]}"


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("layout", BENCH_LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES, ids=_shape_id)
def test_region_contrast_fwd_bwd(benchmark, request, provider, layout, shape):
    Q, K, D, dtype = shape
    nv = LAYOUTS[layout]
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
    benchmark.group = f"region_contrast Q={Q} K={K} D={D} {dtype} {layout} layout (Nv={nv})"
    q, k, t, owner = _case(Q, K, D, dtype, device, nv)
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
            "cpu_path": _row_path(provider) if device.type == "cpu" else None,
            "layout": layout,
            "Q": Q,
            "K": K,
            "D": D,
            "Nv": nv,
            "dtype": str(dtype),
            "median_ms": secs * 1e3,
            "tflops": tflops,
            "load_average_1min": [load_before, load_average()],
            "peak_extra_mib": peak_extra_bytes(run, device) / 2**20,
        }
    )


def _expand(providers: list[str], device: torch.device) -> list[str]:
    """``cpp`` on the CPU becomes one cpp-<path> row per path this CPU runs."""
    out = []
    for p in providers:
        if p == "cpp" and device.type == "cpu":
            paths = (cpu_isa() or {}).get("paths", {})
            out += [f"cpp-{x}" for x in CPP_PATHS if paths.get(x) == "ok"] or ["cpp"]
        else:
            out.append(p)
    return out


def _med(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def interleaved(shape, layout, providers, rounds: int, clock=time.perf_counter) -> dict:
    """Time the providers round-robin (robust to a load that drifts), forward and backward
    separately; print a markdown table and return its rows."""
    Q, K, D, dtype = shape
    nv = LAYOUTS[layout]
    device = torch.device("cuda" if CUDA else "cpu")
    runs = {}
    for p in _expand(providers, device):
        reason = _skip_reason(p, Q, K, dtype, device)
        if reason:
            print(f"skip {p}: {reason}")
            continue
        q, k, t, owner = _case(Q, K, D, dtype, device, nv)
        runs[p] = _phases(p, q, k, t, owner)
        fwd, bwd, _ = runs[p]
        fwd()  # warm-up (and compilation)
        if bwd is not None:
            bwd()
        sync(device)
    load0 = os.getloadavg()
    times = {p: {"fwd": [], "bwd": []} for p in runs}
    for _ in range(rounds):
        for p, (fwd, bwd, _) in runs.items():
            times[p]["fwd"].append(time_once(fwd, device, reps=1, warmup=False, clock=clock))
            if bwd is not None:
                times[p]["bwd"].append(time_once(bwd, device, reps=1, warmup=False, clock=clock))
    load1 = os.getloadavg()
    for p in times:
        if times[p]["bwd"]:
            times[p]["total"] = [a + b for a, b in zip(times[p]["fwd"], times[p]["bwd"])]

    rates = {p: _med([runs[p][2] / s for s in times[p]["fwd"]]) for p in SGEMM_PROVIDERS if p in runs}
    sgemm_by = max(rates, key=rates.get) if rates else None
    sgemm = rates[sgemm_by] if rates else float("nan")
    kind = "wall" if clock is time.perf_counter else "CPU"
    phase_flops = 4 * Q * K * D
    rows = []
    print(
        f"\n### region_contrast Q={Q} K={K} D={D} {dtype}, {layout} layout ({Q // NC} clips x {NC} cells "
        f"vs {K // nv} videos x {nv} cells), {rounds} interleaved rounds, {kind} time\n"
    )
    print(
        "same-run sgemm: "
        + ", ".join(f"{p} {r / 1e9:.1f} GFLOP/s" for p, r in rates.items())
        + f"; roofline (x sgemm) = {sgemm_by or 'none'}\n"
    )
    print("| provider | path | phase | median ms | min ms | GFLOP/s | x sgemm | vs compile |")
    print("|---|---|---|---|---|---|---|---|")
    auto = (cpu_isa() or {}).get("chosen") if device.type == "cpu" else None
    for p, ph in times.items():
        if p in SGEMM_PROVIDERS:
            continue
        path = _row_path(p)
        label = "-" if path is None else (f"{path} (auto)" if path == auto else path)
        for phase in ("fwd", "bwd", "total"):
            ts = ph[phase]
            flops = phase_flops * (2 if phase == "total" else 1)
            rate = flops / _med(ts)
            vs = (
                _med([a / b for a, b in zip(times["compile"][phase], ts)])
                if "compile" in times
                else float("nan")
            )
            rows.append(
                {
                    "provider": p,
                    "cpu_path": path,
                    "auto": path is not None and path == auto,
                    "phase": phase,
                    "median_ms": _med(ts) * 1e3,
                    "min_ms": min(ts) * 1e3,
                    "gflops": rate / 1e9,
                    "x_sgemm": rate / sgemm,
                    "vs_compile": vs,
                    "times_ms": [x * 1e3 for x in ts],
                }
            )
            name = "fwd+bwd" if phase == "total" else phase
            print(
                f"| {p} | {label} | {name} | {_med(ts) * 1e3:.1f} | {min(ts) * 1e3:.1f} | {rate / 1e9:.1f} | "
                f"{rate / sgemm:.2f} | {vs:.2f}x |"
            )
    goal = [
        f"{r['provider']}: {'met' if r['vs_compile'] >= 1.5 and r['x_sgemm'] >= 0.7 else 'missed'}"
        for r in rows
        if r["phase"] == "total" and r["cpu_path"] is not None
    ]
    if goal:
        print(
            f"\ngoal (fwd+bwd >= 1.5x compile and >= 0.7 of the best sgemm, {sgemm_by}): " + "; ".join(goal)
        )
    isa = cpu_isa() if device.type == "cpu" else None
    if isa and isa.get("auto"):
        a = isa["auto"]
        print(
            f"cpp auto: {a['path']} ({a['source']}, {a.get('threads')} threads); trial ms per path: "
            + ", ".join(f"{p} {ms:.2f}" for p, ms in (a.get("timings_ms") or {}).items())
        )
    print(f"\nload average (1, 5, 15 min) before {load0}, after {load1}; {provenance(device)}")
    return {
        "Q": Q,
        "K": K,
        "D": D,
        "dtype": str(dtype),
        "layout": layout,
        "Nv": nv,
        "clips": Q // NC,
        "videos": K // nv,
        "rounds": rounds,
        "clock": kind,
        "sgemm_gflops": sgemm / 1e9,  # the roofline: the faster same-run sgemm (sgemm_by)
        "sgemm_by": sgemm_by,
        "sgemm_rows_gflops": {p: r / 1e9 for p, r in rates.items()},
        "sgemm_mkl_gflops": rates.get("matmul", float("nan")) / 1e9,  # torch's matmul (MKL on x86)
        "sgemm_times_ms": {p: [x * 1e3 for x in times[p]["fwd"]] for p in rates},
        "cpp_cpu_isa_auto": isa.get("auto") if isa else None,
        "load_average_before": list(load0),
        "load_average_after": list(load1),
        "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--shape", action="append", help="QxK (D=128, fp32 on CPU); default: the CPU shapes")
    ap.add_argument("--layout", default="default,training", help="comma-separated: " + ", ".join(LAYOUTS))
    ap.add_argument(
        "--providers",
        default="eager,compile,cpp,matmul,onednn",
        help="comma-separated; cpp = one row per cpp path this CPU runs, cpp-<path> = that path only",
    )
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--json", default=None, help="write every row, with the machine's provenance, here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layouts = [x.strip() for x in args.layout.split(",") if x.strip()]
    bad = [x for x in layouts if x not in LAYOUTS]
    if bad:
        ap.error(f"unknown layout(s) {bad}; choose from {list(LAYOUTS)}")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    shapes = SHAPES
    if args.shape:
        dt = torch.bfloat16 if CUDA else torch.float32
        shapes = [(int(s.split("x")[0]), int(s.split("x")[1]), 128, dt) for s in args.shape]
    tables = []
    for s in shapes:
        for layout in layouts:
            tables.append(interleaved(s, layout, args.providers.split(","), args.rounds, clock))
    if args.json:
        device = torch.device("cuda" if CUDA else "cpu")
        with open(args.json, "w") as f:
            json.dump({"provenance": provenance(device), "tables": tables}, f, indent=1)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
