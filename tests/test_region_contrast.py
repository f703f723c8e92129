"""ctrlaug.ops.region_contrast: the spec against an independent oracle, and every backend
against the spec for values and gradients (docs/design.md §4 tolerance rule)."""

from __future__ import annotations

import os
import platform
import warnings

import pytest
import torch
import torch.nn.functional as F
from tolerance import assert_rule, assert_tight, device_for, flash_rounding_emulation, skip_unless

from ctrlaug.ops import correspondence_ref, region_contrast, region_contrast_ref
from ctrlaug.ops._registry import op_handle

FUSED = ("cpp", "triton", "cuda")


def _skip_unless(backend: str, device: torch.device, dtype: torch.dtype = torch.float32):
    skip_unless(backend, device, "region_contrast_fwd", dtype)


def make_case(P, Nc, Nv, B, D, Nq, *, seed=0, zero_rows=False, dtype=torch.float64):
    """Normalised features, soft targets from real (flipped, partial) boxes, random owners."""
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(P * Nc, D, generator=g, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(B * Nv, D, generator=g, dtype=torch.float64), dim=-1)
    queue = F.normalize(torch.randn(Nq, D, generator=g, dtype=torch.float64), dim=-1) if Nq else None
    owner = torch.randint(0, B, (P,), generator=g)
    # Soft targets: random nonnegative rows with a few non-zeros, like a correspondence row.
    full = torch.rand(P, Nc, Nv, generator=g, dtype=torch.float64)
    t = torch.where(torch.rand(P, Nc, Nv, generator=g, dtype=torch.float64) < 0.3, full, 0.0)
    # a row the mask emptied keeps its largest entry: only the rows zeroed below are empty
    empty = t.sum(-1) == 0
    keep = torch.zeros_like(t).scatter_(-1, full.argmax(-1, keepdim=True), 1.0).bool()
    t = torch.where(empty[..., None] & keep, full, t)
    t = t / t.sum(-1, keepdim=True).clamp_min(1e-12)
    if zero_rows:
        t[0, : Nc // 2] = 0.0  # rows whose clip cell the video does not cover (none when Nc = 1)
    return q.to(dtype), k.to(dtype), t.float(), owner, None if queue is None else queue.to(dtype)


# (P, Nc, Nv, B, D, Nq): none are block multiples except the paper-shaped one
SHAPES = [
    (3, 5, 7, 2, 16, 0),
    (5, 7, 9, 3, 200, 11),
    (4, 32, 128, 4, 128, 37),  # paper grid: 2x4x4 clips vs 8x4x4 videos
    (1, 3, 5, 1, 64, 29),  # single video: the queue holds all the negatives
    (1, 1, 1, 1, 16, 0),  # a single key: loss is 0, gradients are 0
    (7, 6, 10, 5, 64, 70),
]
# The one case whose loss and gradients are zero by the mathematics (softmax over one key is 1):
# its target is non-zero, so the zero is not an empty target's. Every other case must have a
# non-zero loss, dq and dk, or its comparison would test nothing.
ZERO_BY_MATH = {(1, 1, 1, 1, 16, 0)}


def assert_nonvacuous(shape, t, loss, dq, dk):
    """The case's float64 values are what its description says: non-zero, or zero for the right reason."""
    assert float(t.sum(-1).gt(0).sum()) >= 1, f"{_ids(shape)}: no target row at all"
    sizes = [float(x.detach().abs().max()) for x in (loss, dq, dk)]
    if shape in ZERO_BY_MATH:
        assert max(sizes) < 1e-12, f"{_ids(shape)}: loss/dq/dk should be 0, got {sizes}"
    else:
        assert min(sizes) > 1e-6, f"{_ids(shape)}: vacuous case, max |loss|, |dq|, |dk| = {sizes}"


def _ids(s):
    return "P{}Nc{}Nv{}B{}D{}Nq{}".format(*s)


# ------------------------------------------------------------------------------------------
# The spec
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_reference_equals_cross_entropy_with_probability_targets(shape):
    P, Nc, Nv, B, D, Nq = shape
    q, k, t, owner, queue = make_case(*shape, zero_rows=True)
    tau = 0.1
    ref = region_contrast_ref(q, k, t, owner, tau=tau, queue=queue, reduction="none")
    keys = k if queue is None else torch.cat([k, queue])
    logits = q @ keys.t() / tau
    dense = torch.zeros(P, Nc, keys.shape[0], dtype=torch.float64)
    for p in range(P):
        o = int(owner[p])
        dense[p, :, o * Nv : (o + 1) * Nv] = t[p].double()
    # F.cross_entropy with probability targets: -sum_j y_j log softmax(x)_j (an independent path)
    ce = F.cross_entropy(logits, dense.view(P * Nc, -1), reduction="none")
    torch.testing.assert_close(ref, ce, rtol=1e-10, atol=1e-10)
    qg, kg = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    keys_g = kg if queue is None else torch.cat([kg, queue])
    F.cross_entropy(qg @ keys_g.t() / tau, dense.view(P * Nc, -1), reduction="sum").backward()
    assert_nonvacuous(shape, t, ce, qg.grad, kg.grad)


def test_reference_reductions_and_no_target_or_queue_grad():
    q, k, t, owner, queue = make_case(3, 4, 6, 2, 16, 5)
    q.requires_grad_(True)
    queue.requires_grad_(True)
    t.requires_grad_(True)
    rows = region_contrast_ref(q, k, t, owner, queue=queue, reduction="none")
    torch.testing.assert_close(region_contrast_ref(q, k, t, owner, queue=queue), rows.mean())
    torch.testing.assert_close(region_contrast_ref(q, k, t, owner, queue=queue, reduction="sum"), rows.sum())
    rows.sum().backward()
    assert q.grad is not None and queue.grad is None and t.grad is None


def test_reference_gradcheck_float64():
    q, k, t, owner, queue = make_case(2, 3, 4, 2, 8, 3)
    q.requires_grad_(True)
    k.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: region_contrast_ref(a, b, t, owner, tau=0.2, queue=queue, reduction="none"), (q, k)
    )


@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_loss_decomposition_matches_spec(shape):
    """w*LSE - <q, t>/tau with dq = g(w*o - t)/tau and the dense/target dk split (the algebra every
    fused backend relies on), run on the reference building blocks, equals the spec in float64."""
    from ctrlaug.ops.region_contrast import _RegionContrast

    q, k, t, owner, queue = make_case(*shape, zero_rows=True)
    g = torch.randn(q.shape[0], dtype=torch.float64)
    spec = _run(
        lambda *a: region_contrast_ref(*a[:4], tau=a[5], queue=a[4], reduction="none"),
        q,
        k,
        t,
        owner,
        queue,
        0.07,
        g,
    )
    dec = _run(
        lambda *a: _RegionContrast.apply(*a[:4], a[4], a[5], "none", "reference"),
        q,
        k,
        t,
        owner,
        queue,
        0.07,
        g,
    )
    for a, b in zip(dec, spec):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert_nonvacuous(shape, t, *spec)


def test_loss_decomposition_gradcheck_float64():
    from ctrlaug.ops.region_contrast import _RegionContrast

    q, k, t, owner, queue = make_case(2, 3, 4, 2, 8, 3)
    q.requires_grad_(True)
    k.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: _RegionContrast.apply(a, b, t, owner, queue, 0.2, "none", "reference"), (q, k)
    )


# ------------------------------------------------------------------------------------------
# Fused backends vs the spec
# ------------------------------------------------------------------------------------------


def _run(fn, q, k, t, owner, queue, tau, grad_out):
    q = q.detach().clone().requires_grad_(True)
    k = k.detach().clone().requires_grad_(True)
    loss = fn(q, k, t, owner, queue, tau)
    loss.backward(grad_out)
    return loss.detach(), q.grad, k.grad


def _compare(backend, shape, dtype, seed=0, zero_rows=False, tau=0.07):
    dev = device_for(backend)
    _skip_unless(backend, dev, dtype)
    q64, k64, t, owner, queue64 = make_case(*shape, seed=seed, zero_rows=zero_rows)
    M = q64.shape[0]
    grad_out = torch.randn(M, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)

    def ref_fn(q, k, t, owner, queue, tau):
        return region_contrast_ref(q, k, t, owner, tau=tau, queue=queue, reduction="none")

    def ker_fn(q, k, t, owner, queue, tau):
        return region_contrast(q, k, t, owner, tau=tau, queue=queue, reduction="none", backend=backend)

    # truth: float64 computation on the same (dtype-rounded) inputs
    qd, kd = q64.to(dtype), k64.to(dtype)
    queued = None if queue64 is None else queue64.to(dtype)
    truth = _run(
        ref_fn, qd.double(), kd.double(), t, owner, None if queued is None else queued.double(), tau, grad_out
    )
    ref = _run(ref_fn, qd, kd, t, owner, queued, tau, grad_out.float())
    to = lambda x: None if x is None else x.to(dev)  # noqa: E731
    ker = _run(ker_fn, to(qd), to(kd), to(t), to(owner), to(queued), tau, grad_out.float().to(dev))
    assert ker[1].dtype == dtype and ker[2].dtype == dtype
    assert_nonvacuous(shape, t, *truth)
    for name, a, r, tr in zip(("loss", "dq", "dk"), ker, ref, truth):
        assert_rule(f"{backend}/{dtype}/{name}", a, r, tr, dtype)
    if dtype in (torch.bfloat16, torch.float16):  # and the tighter half-precision rule beside it
        emul = flash_rounding_emulation(q64, k64, t, owner, queue64, tau, grad_out, dtype)
        for name, a, e, tr in zip(("loss", "dq", "dk"), ker, emul, truth):
            assert_tight(f"{backend}/{dtype}/{name}", a, e, tr)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("shape", SHAPES, ids=_ids)
def test_backend_matches_reference_fp32(backend, shape):
    _compare(backend, shape, torch.float32, zero_rows=True)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2], SHAPES[3]], ids=_ids)
def test_backend_matches_reference_half(backend, dtype, shape):
    _compare(backend, shape, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_tight_half_bound_rejects_a_kernel_that_rounds_more(dtype):
    """The reference run entirely in the half dtype passes the docs/design.md rule by construction (it
    *is* that rule's yardstick) but rounds the logits and the log-sum-exp: the flash-rounding
    bound must reject it, or the bound would not catch a kernel that bad."""
    shape = SHAPES[2]
    q64, k64, t, owner, queue64 = make_case(*shape)
    g = torch.randn(q64.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fn = lambda *a: region_contrast_ref(*a[:4], tau=a[5], queue=a[4], reduction="none")  # noqa: E731
    qd, kd, queued = q64.to(dtype), k64.to(dtype), queue64.to(dtype)
    truth = _run(fn, qd.double(), kd.double(), t, owner, queued.double(), 0.07, g)
    all_half = _run(fn, qd, kd, t, owner, queued, 0.07, g.to(dtype))
    emul = flash_rounding_emulation(q64, k64, t, owner, queue64, 0.07, g, dtype)
    for name, a, e, tr in zip(("loss", "dq"), all_half, emul, truth):
        with pytest.raises(AssertionError, match="exceeds the flash-rounding bound"):
            assert_tight(f"all-{dtype}/{name}", a, e, tr)


@pytest.mark.parametrize("backend", FUSED)
def test_backend_flipped_boxes_and_sharp_temperature(backend):
    """Targets from real correspondence with flips; tau=0.02 makes logits up to 50."""
    dev = device_for(backend)
    _skip_unless(backend, dev)
    from test_correspondence import messy_boxes

    c, v = messy_boxes(6, torch.Generator().manual_seed(5))
    S = correspondence_ref(c, v, (2, 4, 4), (8, 4, 4))  # 6 clips, zero and partial rows included
    B = 3
    owner = torch.tensor([0, 0, 1, 1, 2, 2])
    q = F.normalize(torch.randn(6 * 32, 64, dtype=torch.float64), dim=-1)
    k = F.normalize(torch.randn(B * 128, 64, dtype=torch.float64), dim=-1)
    g = torch.randn(6 * 32, dtype=torch.float64)
    truth = _run(
        lambda *a: region_contrast_ref(*a[:4], tau=a[5], queue=a[4], reduction="none"),
        q,
        k,
        S,
        owner,
        None,
        0.02,
        g,
    )
    ref = _run(
        lambda *a: region_contrast_ref(*a[:4], tau=a[5], queue=a[4], reduction="none"),
        q.float(),
        k.float(),
        S,
        owner,
        None,
        0.02,
        g.float(),
    )
    ker = _run(
        lambda *a: region_contrast(*a[:4], tau=a[5], queue=a[4], reduction="none", backend=backend),
        q.float().to(dev), k.float().to(dev), S.to(dev), owner.to(dev), None, 0.02, g.float().to(dev),
    )  # fmt: skip
    for name, a, r, tr in zip(("loss", "dq", "dk"), ker, ref, truth):
        assert_rule(f"{backend}/flip/{name}", a, r, tr, torch.float32)


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_backend_reductions(backend, reduction):
    dev = device_for(backend)
    _skip_unless(backend, dev)
    q, k, t, owner, queue = make_case(3, 5, 7, 2, 16, 4, dtype=torch.float32)
    args = [x.to(dev) for x in (q, k, t, owner, queue)]
    rows = region_contrast(*args[:4], queue=args[4], reduction="none", backend=backend)
    red = region_contrast(*args[:4], queue=args[4], reduction=reduction, backend=backend)
    torch.testing.assert_close(red, rows.mean() if reduction == "mean" else rows.sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(13, 23, 17, 11, 40, 0), (9, 50, 33, 9, 24, 5)], ids=_ids)
def test_cpp_uneven_blocks_and_key_splits(shape, dtype):
    """Row counts that are not multiples of the 6-row micro-block, several row blocks per pass, and
    key/query ranges split across tasks (merged partials): rows keys-only and with a queue."""
    _compare("cpp", shape, dtype, zero_rows=True)


def test_cpp_gradcheck_float64():
    _skip_unless("cpp", torch.device("cpu"))
    q, k, t, owner, queue = make_case(2, 3, 5, 2, 8, 3)
    q.requires_grad_(True)
    k.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: region_contrast(a, b, t, owner, tau=0.2, queue=queue, reduction="none", backend="cpp"),
        (q, k),
    )


@pytest.mark.parametrize("backend", FUSED)
def test_backend_opcheck(backend):
    dev = device_for(backend)
    _skip_unless(backend, dev)
    q, k, t, owner, queue = make_case(3, 5, 7, 2, 16, 4, dtype=torch.float32)
    q, k, queue = q.to(dev), k.to(dev), queue.to(dev)
    fwd, bwd = op_handle(backend, "region_contrast_fwd"), op_handle(backend, "region_contrast_bwd")
    for with_grad in (True, False):
        torch.library.opcheck(fwd, (q, k, queue, 0.1, with_grad))
    torch.library.opcheck(fwd, (q, k, None, 0.1, True))
    lse, _ = fwd(q, k, queue, 0.1, False)
    torch.library.opcheck(bwd, (q, k, lse, torch.rand(q.shape[0], device=dev), 0.1))


@pytest.mark.parametrize("backend", ["cpp", "triton", "cuda"])
def test_compile_fullgraph(backend):
    """Both ops inside one torch.compile(fullgraph=True) graph, forward and backward."""
    dev = device_for(backend)
    _skip_unless(backend, dev)
    from test_correspondence import nested_boxes

    from ctrlaug.ops import correspondence

    c, v = nested_boxes(4, torch.Generator().manual_seed(0))
    c, v = c.float().to(dev), v.float().to(dev)
    owner = torch.tensor([0, 0, 1, 1], device=dev)
    q = F.normalize(torch.randn(4 * 32, 32, device=dev), dim=-1).requires_grad_(True)
    k = F.normalize(torch.randn(2 * 128, 32, device=dev), dim=-1).requires_grad_(True)

    def step(q, k, c, v, owner):
        S = correspondence(c, v, (2, 4, 4), (8, 4, 4), backend=backend)
        return region_contrast(q, k, S, owner, tau=0.1, backend=backend)

    eager = step(q, k, c, v, owner)
    ge = torch.autograd.grad(eager, (q, k))
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager" if dev.type == "cpu" else "inductor")
    out = compiled(q, k, c, v, owner)
    gc = torch.autograd.grad(out, (q, k))
    torch.testing.assert_close(out, eager)
    torch.testing.assert_close(gc[0], ge[0])
    torch.testing.assert_close(gc[1], ge[1])


# ------------------------------------------------------------------------------------------
# Errors and backend choice
# ------------------------------------------------------------------------------------------


def test_clear_errors():
    q, k, t, owner, queue = make_case(3, 5, 7, 2, 16, 4, dtype=torch.float32)
    with pytest.raises(ValueError, match="feature dim mismatch"):
        region_contrast(q, k[:, :8], t, owner)
    with pytest.raises(ValueError, match="implies P\\*Nc"):
        region_contrast(q[:-1], k, t, owner)
    with pytest.raises(ValueError, match="multiple of Nv"):
        region_contrast(q, k[:-1], t, owner)
    with pytest.raises(IndexError, match="owner values must lie in"):
        region_contrast(q, k, t, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="owner must be an int64 or int32 tensor"):
        region_contrast(q, k, t, owner.float())
    with pytest.raises(ValueError, match=r"owner must have shape \[P\] = \[3\]"):
        region_contrast(q, k, t, owner[:2])
    with pytest.raises(ValueError, match="tau must be a positive"):
        region_contrast(q, k, t, owner, tau=0.0)
    with pytest.raises(ValueError, match="tau must be a positive finite"):
        region_contrast(q, k, t, owner, tau=float("inf"))
    with pytest.raises(TypeError, match="share a dtype"):
        region_contrast(q, k.double(), t, owner)
    with pytest.raises(ValueError, match="reduction must be one of"):
        region_contrast(q, k, t, owner, reduction="avg")
    with pytest.raises(ValueError, match=r"queue must be \[Nq, 16\]"):
        region_contrast(q, k, t, owner, queue=queue[:, :3])
    with pytest.raises(ValueError, match="unknown backend"):
        region_contrast(q, k, t, owner, backend="tpu")


def test_explicit_missing_backend_names_the_fix():
    q, k, t, owner, _ = make_case(3, 5, 7, 2, 16, 0, dtype=torch.float32)
    # CUDA kernels never run CPU tensors: the error must say why and what to do.
    with pytest.raises(RuntimeError, match="cuda backend runs CUDA tensors only"):
        region_contrast(q, k, t, owner, backend="cuda")


def test_auto_falls_back_to_reference_when_extension_is_missing(monkeypatch):
    from ctrlaug.ops import _registry

    monkeypatch.setattr(_registry, "available", lambda b, d, op="": b == "reference")
    monkeypatch.setattr(_registry, "_warned", set())
    q, k, t, owner, _ = make_case(3, 5, 7, 2, 16, 0, dtype=torch.float32)
    with pytest.warns(RuntimeWarning, match="using the pure-PyTorch reference"):
        out = region_contrast(q, k, t, owner)
    torch.testing.assert_close(out, region_contrast_ref(q, k, t, owner))
    with pytest.raises(RuntimeError, match="pip install --no-build-isolation -e ."):
        region_contrast(q, k, t, owner, backend="cpp")


# ------------------------------------------------------------------------------------------
# Validation once in the op (one exception type per kind of problem), then the capability table
# ------------------------------------------------------------------------------------------

# Every explicit backend name and auto: the op validates before it resolves, so the exception
# (type and message) never depends on the backend, nor on what is built here.
ALL_BACKENDS = ("auto", "reference", "cpp", "triton", "cuda")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_one_exception_type_per_kind_of_problem(backend):
    q, k, t, owner, queue = make_case(3, 5, 7, 2, 16, 4, dtype=torch.float32)
    dtype_problems = [
        ((q.int(), k.int(), t, owner), {}, "queries dtype must be one of"),
        ((q, k.double(), t, owner), {}, "share a dtype"),
        ((q, k, t.int(), owner), {}, "targets must be floating point"),
        ((q, k, t, owner.float()), {}, "owner must be an int64 or int32"),
        ((q, k, t, owner), {"queue": queue.int()}, "queue must be floating point"),
        ((q, k, t, owner), {"queue": queue.tolist()}, "queue must be a torch.Tensor or None"),
        ((q.tolist(), k, t, owner), {}, "queries must be a torch.Tensor"),
        ((q, k, t, owner), {"tau": "0.1"}, "tau must be a float"),
    ]
    for args, kw, msg in dtype_problems:
        with pytest.raises(TypeError, match=msg):
            region_contrast(*args, backend=backend, **kw)
    value_problems = [
        ((q, k[:, :8], t, owner), {}, "feature dim mismatch"),
        ((q[:, :0], k[:, :0], t, owner), {}, "empty input"),
        ((q, k, t, owner[:2]), {}, "owner must have shape"),
        ((q, k, t, owner), {"tau": float("nan")}, "tau must be a positive finite"),
        ((q, k, t, owner), {"queue": queue[:, :3]}, "queue must be"),
        ((q, k, t, owner), {"reduction": "avg"}, "reduction must be one of"),
    ]
    for args, kw, msg in value_problems:
        with pytest.raises(ValueError, match=msg):
            region_contrast(*args, backend=backend, **kw)
    with pytest.raises(IndexError, match="owner values must lie in"):
        region_contrast(q, k, t, torch.tensor([0, 1, 2]), backend=backend)


def test_capability_table_matches_the_kernels():
    """The table's limits are the kernels' own: the Triton launcher's MAX_D and dtypes, and the
    CUDA header's CTRLAUG_RC_MAX_D (read from the source: no GPU needed)."""
    import re

    from ctrlaug.ops._registry import CAPABILITIES, FEATURE_DTYPES

    header = os.path.join(os.path.dirname(os.path.dirname(__file__)), "csrc", "cuda", "kernels.h")
    cuda_max_d = int(re.search(r"#define CTRLAUG_RC_MAX_D (\d+)", open(header).read()).group(1))
    assert CAPABILITIES["cuda"].max_d == cuda_max_d
    assert set(CAPABILITIES["reference"].dtypes) == set(FEATURE_DTYPES)
    assert CAPABILITIES["reference"].devices is None and CAPABILITIES["reference"].max_d is None
    pytest.importorskip("triton")
    from ctrlaug.kernels import region_contrast as tri

    assert CAPABILITIES["triton"].max_d == tri.MAX_D
    assert set(CAPABILITIES["triton"].dtypes) == set(tri._DTYPES)


@pytest.fixture
def everything_built(monkeypatch):
    """The resolver's decisions from the table alone: every backend built, for any device."""
    from ctrlaug.ops import _registry

    monkeypatch.setattr(_registry, "available", lambda b, d, op="": True)
    monkeypatch.setattr(_registry, "_warned", set())
    monkeypatch.delenv("CTRLAUG_GPU_BACKEND", raising=False)
    return _registry


def test_auto_picks_a_backend_that_can_run_the_call(everything_built, monkeypatch):
    reg = everything_built
    cuda, cpu, op = torch.device("cuda"), torch.device("cpu"), "region_contrast_fwd"
    assert reg.resolve("auto", cuda, op, torch.bfloat16, 256) == reg.GPU_PREFERENCE[0]
    assert reg.resolve("auto", cuda, "correspondence") == reg.GPU_PREFERENCE[0]
    # float64 on CUDA: neither GPU backend takes it (it used to pick triton, then raise)
    with pytest.warns(RuntimeWarning, match="got float64.*using the pure-PyTorch reference"):
        assert reg.resolve("auto", cuda, op, torch.float64, 128) == "reference"
    # D > 256 on CUDA: it used to pick triton and fail inside the launcher
    with pytest.warns(RuntimeWarning, match=r"D <= 256, got D = 257.*pure-PyTorch reference"):
        assert reg.resolve("auto", cuda, op, torch.float32, 257) == "reference"
    # the CPU backend has neither limit
    assert reg.resolve("auto", cpu, op, torch.float64, 4096) == "cpp"
    # the override is followed when it can run the call, and skipped like the others when not
    for name in ("triton", "cuda"):
        monkeypatch.setenv("CTRLAUG_GPU_BACKEND", name)
        assert reg.resolve("auto", cuda, op, torch.float16, 64) == name
        with pytest.warns(
            RuntimeWarning, match=f"the {name} backend takes feature dim D <= 256, got D = 512"
        ):
            assert reg.resolve("auto", cuda, op, torch.float16, 512) == "reference"


def test_auto_on_cuda_tensors_without_a_gpu_backend(monkeypatch):
    from ctrlaug.ops import _registry

    monkeypatch.setattr(_registry, "available", lambda b, d, op="": b in ("reference", "cpp"))
    monkeypatch.setattr(_registry, "_warned", set())
    monkeypatch.delenv("CTRLAUG_GPU_BACKEND", raising=False)
    with pytest.warns(RuntimeWarning, match="no fused backend.*pure-PyTorch reference"):
        assert (
            _registry.resolve("auto", torch.device("cuda"), "region_contrast_fwd", torch.float32, 64)
            == "reference"
        )


def test_explicit_backend_that_cannot_run_the_call_names_the_capability(everything_built):
    reg = everything_built
    cuda, op = torch.device("cuda"), "region_contrast_fwd"
    for name in ("triton", "cuda"):
        with pytest.raises(
            TypeError, match=rf"{name}' cannot run this call: .*got float64.*can, here: .*reference"
        ):
            reg.resolve(name, cuda, op, torch.float64, 64)
        with pytest.raises(ValueError, match=rf"{name}' cannot run this call: .*D <= 256, got D = 300"):
            reg.resolve(name, cuda, op, torch.bfloat16, 300)
    with pytest.raises(ValueError, match="can, here: reference"):  # cpp runs CPU tensors only
        reg.resolve("triton", cuda, op, torch.bfloat16, 300)
    assert reg.resolve("cuda", cuda, op, torch.bfloat16, 256) == "cuda"
    assert reg.resolve("cpp", torch.device("cpu"), op, torch.float64, 300) == "cpp"


def test_wide_features_run_on_cpu_and_the_triton_limit_is_named():
    """Through the public op, on what is built here: D = 300 runs on auto (cpp), and the Triton
    backend, asked for explicitly, refuses with the capability instead of failing in the launcher."""
    from ctrlaug.ops import _registry

    q, k, t, owner, _ = make_case(2, 3, 4, 2, 300, 0, dtype=torch.float32)
    want = region_contrast_ref(q, k, t, owner)
    if _registry.available("cpp", q.device):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            torch.testing.assert_close(region_contrast(q, k, t, owner), want)
    if _registry.available("triton", q.device):
        with pytest.raises(ValueError, match="triton' cannot run this call: .*D <= 256, got D = 300"):
            region_contrast(q, k, t, owner, backend="triton")
        with pytest.raises(TypeError, match="triton' cannot run this call: .*got float64"):
            region_contrast(q.double(), k.double(), t, owner, backend="triton")


# ------------------------------------------------------------------------------------------
# The cpp backend's instruction-set paths (csrc/cpu/rc_kernels.h): each one the CPU supports is
# forced with CTRLAUG_CPU_ISA and checked like the backend; the others skip with the reason.
# ------------------------------------------------------------------------------------------

CPU_PATHS = ("avx512", "avx2", "blas", "portable", "emu512")


@pytest.fixture(params=CPU_PATHS)
def cpu_path(request, monkeypatch):
    """Force one cpp path for the test (the C++ side reads the variable at every call)."""
    from ctrlaug.ops._registry import CPU_ISA_ENV, cpu_isa

    _skip_unless("cpp", torch.device("cpu"))
    name = request.param
    why = cpu_isa()["paths"][name]
    if why != "ok":
        pytest.skip(f"cpp path {name} cannot run here: {why}")
    monkeypatch.setenv(CPU_ISA_ENV, name)
    assert cpu_isa()["chosen"] == name
    return name


def test_cpu_paths_are_the_ones_the_extension_reports():
    from ctrlaug.ops._registry import cpu_isa

    _skip_unless("cpp", torch.device("cpu"))
    info = cpu_isa()
    assert tuple(info["paths"]) == CPU_PATHS
    assert info["paths"]["portable"] == "ok" and info["float64"] == "portable"
    if platform.machine() in ("x86_64", "AMD64"):  # the SIMD paths are compiled in, whatever the CPU
        for name in ("avx512", "avx2", "emu512"):
            assert "this build has no" not in info["paths"][name], info["paths"][name]


def test_cpu_path_auto_takes_the_path_it_measured_fastest(monkeypatch, tmp_path):
    """Without CTRLAUG_CPU_ISA (or with "auto"): the path that won this process's race over every
    path the CPU runs (tests/test_ops_cpu_path.py tests the race and its cache)."""
    from ctrlaug.ops import _registry

    _skip_unless("cpp", torch.device("cpu"))
    monkeypatch.setenv(_registry.CACHE_DIR_ENV, str(tmp_path))
    monkeypatch.delenv(_registry.CPU_ISA_ENV, raising=False)
    _registry._reset_cpu_choice()
    try:
        info = _registry.cpu_isa()
        timings = info["auto"]["timings_ms"]
        assert set(timings) == {p for p in _registry.CPU_AUTO_PATHS if info["paths"][p] == "ok"}
        assert info["chosen"] == min(timings, key=timings.get) and info["chosen_by"] == "selected"
        monkeypatch.setenv(_registry.CPU_ISA_ENV, "auto")
        assert _registry.cpu_isa()["chosen"] == info["chosen"]
    finally:
        _registry._reset_cpu_choice()


def test_cpu_path_switch_rejects_unknown_and_unsupported_names(monkeypatch):
    from ctrlaug.ops._registry import CPU_ISA_ENV, cpu_isa

    _skip_unless("cpp", torch.device("cpu"))
    q, k, t, owner, _ = make_case(3, 5, 7, 2, 16, 0, dtype=torch.float32)
    monkeypatch.setenv(CPU_ISA_ENV, "sse9")
    with pytest.raises(
        RuntimeError, match="CTRLAUG_CPU_ISA=sse9 is not a CPU path; choose one of auto, avx512"
    ):
        region_contrast(q, k, t, owner, backend="cpp")
    assert cpu_isa()["chosen"].startswith("error: CTRLAUG_CPU_ISA=sse9")
    missing = [p for p, why in cpu_isa()["paths"].items() if why != "ok"]
    if not missing:
        pytest.skip("every cpp path runs here: no unsupported one to reject")
    monkeypatch.setenv(CPU_ISA_ENV, missing[0])
    with pytest.raises(RuntimeError, match=f"CTRLAUG_CPU_ISA={missing[0]} cannot run here: "):
        region_contrast(q, k, t, owner, backend="cpp")


# every fp32 shape, and the uneven-block / key-split shapes (a queue, none)
PATH_SHAPES = SHAPES + [(13, 23, 17, 11, 40, 0), (9, 50, 33, 9, 24, 5)]


@pytest.mark.parametrize("shape", PATH_SHAPES, ids=_ids)
def test_cpu_path_matches_reference_fp32(cpu_path, shape):
    _compare("cpp", shape, torch.float32, zero_rows=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_cpu_path_matches_reference_half(cpu_path, dtype):
    _compare("cpp", SHAPES[2], dtype)


def test_cpu_path_sharp_temperature_and_non_finite_rows(cpu_path):
    """The building blocks at tau = 1e-3 with unnormalised features (logits up to ~1e5, a dominant
    key per row), and a NaN query row: NaN stays in its row, every other row is finite."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(50, 72, generator=g, dtype=torch.float64) * 3
    k = torch.randn(301, 72, generator=g, dtype=torch.float64) * 3
    queue = torch.randn(19, 72, generator=g, dtype=torch.float64) * 3
    tau = 1e-3
    fwd, bwd = op_handle("cpp", "region_contrast_fwd"), op_handle("cpp", "region_contrast_bwd")
    ref_fwd, ref_bwd = (
        op_handle("reference", "region_contrast_fwd"),
        op_handle("reference", "region_contrast_bwd"),
    )
    coef = torch.rand(50, generator=g, dtype=torch.float64)
    lse_t, o_t = ref_fwd(q, k, queue, tau, True)
    dk_t = ref_bwd(q, k, lse_t, coef, tau)
    qf, kf, quf = q.float(), k.float(), queue.float()
    lse_r, o_r = ref_fwd(qf, kf, quf, tau, True)
    dk_r = ref_bwd(qf, kf, lse_r, coef.float(), tau)
    lse_k, o_k = fwd(qf, kf, quf, tau, True)
    dk_k = bwd(qf, kf, lse_k, coef.float(), tau)
    assert float(lse_t.abs().max()) > 1e4, "the case must have large logits"
    for name, a, r, tr in (("lse", lse_k, lse_r, lse_t), ("o", o_k, o_r, o_t), ("dk", dk_k, dk_r, dk_t)):
        assert_rule(f"cpp-{cpu_path}/sharp/{name}", a, r, tr, torch.float32)
    qn = qf.clone()
    qn[7, 3] = float("nan")
    lse_n, o_n = fwd(qn, kf, quf, 0.1, True)
    assert torch.isnan(lse_n[7]) and torch.isnan(o_n[7]).all()
    others = torch.arange(50) != 7
    assert torch.isfinite(lse_n[others]).all() and torch.isfinite(o_n[others]).all()
