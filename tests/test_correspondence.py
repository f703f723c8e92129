"""ctrlaug.ops.correspondence: properties of the spec and every backend against it."""

from __future__ import annotations

import pytest
import torch
from tolerance import assert_rule, device_for, skip_unless

from ctrlaug.ops import correspondence, correspondence_ref

FUSED = ("cpp", "triton", "cuda")


def _skip_unless(backend: str, device: torch.device, dtype: torch.dtype = torch.float32):
    skip_unless(backend, device, "correspondence", dtype)


def nested_boxes(P: int, g: torch.Generator, flip_p: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Random video boxes and clip boxes nested inside them (what the sampler produces)."""
    v = torch.empty(P, 7, dtype=torch.float64)
    c = torch.empty(P, 7, dtype=torch.float64)
    for lo, hi in ((0, 1), (2, 3), (4, 5)):
        a = torch.rand(P, generator=g, dtype=torch.float64) * 0.2
        b = 1 - torch.rand(P, generator=g, dtype=torch.float64) * 0.2
        v[:, lo], v[:, hi] = a, b
        u = torch.rand(P, 2, generator=g, dtype=torch.float64).sort(1).values
        c[:, lo] = a + (b - a) * u[:, 0]
        c[:, hi] = a + (b - a) * torch.maximum(u[:, 1], u[:, 0] + 1e-3).clamp(max=1)
    v[:, 6] = (torch.rand(P, generator=g) < flip_p).double()
    c[:, 6] = (torch.rand(P, generator=g) < flip_p).double()
    return c, v


def messy_boxes(P: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Nested, partially overlapping, disjoint (zero-overlap rows) and degenerate boxes mixed."""
    c, v = nested_boxes(P, g)
    k = P // 4
    c[:k, 4], c[:k, 5] = 0.0, 0.6  # partly outside the video box in x
    v[:k, 4], v[:k, 5] = 0.3, 1.0
    if P > 2 * k:
        c[k : 2 * k, 0], c[k : 2 * k, 1] = 0.0, 0.1  # disjoint in time: all-zero rows
        v[k : 2 * k, 0], v[k : 2 * k, 1] = 0.5, 1.0
    if P > 2 * k + 1:
        c[2 * k, 2] = c[2 * k, 3]  # degenerate clip box: zero volume -> zero rows
    return c, v


# ------------------------------------------------------------------------------------------
# The spec (reference) itself
# ------------------------------------------------------------------------------------------


def test_hand_computed_cases():
    full = [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    vid = torch.tensor([full + [0.0]])
    # clip covering the first half in time, one cell vs two video time cells
    c = torch.tensor([[0.0, 0.5, 0.0, 1.0, 0.0, 1.0, 0.0]])
    assert correspondence_ref(c, vid, (1, 1, 1), (2, 1, 1)).tolist() == [[[1.0, 0.0]]]
    c = torch.tensor([[0.25, 0.75, 0.0, 1.0, 0.0, 1.0, 0.0]])
    assert correspondence_ref(c, vid, (1, 1, 1), (2, 1, 1)).tolist() == [[[0.5, 0.5]]]
    # a mirrored clip: its left column shows the right half of the source
    c = torch.tensor([full + [1.0]])
    assert correspondence_ref(c, vid, (1, 1, 2), (1, 1, 2)).tolist() == [[[0.0, 1.0], [1.0, 0.0]]]
    # a clip cell [0.2,0.6]^3 against a video cell grid 1x2x1 in y: overlaps 0.3 and 0.1 of 0.4
    c = torch.tensor([[0.2, 0.6, 0.2, 0.6, 0.2, 0.6, 0.0]])
    s = correspondence_ref(c, vid, (1, 1, 1), (1, 2, 1))
    torch.testing.assert_close(s, torch.tensor([[[0.75, 0.25]]]))
    # disjoint: zero row; degenerate clip: zero row, not NaN
    c = torch.tensor([[0.0, 0.1, 0, 1, 0, 1, 0], [0.3, 0.3, 0, 1, 0, 1, 0]])
    v2 = torch.tensor([[0.5, 1.0, 0, 1, 0, 1, 0], full + [0.0]])
    s = correspondence_ref(c, v2, (1, 2, 2), (2, 2, 2))
    assert torch.equal(s, torch.zeros_like(s))


def test_rows_sum_to_one_when_nested():
    g = torch.Generator().manual_seed(1)
    c, v = nested_boxes(64, g)
    s = correspondence_ref(c, v, (2, 4, 4), (8, 4, 4))
    torch.testing.assert_close(s.sum(-1), torch.ones(64, 32), atol=1e-6, rtol=0)
    assert (s >= 0).all()


def _overlap_1d(c_lo, c_hi, n_c, v_lo, v_hi, n_v, c_flip=False, v_flip=False):
    """[n_c, n_v] fraction of each clip segment covered by each video segment, plain loops."""
    out = torch.zeros(n_c, n_v, dtype=torch.float64)
    for i in range(n_c):
        ii = n_c - 1 - i if c_flip else i
        a0 = c_lo + (c_hi - c_lo) * ii / n_c
        a1 = c_lo + (c_hi - c_lo) * (ii + 1) / n_c
        for j in range(n_v):
            jj = n_v - 1 - j if v_flip else j
            b0 = v_lo + (v_hi - v_lo) * jj / n_v
            b1 = v_lo + (v_hi - v_lo) * (jj + 1) / n_v
            out[i, j] = max(min(a1, b1) - max(a0, b0), 0.0) / (a1 - a0)
    return out


def test_factorises_into_1d_overlaps():
    g = torch.Generator().manual_seed(2)
    c, v = nested_boxes(6, g)
    cg, vg = (3, 2, 5), (4, 3, 2)
    s = correspondence_ref(c, v, cg, vg).double()
    for p in range(6):
        cb, vb = c[p].tolist(), v[p].tolist()
        ot = _overlap_1d(cb[0], cb[1], cg[0], vb[0], vb[1], vg[0])
        oy = _overlap_1d(cb[2], cb[3], cg[1], vb[2], vb[3], vg[1])
        ox = _overlap_1d(cb[4], cb[5], cg[2], vb[4], vb[5], vg[2], cb[6] > 0.5, vb[6] > 0.5)
        outer = torch.einsum("ad,be,cf->abcdef", ot, oy, ox).reshape(s.shape[1], s.shape[2])
        torch.testing.assert_close(s[p], outer, atol=1e-6, rtol=0)


def test_joint_flip_gives_same_s():
    """Mirroring the source frame (x -> 1-x) and toggling both flips leaves S unchanged."""
    g = torch.Generator().manual_seed(3)
    c, v = nested_boxes(16, g)

    def mirror(b):
        m = b.clone()
        m[:, 4], m[:, 5], m[:, 6] = 1 - b[:, 5], 1 - b[:, 4], 1 - b[:, 6]
        return m

    s1 = correspondence_ref(c, v, (2, 4, 4), (8, 4, 4))
    s2 = correspondence_ref(mirror(c), mirror(v), (2, 4, 4), (8, 4, 4))
    torch.testing.assert_close(s1, s2, atol=1e-6, rtol=0)
    # toggling both flips without mirroring reverses the w axis on both sides
    cf, vf = c.clone(), v.clone()
    cf[:, 6], vf[:, 6] = 1 - c[:, 6], 1 - v[:, 6]
    s3 = correspondence_ref(cf, vf, (2, 4, 4), (8, 4, 4)).view(16, 2, 4, 4, 8, 4, 4)
    torch.testing.assert_close(s3.flip(3).flip(6).reshape(16, 32, 128), s1, atol=1e-6, rtol=0)


def test_public_op_validates():
    b = torch.zeros(3, 7)
    with pytest.raises(ValueError, match=r"clip_boxes must be a \[P, 7\]"):
        correspondence(torch.zeros(3, 6), b, (2, 4, 4), (8, 4, 4))
    with pytest.raises(ValueError, match="one row per clip"):
        correspondence(b, torch.zeros(2, 7), (2, 4, 4), (8, 4, 4))
    with pytest.raises(ValueError, match="clip_grid must be three positive ints"):
        correspondence(b, b, (2, 4), (8, 4, 4))
    with pytest.raises(ValueError, match="unknown backend"):
        correspondence(b, b, (2, 4, 4), (8, 4, 4), backend="nope")


@pytest.mark.parametrize("backend", ("auto", "reference") + FUSED)
@pytest.mark.parametrize("grids", [((0, 4, 4), (8, 4, 4)), ((2, 4, 4), (8, 0, 4)), ((2, -1, 4), (8, 4, 4))])
def test_zero_or_negative_grid_rejected_by_every_backend(backend, grids):
    """The op validates before it resolves: a zero grid is a ValueError whatever the backend
    (the CUDA binding used to accept zeros where the CPU one refused them)."""
    b = torch.zeros(3, 7)
    with pytest.raises(ValueError, match="must be three positive ints"):
        correspondence(b, b, *grids, backend=backend)


@pytest.mark.parametrize("backend", FUSED)
def test_backend_asserts_positive_grids(backend):
    """Behind the op, each registered kernel still refuses a zero grid (an assert, not a result)."""
    dev = device_for(backend)
    _skip_unless(backend, dev)
    from ctrlaug.ops._registry import op_handle

    b = nested_boxes(3, torch.Generator().manual_seed(0))[0].float().to(dev)
    with pytest.raises((RuntimeError, AssertionError), match="positive"):
        op_handle(backend, "correspondence")(b, b, [2, 0, 4], [8, 4, 4])


@pytest.mark.parametrize("backend", ("auto", "reference") + FUSED)
def test_box_dtype_is_a_type_error_on_every_backend(backend):
    with pytest.raises(TypeError, match="clip_boxes must be a floating tensor"):
        correspondence(
            torch.zeros(3, 7, dtype=torch.int64), torch.zeros(3, 7), (2, 4, 4), (8, 4, 4), backend=backend
        )


# ------------------------------------------------------------------------------------------
# Every fused backend against the spec (values; there are no gradients: boxes are data)
# ------------------------------------------------------------------------------------------

GRIDS = [((2, 4, 4), (8, 4, 4)), ((3, 5, 7), (5, 3, 2)), ((1, 1, 1), (2, 1, 1)), ((2, 7, 7), (4, 7, 7))]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("P", [1, 13, 64])
@pytest.mark.parametrize("grids", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_backend_matches_reference(backend, P, grids):
    dev = device_for(backend)
    _skip_unless(backend, dev)
    g = torch.Generator().manual_seed(P)
    c, v = messy_boxes(P, g)
    truth = correspondence_ref(c, v, *grids)  # float64 inputs; computed in float64
    c32, v32 = c.float(), v.float()
    ref = correspondence_ref(c32, v32, *grids)  # the reference on float32 boxes
    out = correspondence(c32.to(dev), v32.to(dev), *grids, backend=backend)
    assert out.dtype == torch.float32 and out.shape == truth.shape
    assert_rule(f"correspondence[{backend}]", out, ref, truth, torch.float32)


@pytest.mark.parametrize("backend", FUSED)
def test_backend_opcheck(backend):
    dev = device_for(backend)
    _skip_unless(backend, dev)
    from ctrlaug.ops._registry import op_handle

    c, v = nested_boxes(5, torch.Generator().manual_seed(0))
    torch.library.opcheck(
        op_handle(backend, "correspondence"), (c.float().to(dev), v.float().to(dev), [2, 4, 4], [8, 4, 4])
    )
