"""Shared benchmark helpers: device timing, peak memory, matmul peak, provenance.

Throughput rule: every region-contrast provider is charged 8*Q*K*D FLOPs for forward+backward
(logits 2QKD, then dq, dk and the logits recompute 2QKD each), whatever it really executes.
"Fraction of matmul" divides by the throughput of a plain square matmul with the same FLOP count
(capped in size), timed in the same run on the same device and dtype.
"""

from __future__ import annotations

import functools
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
        # With glibc's dynamic mmap threshold, freed big blocks can be reused from resident heap,
        # hiding allocations from the RSS high-water mark: set it fixed for exact memory numbers.
        info["malloc_mmap_threshold"] = os.environ.get(
            "MALLOC_MMAP_THRESHOLD_", "dynamic (approximate memory)"
        )
    return info


def time_once(fn, device: torch.device, reps: int = 3) -> float:
    """Median seconds of ``reps`` calls of fn (after one warm-up), synchronising the device."""
    fn()
    sync(device)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        ts.append(time.perf_counter() - t0)
    ts.sort()
    return ts[len(ts) // 2]


@functools.cache
def matmul_tflops(device_str: str, dtype: torch.dtype, flops: float) -> float:
    """TFLOP/s of a square matmul with (up to a size cap) the given FLOP count, this run."""
    device = torch.device(device_str)
    n = int(round((flops / 2) ** (1 / 3) / 128)) * 128
    n = max(256, min(n, 8192 if device.type == "cuda" else 1536))
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_once(lambda: a @ b, device, reps=10 if device.type == "cuda" else 3)
    return 2 * n**3 / t / 1e12


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
