"""Backend discovery and torch.library registration for the fused ops.

Backends:
  reference  pure PyTorch (ctrlaug/ops/reference.py); always present; materialises.
  cpp        C++/OpenMP kernels in the compiled extension ``ctrlaug._C`` (CPU tensors).
  cuda       CUDA kernels in the same extension (CUDA tensors; built when torch has CUDA + nvcc).
  triton     Triton kernels in ``ctrlaug.kernels`` (CUDA tensors; CPU tensors under TRITON_INTERPRET=1).

What each backend can run (devices, dtypes, largest feature width) is the table ``CAPABILITIES``;
``resolve`` checks a call against it, so "auto" only ever picks a backend that can run the call,
and an explicit backend that cannot fails up front with the reason and the alternatives. The ops
validate their arguments fully before they resolve (ctrlaug/ops/correspondence.py,
region_contrast.py); the backends behind them only assert.

The C++/CUDA ops share the one schema block of csrc/ctrlaug.cpp (namespace ``ctrlaug``); their
fake kernels are registered here. The Triton ops are defined in Python under ``ctrlaug_triton``
because they must exist when the extension is not built. None of these ops has an autograd
kernel: gradients come only from the autograd.Function of each public op.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import warnings
from dataclasses import dataclass

import torch

from .reference import acc_dtype

BACKENDS = ("reference", "cpp", "cuda", "triton")
INSTALL_HINT = "pip install --no-build-isolation -e .  (see README: Install)"

# Preference among fused GPU backends for backend="auto" on CUDA tensors, fastest first, from the
# measurements in bench/RESULTS.md. CTRLAUG_GPU_BACKEND=triton|cuda overrides it.
GPU_PREFERENCE = ("triton", "cuda")

# Load-once state kept in plain module globals rather than functools.cache: torch.compile traces
# through these functions and ignores cache wrappers, which would re-run the registrations.
_ext_loaded: bool | None = None
_ext_error: str | None = None
_triton_registered: bool | None = None


def _load_extension() -> bool:
    """Import ``ctrlaug._C`` (which runs the C++ op registrations); False when it is not built."""
    global _ext_error, _ext_loaded
    if _ext_loaded is not None:
        return _ext_loaded
    _ext_loaded = False
    if os.environ.get("CTRLAUG_DISABLE_EXT", "0") == "1":
        _ext_error = "disabled by CTRLAUG_DISABLE_EXT=1"
        return False
    try:
        from ctrlaug import _C  # noqa: F401
    except ImportError as e:  # not built, or built against another torch
        _ext_error = str(e)
        return False
    _register_fakes()
    _ext_loaded = True
    return True


def _register_fakes() -> None:
    @torch.library.register_fake("ctrlaug::correspondence")
    def _(clip_boxes, video_boxes, clip_grid, video_grid):
        return _correspondence_fake(clip_boxes, video_boxes, clip_grid, video_grid)

    @torch.library.register_fake("ctrlaug::region_contrast_fwd")
    def _(queries, keys, queue, tau, with_grad):
        return _fwd_fake(queries, keys, queue, tau, with_grad)

    @torch.library.register_fake("ctrlaug::region_contrast_bwd")
    def _(queries, keys, lse, coef, tau):
        return _bwd_fake(queries, keys, lse, coef, tau)


def _correspondence_fake(clip_boxes, video_boxes, clip_grid, video_grid):
    nc = clip_grid[0] * clip_grid[1] * clip_grid[2]
    nv = video_grid[0] * video_grid[1] * video_grid[2]
    return clip_boxes.new_empty((clip_boxes.shape[0], nc, nv), dtype=torch.float32)


def _fwd_fake(queries, keys, queue, tau, with_grad):
    acc = acc_dtype(queries.dtype)
    m, d = queries.shape
    lse = queries.new_empty((m,), dtype=acc)
    o = queries.new_empty((m if with_grad else 0, d), dtype=acc)
    return lse, o


def _bwd_fake(queries, keys, lse, coef, tau):
    return keys.new_empty(keys.shape, dtype=acc_dtype(queries.dtype))


# ---------------------------------------------------------------------------------------------
# Triton ops (Python-defined schemas; opaque to torch.compile, which calls them as black boxes).
# ---------------------------------------------------------------------------------------------


def triton_installed() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # e.g. sys.modules["triton"] = None to hide it
        return False


def _register_triton() -> bool:
    global _triton_registered
    if _triton_registered is None:
        _triton_registered = triton_installed() and _define_triton_ops()
    return _triton_registered


def _fp32_exact() -> bool:
    """float32 inputs follow torch's matmul policy: exact fp32 dots by default ("highest"),
    TF32 tensor cores after ``torch.set_float32_matmul_precision("high")``."""
    return torch.get_float32_matmul_precision() == "highest"


def _define_triton_ops() -> bool:

    @torch.library.custom_op("ctrlaug_triton::correspondence", mutates_args=())
    def tri_correspondence(
        clip_boxes: torch.Tensor, video_boxes: torch.Tensor, clip_grid: list[int], video_grid: list[int]
    ) -> torch.Tensor:
        from ctrlaug.kernels import correspondence as k

        return k.correspondence(clip_boxes, video_boxes, tuple(clip_grid), tuple(video_grid))

    tri_correspondence.register_fake(_correspondence_fake)

    @torch.library.custom_op("ctrlaug_triton::region_contrast_fwd", mutates_args=())
    def tri_fwd(
        queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor | None, tau: float, with_grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        from ctrlaug.kernels import region_contrast as k

        return k.region_contrast_fwd(queries, keys, queue, tau, with_grad, precise=_fp32_exact())

    tri_fwd.register_fake(_fwd_fake)

    @torch.library.custom_op("ctrlaug_triton::region_contrast_bwd", mutates_args=())
    def tri_bwd(
        queries: torch.Tensor, keys: torch.Tensor, lse: torch.Tensor, coef: torch.Tensor, tau: float
    ) -> torch.Tensor:
        from ctrlaug.kernels import region_contrast as k

        return k.region_contrast_bwd(queries, keys, lse, coef, tau, precise=_fp32_exact())

    tri_bwd.register_fake(_bwd_fake)
    return True


# ---------------------------------------------------------------------------------------------
# Capabilities: what a backend can run, whether or not it is built here
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Capability:
    """What one backend can run.

    devices: device types of the tensors it takes (None: any).
    dtypes: feature dtypes of region_contrast (queries, keys) it takes.
    max_d: largest feature width D of region_contrast (None: no limit).

    correspondence takes boxes of any float dtype on every backend (the op casts them to float32
    for the fused ones), so only ``devices`` applies to it: the op resolves with dtype and D None.
    """

    devices: tuple[str, ...] | None
    dtypes: tuple[torch.dtype, ...]
    max_d: int | None


# Every feature dtype region_contrast takes at all (the ops reject others before resolving).
FEATURE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_GPU_FLOATS = (torch.float32, torch.bfloat16, torch.float16)

# The Triton and CUDA limits are the kernels' own: MAX_D in kernels/region_contrast.py and
# CTRLAUG_RC_MAX_D in csrc/cuda/kernels.h (tests/test_region_contrast.py keeps them equal). Triton
# takes CPU tensors only under TRITON_INTERPRET=1, which ``available`` checks.
CAPABILITIES: dict[str, Capability] = {
    "reference": Capability(devices=None, dtypes=FEATURE_DTYPES, max_d=None),
    "cpp": Capability(devices=("cpu",), dtypes=FEATURE_DTYPES, max_d=None),
    "cuda": Capability(devices=("cuda",), dtypes=_GPU_FLOATS, max_d=256),
    "triton": Capability(devices=("cuda", "cpu"), dtypes=_GPU_FLOATS, max_d=256),
}

# The exception type for each capability a call can miss, so that a dtype problem is a TypeError
# and a size problem a ValueError wherever it is found (as in the ops' own validation).
_MISS_ERROR = {"dtype": TypeError, "max_d": ValueError}


def _dtype_names(dtypes) -> str:
    return ", ".join(str(d).replace("torch.", "") for d in dtypes)


def capability_miss(
    backend: str, dtype: torch.dtype | None = None, d: int | None = None
) -> tuple[str, str] | None:
    """``(capability, why)`` for the first capability of ``backend`` that a call with features of
    ``dtype`` and width ``d`` misses; None when the table allows the call. ``dtype`` / ``d`` None:
    not constrained (correspondence). The device half of the table, and whether the backend is
    built here, is ``available``."""
    cap = CAPABILITIES[backend]
    if dtype is not None and dtype not in cap.dtypes:
        return (
            "dtype",
            f"the {backend} backend takes {_dtype_names(cap.dtypes)} features, got {_dtype_names([dtype])}",
        )
    if d is not None and cap.max_d is not None and d > cap.max_d:
        return "max_d", f"the {backend} backend takes feature dim D <= {cap.max_d}, got D = {d}"
    return None


# ---------------------------------------------------------------------------------------------
# Availability and choice
# ---------------------------------------------------------------------------------------------


@torch.compiler.assume_constant_result  # dynamo cannot trace the dispatcher query; it never changes
def _has_kernel(op: str, key: str) -> bool:
    return _load_extension() and torch._C._dispatch_has_kernel_for_dispatch_key(f"ctrlaug::{op}", key)


def available(backend: str, device: torch.device, op: str = "region_contrast_fwd") -> bool:
    """Whether ``backend`` is built here and takes tensors of ``device`` (``CAPABILITIES``)."""
    if backend not in CAPABILITIES:
        raise ValueError(f"unknown backend {backend!r}; choose one of {('auto',) + BACKENDS}")
    devices = CAPABILITIES[backend].devices
    if devices is not None and device.type not in devices:
        return False
    if backend == "reference":
        return True
    if backend in ("cpp", "cuda"):
        return _has_kernel(op, device.type.upper())
    if device.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") != "1":  # triton
        return False
    return _register_triton()


def _why_missing(backend: str, device: torch.device) -> str:
    if backend == "cpp":
        if device.type != "cpu":
            return f"the cpp backend runs CPU tensors only, got a {device.type} tensor"
        return f"the compiled extension ctrlaug._C is not available ({_ext_error}); build it with: {INSTALL_HINT}"
    if backend == "cuda":
        if device.type != "cuda":
            return f"the cuda backend runs CUDA tensors only, got a {device.type} tensor"
        if not _load_extension():
            return f"the compiled extension ctrlaug._C is not available ({_ext_error}); build it with: {INSTALL_HINT}"
        return (
            "ctrlaug._C was built without CUDA kernels; rebuild on a machine where torch has CUDA and "
            f"nvcc is on PATH (CUDA_HOME set), without CTRLAUG_SKIP_CUDA=1: {INSTALL_HINT}"
        )
    if backend == "triton":
        if not triton_installed():
            return "triton is not installed: pip install triton  (or pip install -e '.[triton]')"
        return "the triton backend runs CUDA tensors, or CPU tensors when TRITON_INTERPRET=1 is set before import"
    return "unknown reason"


_warned: set[str] = set()


def _warn_once(key: str, msg: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def _can_run(backend: str, device: torch.device, op: str, dtype, d) -> bool:
    return available(backend, device, op) and capability_miss(backend, dtype, d) is None


def resolve(
    backend: str, device: torch.device, op: str, dtype: torch.dtype | None = None, d: int | None = None
) -> str:
    """Turn ``backend`` ("auto" or a name) into a backend that can run ``op`` on ``device`` with
    features of ``dtype`` and width ``d`` (None: not constrained; correspondence passes neither).

    "auto" prefers cpp on CPU (whose instruction-set path is raced once per process:
    ``_ensure_cpu_choice``) and the measured-fastest fused backend on CUDA, skips any that is
    not built here or whose ``CAPABILITIES`` exclude the call, and falls back to the reference
    quietly (one warning per process and reason). An explicit backend that is missing raises
    RuntimeError naming the fix; one that is built but cannot run the call raises the error of the
    capability it misses (TypeError for the dtype, ValueError for D), naming the backends that can.
    """
    if backend == "auto":
        if device.type == "cpu":
            order = ("cpp",)
        elif device.type == "cuda":
            env = os.environ.get("CTRLAUG_GPU_BACKEND")
            order = (env,) if env in ("triton", "cuda") else GPU_PREFERENCE
        else:
            order = ()
        misses = []
        for b in order:
            if not available(b, device, op):
                continue
            miss = capability_miss(b, dtype, d)
            if miss is None:
                return _chosen(b, op)
            misses.append(miss[1])
        if misses:  # built, but none of them can run this call
            why, key = "; ".join(misses), f"fallback-{device.type}-{'; '.join(misses)}"
        else:
            why = _why_missing(order[0], device) if order else "unsupported device"
            key = f"fallback-{device.type}"
        _warn_once(
            key,
            f"ctrlaug: no fused backend for this call on {device.type} tensors ({why}); "
            "using the pure-PyTorch reference, which materialises the logits.",
        )
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {('auto',) + BACKENDS}")
    if not available(backend, device, op):
        raise RuntimeError(f"ctrlaug backend {backend!r} is not available: {_why_missing(backend, device)}")
    miss = capability_miss(backend, dtype, d)
    if miss is not None:
        could = [b for b in BACKENDS if b != backend and _can_run(b, device, op, dtype, d)]
        raise _MISS_ERROR[miss[0]](
            f"ctrlaug backend {backend!r} cannot run this call: {miss[1]}; "
            f"backends that can, here: {', '.join(could)} (or backend='auto')"
        )
    return _chosen(backend, op)


def _chosen(backend: str, op: str) -> str:
    """``backend``, once the cpp path of a CPU region contrast is chosen (``_ensure_cpu_choice``)."""
    if backend == "cpp" and op.startswith("region_contrast"):
        _ensure_cpu_choice()
    return backend


def op_handle(backend: str, name: str):
    """The registered op for a fused backend (cpp and cuda share ``torch.ops.ctrlaug``).

    ``reference`` returns the pure-PyTorch building block of the same contract, which lets the
    tests check the loss decomposition of region_contrast.py independently of any kernel.
    """
    if backend == "reference":
        from . import reference

        return getattr(reference, f"{name}_ref")
    if backend == "triton":
        _register_triton()
        return getattr(torch.ops.ctrlaug_triton, name)
    _load_extension()
    _chosen(backend, name)
    return getattr(torch.ops.ctrlaug, name)


CPU_ISA_ENV = "CTRLAUG_CPU_ISA"
CACHE_DIR_ENV = "CTRLAUG_CACHE_DIR"
# The paths "auto" races (emu512 is a test path, never chosen unless forced).
CPU_AUTO_PATHS = ("avx512", "avx2", "blas", "portable")
# The race's problem: one training-shaped slice (12 clips x 32 cells against 4 videos x 256 cells,
# D = 128, float32), forward with gradient then backward: 0.4 GFLOP, about 1 ms at the avx512 rate
# the bench reports on a 2-core Zen 5 (367 GFLOP/s), 45 ms at the portable one (9 GFLOP/s), which
# the slice prunes. Two forward tasks of kBM = 192 rows keep both cores of a 2-core machine busy.
_TRIAL_SHAPE = (384, 1024, 128)
_TRIAL_SLICE = (192, 256)  # the warm-up and pruning slice (queries, keys): 1/8 of the problem
_TRIAL_PRUNE = 6.0  # a path this many times slower than the best on the slice does not race
_TRIAL_ROUNDS = 3  # timed rounds per racing path on the whole problem; the minimum counts

# The choice "auto" made in this process (None until the first float CPU region contrast, or
# cpu_isa / cpu_isa_chosen, needs it): {"path", "source": "measured" | "cache" | "pinned",
# "threads", "timings_ms": {path: ms per forward+backward of the trial problem}, "pruned": [paths
# whose time is scaled from the slice], "load_average" and "cached" (a race is cached only when the
# 1-minute load average was at most the core count), "cache_file"}. Kept for the process: once made it never
# changes, whatever the load or the thread count later.
_cpu_choice: dict[str, object] | None = None
_cpu_choice_lock = threading.Lock()
# Test hook: {path: seconds} added to each timed round of that path (a path made slow); a race run
# with it is never cached.
_TRIAL_PENALTY: dict[str, float] = {}


def _cpu_forced() -> bool:
    return os.environ.get(CPU_ISA_ENV, "") not in ("", "auto")


def _cpu_isa_raw() -> dict[str, object]:
    import json

    return json.loads(torch.ops.ctrlaug.cpu_isa_info())


def cpu_isa() -> dict[str, object] | None:
    """The cpp backend's instruction-set paths here (csrc/cpu/rc_kernels.h), None without the
    extension: ``{"chosen": path float32 runs now, or "error: ..." for a bad CTRLAUG_CPU_ISA,
    "chosen_by": "CTRLAUG_CPU_ISA" (forced) or "selected" (auto's measured or cached choice),
    "paths": {name: "ok" or why it cannot run here}, "blas_library": "mkl", "other" or "none",
    "float64": "portable", "auto": the choice auto made in this process (see ``cpu_isa_chosen``;
    None while CTRLAUG_CPU_ISA forces a path and auto has not been needed)}``."""
    if not (_load_extension() and hasattr(torch.ops.ctrlaug, "cpu_isa_info")):
        return None
    _ensure_cpu_choice()
    info = _cpu_isa_raw()
    info["auto"] = None if _cpu_choice is None else dict(_cpu_choice)
    return info


def cpu_isa_paths() -> tuple[str, ...]:
    """Every path name the cpp backend knows (runnable here or not); () without the extension."""
    if not (_load_extension() and hasattr(torch.ops.ctrlaug, "cpu_isa_info")):
        return ()
    return tuple(_cpu_isa_raw()["paths"])


def cpu_isa_chosen() -> str:
    """The path the cpp backend's float32 (and half) region contrast runs in this process now:
    CTRLAUG_CPU_ISA's (or ``pin_cpu_isa``'s) when set, else the one "auto" measured fastest here
    (made on first use, or read from the cache; kept for the rest of the process). Record it
    with a checkpoint and hand it to ``pin_cpu_isa`` on resume so that the resumed run takes the
    same path (the paths differ in summation order, so only the same path resumes bitwise).

    Raises RuntimeError (one line) when the extension is not built or CTRLAUG_CPU_ISA is bad."""
    info = cpu_isa()
    if info is None:
        raise RuntimeError(
            f"the compiled extension ctrlaug._C is not available ({_ext_error}); {INSTALL_HINT}"
        )
    chosen = str(info["chosen"])
    if chosen.startswith("error: "):
        raise RuntimeError(chosen[len("error: ") :])
    return chosen


def pin_cpu_isa(name: str) -> None:
    """Force the cpp backend's path ``name`` for the rest of the process, exactly as
    ``CTRLAUG_CPU_ISA=name`` would: it sets that variable (which child processes inherit) and
    makes ``name`` auto's choice too, so it holds even if the variable is removed later. Works
    whether or not the op already ran in this process (the extension reads the path at every
    call). The counterpart of ``cpu_isa_chosen`` for resuming a run on the path it started on.

    Raises ValueError for a name that is no path (naming the paths) and RuntimeError for a path
    this CPU or build cannot run (naming why), or when the extension is not built."""
    global _cpu_choice
    if not _load_extension():
        raise RuntimeError(
            f"pin_cpu_isa: the compiled extension ctrlaug._C is not available ({_ext_error}); {INSTALL_HINT}"
        )
    if not hasattr(torch.ops.ctrlaug, "cpu_isa_select"):
        raise RuntimeError(f"pin_cpu_isa: ctrlaug._C predates path selection; rebuild it: {INSTALL_HINT}")
    paths = _cpu_isa_raw()["paths"]
    if name not in paths:
        raise ValueError(f"pin_cpu_isa: {name!r} is not a CPU path; choose one of {', '.join(paths)}")
    if paths[name] != "ok":
        raise RuntimeError(f"pin_cpu_isa: path {name} cannot run here: {paths[name]}")
    torch.ops.ctrlaug.cpu_isa_select(name)
    os.environ[CPU_ISA_ENV] = name
    _cpu_choice = {"path": name, "source": "pinned", "threads": torch.get_num_threads()}


def _reset_cpu_choice() -> None:
    """Forget auto's choice (tests only: a process otherwise keeps its choice for good)."""
    global _cpu_choice
    _cpu_choice = None
    if _load_extension() and hasattr(torch.ops.ctrlaug, "cpu_isa_select"):
        torch.ops.ctrlaug.cpu_isa_select("")


def _cache_file() -> str:
    root = os.environ.get(CACHE_DIR_ENV)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "ctrlaug")
    return os.path.join(root, "cpu_isa.json")


def _cpu_model_and_flags() -> tuple[str, str]:
    """The first CPU's model name and its sorted feature flags (/proc/cpuinfo; elsewhere the
    platform's processor string and no flags)."""
    import platform

    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    if fields:
                        break  # end of the first processor's block
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = fields.get("model name") or platform.processor() or platform.machine()
    flags = fields.get("flags") or fields.get("Features") or ""
    return model, " ".join(sorted(flags.split()))


def _cpu_cache_key(candidates: list[str]) -> dict[str, object]:
    """What the choice depends on: the CPU (model and flags), the thread count, the extension
    build (a hash of the shared object), torch (its BLAS), and the paths raced."""
    import hashlib

    from ctrlaug import _C

    h = hashlib.sha256()
    with open(_C.__file__, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    model, flags = _cpu_model_and_flags()
    return {
        "cpu_model": model,
        "cpu_flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "threads": torch.get_num_threads(),
        "extension_sha256": h.hexdigest()[:16],
        "torch": torch.__version__,
        "candidates": candidates,
        "trial": [list(_TRIAL_SHAPE), list(_TRIAL_SLICE), _TRIAL_PRUNE, _TRIAL_ROUNDS],
    }


def _key_id(key: dict[str, object]) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def _read_cache(path: str) -> dict[str, object]:
    """The cache's entries; {} when it is missing, unreadable or corrupt (then the race re-runs)."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    return entries if isinstance(entries, dict) else {}


def _write_cache(path: str, entries: dict[str, object]) -> None:
    """Best effort: a cache that cannot be written costs one race per process, nothing else."""
    import json

    from ctrlaug.utils.atomic import atomic_write

    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, json.dumps({"version": 1, "entries": entries}, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass


def _load_average() -> float:
    """The 1-minute load average (0 where the platform has none)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def _trial_case():
    d = _TRIAL_SHAPE[2]
    g = torch.Generator().manual_seed(0)  # never the global RNG: the race must not shift a run's draws
    q = torch.nn.functional.normalize(torch.randn(_TRIAL_SHAPE[0], d, generator=g), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(_TRIAL_SHAPE[1], d, generator=g), dim=-1)
    coef = torch.rand(_TRIAL_SHAPE[0], generator=g)
    return q, k, coef


def _race(candidates: list[str]) -> tuple[dict[str, float], list[str]]:
    """Seconds per forward+backward of the trial problem for each candidate, and the paths
    pruned. Each path first runs a slice of the problem three times (BLAS initialisation, first-touch
    scratch); a path whose better slice time is over ``_TRIAL_PRUNE`` times the best one's is
    pruned (its time is then the slice time scaled to the whole problem), the others race
    ``_TRIAL_ROUNDS`` interleaved rounds on the whole problem, the minimum counting. Each path runs
    as this thread's trial path (ctrlaug::cpu_isa_trial), so what other threads run is untouched."""
    import time

    from torch._subclasses.fake_tensor import unset_fake_temporarily

    fwd, bwd, trial = (
        torch.ops.ctrlaug.region_contrast_fwd,
        torch.ops.ctrlaug.region_contrast_bwd,
        torch.ops.ctrlaug.cpu_isa_trial,
    )
    m_slice, n_slice = _TRIAL_SLICE
    scale = (_TRIAL_SHAPE[0] * _TRIAL_SHAPE[1]) / (m_slice * n_slice)
    with unset_fake_temporarily(), torch.inference_mode():
        q, k, coef = _trial_case()

        def once(path: str, m: int | None = None, n: int | None = None) -> float:
            trial(path)
            try:
                t0 = time.perf_counter()
                lse, _o = fwd(q[:m], k[:n], None, 0.07, True)
                bwd(q[:m], k[:n], lse, coef[:m], 0.07)
                return time.perf_counter() - t0 + _TRIAL_PENALTY.get(path, 0.0)
            finally:
                trial("")

        sliced = {p: min(once(p, m_slice, n_slice) for _ in range(3)) for p in candidates}
        fastest = min(sliced.values())
        racing = [p for p in candidates if sliced[p] <= _TRIAL_PRUNE * fastest]
        pruned = [p for p in candidates if p not in racing]
        best = {p: sliced[p] * scale for p in pruned}
        for _ in range(_TRIAL_ROUNDS):
            for p in racing:
                best[p] = min(best.get(p, float("inf")), once(p))
    return {p: best[p] for p in candidates}, pruned


@torch.compiler.assume_constant_result  # a compiled graph sees the choice, never the race
def _ensure_cpu_choice() -> str:
    """Make auto's choice for this process if it is not made yet (no-op while CTRLAUG_CPU_ISA
    forces a path): the cached choice for this machine, thread count and build when there is
    one, else the fastest path of a race over every path this CPU runs (``_race``), cached."""
    if _cpu_choice is not None or _cpu_forced():
        return "" if _cpu_choice is None else str(_cpu_choice["path"])
    with _cpu_choice_lock:  # two threads' first calls race once, and agree
        return _make_cpu_choice()


def _make_cpu_choice() -> str:
    global _cpu_choice
    if _cpu_choice is not None:
        return str(_cpu_choice["path"])
    if not (_load_extension() and hasattr(torch.ops.ctrlaug, "cpu_isa_trial")):
        return ""
    paths = _cpu_isa_raw()["paths"]
    candidates = [p for p in CPU_AUTO_PATHS if paths.get(p) == "ok"]
    key = _cpu_cache_key(candidates)
    kid, path = _key_id(key), _cache_file()
    entries = _read_cache(path)
    hit = entries.get(kid)
    if (
        isinstance(hit, dict)
        and hit.get("path") in candidates
        and isinstance(hit.get("timings_ms"), dict)
        and not _TRIAL_PENALTY
    ):
        choice = {
            "path": hit["path"],
            "source": "cache",
            "timings_ms": hit["timings_ms"],
            "pruned": hit.get("pruned", []),
        }
    else:
        load = _load_average()
        secs, pruned = _race(candidates)
        best = min(candidates, key=lambda p: (secs[p], candidates.index(p)))
        timings = {p: round(secs[p] * 1e3, 4) for p in candidates}
        # A race run while other work holds the cores measures the scheduler as much as the paths:
        # it still decides for this process, but only a quiet race is cached for the next ones.
        quiet = load <= (os.cpu_count() or 1)
        choice = {
            "path": best,
            "source": "measured",
            "timings_ms": timings,
            "pruned": pruned,
            "load_average": round(load, 2),
            "cached": quiet and not _TRIAL_PENALTY,
        }
        if choice["cached"]:  # a race skewed by the test hook is never cached either
            entries[kid] = {"path": best, "timings_ms": timings, "pruned": pruned, "key": key}
            _write_cache(path, entries)
    torch.ops.ctrlaug.cpu_isa_select(choice["path"])
    choice.update(threads=key["threads"], cache_file=path)
    _cpu_choice = choice
    return str(choice["path"])


def status() -> dict[str, object]:
    """What is built and importable here (printed by ``python -m ctrlaug.ops``)."""
    ext = _load_extension()
    return {
        "torch": torch.__version__,
        "extension": ext,
        "extension_error": _ext_error,
        "cpp": ext and _has_kernel("region_contrast_fwd", "CPU"),
        "cpp_cpu_isa": cpu_isa(),
        "cuda_kernels": ext and _has_kernel("region_contrast_fwd", "CUDA"),
        "cuda_device": torch.cuda.is_available(),
        "triton_installed": triton_installed(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0") == "1",
    }
