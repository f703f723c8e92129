"""Shared benchmark helpers: device timing, peak memory, matmul peak, provenance.

Throughput rule: every region-contrast provider is charged 8*Q*K*D FLOPs for forward+backward
(logits 2QKD, then dq, dk and the logits recompute 2QKD each), whatever it really executes.
"x matmul" divides by the throughput of plain square matmuls with the same FLOP count (the
``matmul`` provider: n capped at 1536 on CPU, 8192 on GPU, repeated to reach the count), timed in
the same run on the same device and dtype.
"""

from __future__ import annotations

import os
import platform
import time

import torch

SMOKE = os.environ.get("CTRLAUG_BENCH_SMOKE", "0") == "1"
CUDA = torch.cuda.is_available()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def provenance(device: torch.device) -> dict[str, object]:
    info: dict[str, object] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "smoke": SMOKE,
    }
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        info["device"] = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
        info["cpu_model"], info["cpu_flags"] = cpu_model_and_flags()
        try:
            from ctrlaug.ops._registry import cpu_isa

            isa = cpu_isa()
            info["cpp_cpu_isa"] = None if isa is None else isa["chosen"]
            # auto's race in this process: the path, "measured" or "cache", the timings (ms)
            info["cpp_cpu_isa_auto"] = None if isa is None else isa["auto"]
        except ImportError:
            pass
        # With glibc's dynamic mmap threshold, freed big blocks can be reused from resident heap,
        # hiding allocations from the RSS high-water mark: set it fixed for exact memory numbers.
        info["malloc_mmap_threshold"] = os.environ.get(
            "MALLOC_MMAP_THRESHOLD_", "dynamic (approximate memory)"
        )
    return info


# The /proc/cpuinfo flags that decide which GEMM/SIMD code runs (MKL, inductor, the cpp paths).
ISA_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
)


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and which of ISA_FLAGS it reports (Linux /proc/cpuinfo; else the
    platform's processor string and no flags)."""
    model, flags, fields = platform.processor() or platform.machine(), [], {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = val.strip()
                elif key == "flags":
                    have = set(val.split())
                    flags = [x for x in ISA_FLAGS if x in have]
                    break
    except OSError:
        pass
    if "model name" in fields:  # a VM may show only "AMD EPYC": the family and model say which
        model = f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
    return model, flags


def load_average() -> float:
    """The 1-minute load average (how many runnable jobs share the CPUs); nan where unknown."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def time_once(fn, device: torch.device, reps: int = 3, warmup: bool = True, clock=time.perf_counter) -> float:
    """Median seconds of ``reps`` calls of fn (after one warm-up call), synchronising the device.

    ``clock=time.process_time`` measures the CPU time of all the process's threads instead of wall
    time: on a CPU shared with other jobs it counts only the time the process really ran (but
    also any spinning at barriers)."""
    if warmup:
        fn()
        sync(device)
    ts = []
    for _ in range(reps):
        t0 = clock()
        fn()
        sync(device)
        ts.append(clock() - t0)
    ts.sort()
    return ts[len(ts) // 2]


def matmul_same_flops(device: torch.device, dtype: torch.dtype, flops: float):
    """A callable running square n x n matmuls worth about ``flops`` (n capped: 1536 on CPU, 8192 on
    GPU; repeated to reach the count), and the FLOPs it really does: the "matmul" provider."""
    n = int(round((flops / 2) ** (1 / 3) / 128)) * 128
    n = max(256, min(n, 8192 if device.type == "cuda" else 1536))
    reps = max(1, round(flops / (2 * n**3)))
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = torch.empty(n, n, device=device, dtype=dtype)

    def run():
        for _ in range(reps):
            torch.mm(a, b, out=c)

    return run, 2 * n**3 * reps


def onednn_same_flops(dtype: torch.dtype, flops: float):
    """The "onednn" provider: oneDNN's sgemm (torch's mkldnn linear, the kernel under
    ``torch.utils.mkldnn``) on the same square n x n problems as ``matmul_same_flops``, operands
    converted to oneDNN's layout once, outside the timed callable; None where torch has no oneDNN
    (the provider is then skipped). On AMD CPUs MKL runs its AVX2 code, so this is the machine's
    real sgemm there; the faster of the two is the benchmark's roofline."""
    if not torch.backends.mkldnn.is_available():
        return None
    n = int(round((flops / 2) ** (1 / 3) / 128)) * 128
    n = max(256, min(n, 1536))
    reps = max(1, round(flops / (2 * n**3)))
    a = torch.randn(n, n, dtype=dtype).to_mkldnn()
    b = torch.randn(n, n, dtype=dtype).to_mkldnn()

    def run():
        for _ in range(reps):
            torch._C._nn.mkldnn_linear(a, b, None)

    return run, 2 * n**3 * reps


def _proc_status_bytes(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_extra_bytes(fn, device: torch.device) -> int:
    """Peak bytes ``fn`` needs beyond what was live before it (its inputs excluded).

    CUDA: the caching allocator's peak statistic. CPU: the process's resident-set high-water mark,
    reset just before the call (Linux /proc/self/clear_refs "5"), which also sees workspaces that
    kernels allocate and free inside one op. Call it after a warm-up so one-time caches are not
    counted. Returns -1 where the CPU high-water mark cannot be reset.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    try:
        import gc

        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _proc_status_bytes("VmRSS")
        fn()
        return max(0, _proc_status_bytes("VmHWM") - base)
    except OSError:
        return -1
