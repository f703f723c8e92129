"""R3D encoder (per-call temporal stride) and the SSL heads."""

import pytest
import torch
import torch.nn as nn

from ctrlaug.models import (
    R3D,
    GRUMLPOrderHead,
    GRUOrderHead,
    MLPOrderHead,
    ProjectionHead,
    StatisticsNetwork,
    VCOPHead,
    build_encoder,
    build_order_head,
    pool,
    stage_channels,
)
from ctrlaug.utils.dist import DistBatchNorm3d, convert_sync_bn


@pytest.mark.parametrize(
    "stages, grid",
    [((), (2, 4, 4)), ((4,), (4, 4, 4)), ((3, 4), (8, 4, 4)), ((2, 3, 4), (16, 4, 4))],
)
def test_r3d18_grids_at_paper_resolution(stages, grid):
    enc = build_encoder("r3d18", width=1 / 16).eval()
    x = torch.randn(1, 3, 16, 112, 112)
    with torch.no_grad():
        y = enc(x, stages)
    assert y.shape == (1, enc.out_channels, *grid)
    assert enc.output_grid((16, 112, 112), stages) == grid


def test_grid4_preset_gives_4x4_grids():
    """configs/shapes-grid4.yaml: the clip and global feature grids are 4x4 in space (the paper's
    cell count), built from the preset's own view size, frames and strides."""
    import os

    from ctrlaug.config import load_config

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = load_config(os.path.join(root, "configs", "shapes-grid4.yaml"))
    a = cfg.augment
    enc = build_encoder(cfg.model.arch, cfg.model.width, cfg.model.spatial_stride1_stages).eval()
    with torch.no_grad():
        clip = enc(torch.randn(1, 3, a.clip_frames, a.size, a.size))
        glob = enc(torch.randn(1, 3, a.global_frames, a.size, a.size), cfg.model.global_stride1_stages)
    assert clip.shape[3:] == (4, 4) and glob.shape[3:] == (4, 4)
    assert glob.shape[2] > clip.shape[2]  # the global path keeps more time steps (T_v > T_c)
    assert enc.output_grid((a.clip_frames, a.size, a.size)) == tuple(clip.shape[2:])
    assert enc.output_grid((a.global_frames, a.size, a.size), cfg.model.global_stride1_stages) == tuple(
        glob.shape[2:]
    )


def test_spatial_stride1_keeps_time_stride_and_init():
    """Stage 4 built with spatial stride 1: time still halves, space does not; the weights are
    drawn in the same order as Hara's layout (same seed -> same tensors), and a bad stage fails."""
    torch.manual_seed(0)
    ref = build_encoder("r3d18", 1 / 16)
    torch.manual_seed(0)
    enc = build_encoder("r3d18", 1 / 16, (4,))
    for (k, a), (_, b) in zip(ref.state_dict().items(), enc.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randn(1, 3, 8, 64, 64)
    assert tuple(ref(x).shape[2:]) == (1, 2, 2)
    assert tuple(enc(x).shape[2:]) == (1, 4, 4)
    assert enc.stages[3][0].conv1.stride == (2, 1, 1)
    with pytest.raises(ValueError, match="spatial_stride1_stages"):
        build_encoder("r3d18", 1 / 16, (1,))


def test_global_path_shares_weights_and_leaves_module_unchanged():
    enc = build_encoder("r3d18", width=1 / 16)
    n_params = sum(p.numel() for p in enc.parameters())
    x = torch.randn(2, 3, 8, 32, 32)
    yg = enc(x, (3, 4))
    yc = enc(x)  # a clip call after a global call still uses the strided layout
    assert yg.shape[2] == 4 and yc.shape[2] == 1
    assert sum(p.numel() for p in enc.parameters()) == n_params
    # conv1 of stage 4's first block sees gradient from both paths (it is one tensor): each path
    # alone gives it a non-zero gradient, and the joint backward is their sum
    w = enc.stages[3][0].conv1.weight
    (g_glob,) = torch.autograd.grad(yg.sum(), w, retain_graph=True)
    (g_clip,) = torch.autograd.grad(yc.sum(), w, retain_graph=True)
    assert g_glob.abs().max() > 0 and g_clip.abs().max() > 0
    (yg.sum() + yc.sum()).backward()
    torch.testing.assert_close(w.grad, g_glob + g_clip)
    strides = {m.stride for m in enc.modules() if isinstance(m, nn.Conv3d)}
    assert (2, 2, 2) in strides  # the module's own strides were never rewritten


def test_r3d34_blocks_and_width():
    enc = build_encoder("r3d34", width=0.25)
    assert [len(s) for s in enc.stages] == [3, 4, 6, 3]
    assert stage_channels(0.25) == (16, 32, 64, 128)
    assert enc.out_channels == 128
    y = enc(torch.randn(1, 3, 16, 64, 64))
    assert y.shape == (1, 128, 2, 2, 2)
    # Hara stem: 7x7x7 conv with stride (1, 2, 2), maxpool stride (1, 2, 2)
    assert enc.conv1.kernel_size == (7, 7, 7) and enc.conv1.stride == (1, 2, 2)
    assert enc.maxpool.stride == (1, 2, 2)


def test_encoder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="arch must be one of"):
        build_encoder("r3d50")
    with pytest.raises(ValueError, match="depth must be one of"):
        R3D(depth=50)
    with pytest.raises(ValueError, match="stride1_stages"):
        build_encoder("r3d18", 1 / 16)(torch.randn(1, 3, 8, 32, 32), (1,))
    with pytest.raises(ValueError, match="width"):
        stage_channels(0.0)


def test_projection_head_cells_and_pooled_agree_and_are_normalised():
    head = ProjectionHead(16, hidden=32, dim=8)
    fmap = torch.randn(3, 16, 2, 4, 4)
    cells = head(fmap)
    assert cells.shape == (3, 8, 2, 4, 4)
    torch.testing.assert_close(cells.norm(dim=1), torch.ones(3, 2, 4, 4))
    v = pool(fmap)
    torch.testing.assert_close(head(v), head(v[:, :, None, None, None])[:, :, 0, 0, 0])


def test_statistics_network_pairs_matrix_and_detach():
    G = StatisticsNetwork(6, hidden=10)
    x, y = torch.randn(5, 6, requires_grad=True), torch.randn(5, 6)
    s = G(x, y)
    m = G.score_matrix(x, y)
    assert s.shape == (5,) and m.shape == (5, 5)
    torch.testing.assert_close(m.diagonal(), s)
    torch.testing.assert_close(m[1, 3], G(x[1:2], y[3:4])[0])
    G(x, y, detach_params=True).sum().backward()
    assert all(p.grad is None for p in G.parameters())
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", [GRUOrderHead, MLPOrderHead, GRUMLPOrderHead])
def test_order_heads_score_one_scalar_per_sequence_and_see_the_order(cls):
    head = cls(12, hidden=16, num_clips=4)
    seq, g = torch.randn(3, 4, 12), torch.randn(3, 12)
    s = head(seq, g)
    assert s.shape == (3,)
    assert not torch.allclose(s, head(seq.flip(1), g))  # order-sensitive


def test_vcop_head_classifies_all_orders():
    head = build_order_head("vcop", 12, 16, 3, 0.1)
    assert isinstance(head, VCOPHead) and head.perms.shape == (6, 3)
    assert head(torch.randn(2, 3, 12)).shape == (2, 6)
    with pytest.raises(ValueError, match="td.head must be one of"):
        build_order_head("lstm", 12, 16, 3, 0.1)


def test_dist_batchnorm_without_process_group_is_batchnorm():
    torch.manual_seed(1)
    enc = build_encoder("r3d18", 1 / 16)
    ref = build_encoder("r3d18", 1 / 16)
    ref.load_state_dict(enc.state_dict())
    conv = convert_sync_bn(enc, "cpu")
    assert any(isinstance(m, DistBatchNorm3d) for m in conv.modules())
    x = torch.randn(2, 3, 8, 32, 32)
    torch.testing.assert_close(conv(x), ref(x), rtol=0, atol=0)
    torch.testing.assert_close(conv.bn1.running_mean, ref.bn1.running_mean)
