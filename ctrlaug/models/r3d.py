"""R3D-18 / R3D-34 in plain PyTorch (Hara et al.'s blocks and widths), with a per-call temporal
stride.

Layout (after Hara, Kataoka, Satoh 2018, "Can spatiotemporal 3D CNNs retrace the history of 2D
CNNs and ImageNet?"; the backbone of the paper, §4.2), with one deliberate difference:

    conv1   7x7x7, 64,  stride (1, 2, 2)        16x112x112 -> 16x56x56
    maxpool 3x3x3,      stride (1, 2, 2)                   -> 16x28x28
    layer1  BasicBlock x n1, 64,  stride 1                 -> 16x28x28
    layer2  BasicBlock x n2, 128, stride 2                 ->  8x14x14
    layer3  BasicBlock x n3, 256, stride 2                 ->  4x7x7
    layer4  BasicBlock x n4, 512, stride 2                 ->  2x4x4

(n = 2,2,2,2 for R3D-18 and 3,4,6,3 for R3D-34; shortcut type B: 1x1x1 conv + BN when the
shape changes.) Hara et al.'s max-pool strides time as well, which would leave a 16-frame clip
with a 1x4x4 grid. The paper states the grids instead: 2x4x4 for a 16x112x112 clip and 8x4x4 for
the global view (§4.2). A (1, 2, 2) max-pool with layers 2-4 strided in time gives exactly those,
so the stated grids decide the stride (our choice where the two sources disagree).

The global path f' of §3.1 runs *the same weights* with the temporal stride of some of the
strided stages set to 1 for that call only: ``encoder(x, stride1_stages=(3, 4))`` turns the
16-frame global view into an 8x4x4 grid (the paper's T_v = 8), ``(4,)`` gives T_v = 4 and ``()``
gives T_v = 2 (Table 4). The strides are arguments of ``forward``, not module state, so one
module serves both paths, under DDP and torch.compile alike.

``stem="tv"`` (``model.arch=r3d18_tv`` / ``r3d34_tv``; not the paper's) swaps Hara's stem for
torchvision's own R3D stem, a 3x7x7 conv (stride (1, 2, 2), padding (1, 3, 3)) + BN + ReLU and no
max-pool, so the weights load into stock ``torchvision.models.video.r3d_18()`` (and MMAction2's
``ResNet3d`` configured to match, see :mod:`ctrlaug.models.backbone`). Without the max-pool every
spatial grid is twice as large: a 16x112x112 clip gives 2x7x7 instead of 2x4x4 (about 4x the
compute in layers 1-4). The keys (``conv1``, ``bn1``, ``stages...``) are the same for both stems.

``width`` multiplies every channel count (``width=1/8`` gives 8-16-32-64 channels, a model that
trains on a 2-core CPU in minutes).

``spatial_stride1_stages`` (our choice, not the paper's: a knob for small inputs) builds some of the
strided stages with spatial stride 1 while keeping their temporal stride: ``(4,)`` at 64x64 input
gives a 4x4 grid (64 -> 32 -> 16 -> 8 -> 4 -> 4) instead of 2x2, the paper's 4x4 cell count at
about a third of the cost of 128 px views (configs/shapes-grid4.yaml). Unlike the temporal stride
of the global path it is part of the architecture, fixed at construction, the same for f and f'.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "R3D",
    "BLOCKS",
    "ARCHS",
    "STEMS",
    "stage_channels",
    "normalize_input",
    "to_unit",
    "prepare_input",
    "INPUT_MEAN",
    "INPUT_STD",
]

# Per-channel RGB statistics for inputs in [0, 1] (the usual Kinetics values); pretraining and
# every evaluation must normalise the same way, so both call normalize_input.
INPUT_MEAN = (0.45, 0.45, 0.45)
INPUT_STD = (0.225, 0.225, 0.225)


def normalize_input(x: torch.Tensor) -> torch.Tensor:
    """[..., 3, T, H, W] RGB in [0, 1] -> (x - mean) / std, per channel (dim -4)."""
    shape = (3, 1, 1, 1)
    mean = torch.tensor(INPUT_MEAN, device=x.device, dtype=x.dtype).view(shape)
    std = torch.tensor(INPUT_STD, device=x.device, dtype=x.dtype).view(shape)
    return (x - mean) / std


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels [...] -> float32 in [0, 1] (``x / 255``, a new tensor): the input of tau_l."""
    if x.dtype != torch.uint8:
        raise TypeError(f"to_unit: expected uint8 pixels, got {x.dtype}")
    return x.float().div_(255.0)


def prepare_input(x: torch.Tensor) -> torch.Tensor:
    """uint8 RGB clips [..., 3, T, H, W] -> the encoder's normalised float32 input (no tau_l)."""
    return normalize_input(to_unit(x))


BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
STEMS = ("hara", "tv")
# model.arch -> (depth, stem); the Hara stem (the paper's) is the default
ARCHS = {"r3d18": (18, "hara"), "r3d34": (34, "hara"), "r3d18_tv": (18, "tv"), "r3d34_tv": (34, "tv")}
_BASE = (64, 128, 256, 512)
STRIDED_STAGES = (2, 3, 4)  # the stages whose temporal stride is 2 on the clip path


def stage_channels(width: float) -> tuple[int, int, int, int]:
    """Channel count of layer1..layer4 for a width multiplier (at least 1 channel each)."""
    if not width > 0:
        raise ValueError(f"width multiplier must be > 0, got {width!r}")
    return tuple(max(1, round(c * width)) for c in _BASE)  # type: ignore[return-value]


class _Conv3d(nn.Conv3d):
    """Conv3d whose temporal stride can be overridden per call (same weights, no state change)."""

    def forward(self, x: torch.Tensor, t_stride: int | None = None) -> torch.Tensor:  # type: ignore[override]
        stride = self.stride if t_stride is None else (t_stride, self.stride[1], self.stride[2])
        return F.conv3d(x, self.weight, self.bias, stride, self.padding, self.dilation, self.groups)


class BasicBlock(nn.Module):
    """3x3x3 conv-BN-ReLU, 3x3x3 conv-BN, identity or 1x1x1 projection shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int | tuple[int, int, int], norm: type[nn.Module]):
        super().__init__()
        stride = (stride,) * 3 if isinstance(stride, int) else tuple(stride)
        self.conv1 = _Conv3d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = _Conv3d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = norm(cout)
        self.down_conv = self.down_bn = None
        if stride != (1, 1, 1) or cin != cout:
            self.down_conv = _Conv3d(cin, cout, 1, stride=stride, bias=False)
            self.down_bn = norm(cout)

    def forward(self, x: torch.Tensor, t_stride: int | None = None) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x, t_stride)), inplace=True)
        out = self.bn2(self.conv2(out))
        sc = x if self.down_conv is None else self.down_bn(self.down_conv(x, t_stride))
        return F.relu(out + sc, inplace=True)


class R3D(nn.Module):
    """Hara-style 3D ResNet with BasicBlocks; returns the last feature map [N, C, T', H', W'].

    Args:
        depth: 18 or 34.
        width: channel multiplier (1.0 = 64-128-256-512).
        in_channels: input channels (3 for RGB).
        norm: normalisation layer class (``nn.BatchNorm3d``; the trainer swaps in a synchronised
            one for DDP with ``sync_bn``).
        spatial_stride1_stages: stages among (2, 3, 4) built with spatial stride 1 (temporal stride
            kept); empty = Hara's layout.
        stem: ``"hara"`` (7x7x7 conv + 3x3x3 max-pool, the paper's) or ``"tv"`` (torchvision's R3D
            stem: 3x7x7 conv, no max-pool).
    """

    def __init__(
        self,
        depth: int = 18,
        width: float = 1.0,
        in_channels: int = 3,
        norm: type[nn.Module] = nn.BatchNorm3d,
        spatial_stride1_stages: Sequence[int] = (),
        stem: str = "hara",
    ):
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"R3D stem must be one of {STEMS}, got {stem!r}")
        if depth not in BLOCKS:
            raise ValueError(f"R3D depth must be one of {sorted(BLOCKS)}, got {depth!r}")
        bad = [s for s in spatial_stride1_stages if s not in STRIDED_STAGES]
        if bad:
            raise ValueError(
                f"spatial_stride1_stages must be among {STRIDED_STAGES}, got {tuple(spatial_stride1_stages)}"
            )
        self.depth, self.width, self.stem = depth, width, stem
        self.spatial_stride1_stages = tuple(sorted(set(spatial_stride1_stages)))
        chans = stage_channels(width)
        self.out_channels = chans[-1]
        if stem == "hara":  # unchanged construction order: the default encoder's init stays bitwise
            self.conv1 = nn.Conv3d(in_channels, chans[0], 7, stride=(1, 2, 2), padding=3, bias=False)
            self.bn1 = norm(chans[0])
            self.maxpool = nn.MaxPool3d(3, stride=(1, 2, 2), padding=1)
        else:
            self.conv1 = nn.Conv3d(
                in_channels, chans[0], (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False
            )
            self.bn1 = norm(chans[0])
            self.maxpool = nn.Identity()
        self.stages = nn.ModuleList()
        cin = chans[0]
        for i, (n, cout) in enumerate(zip(BLOCKS[depth], chans)):
            stride = (1, 1, 1) if i == 0 else (2, 2, 2)
            if i + 1 in self.spatial_stride1_stages:
                stride = (2, 1, 1)
            blocks = [BasicBlock(cin, cout, stride, norm)] + [
                BasicBlock(cout, cout, 1, norm) for _ in range(n - 1)
            ]
            self.stages.append(nn.ModuleList(blocks))
            cin = cout
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, stride1_stages: Sequence[int] = ()) -> torch.Tensor:
        """x [N, C, T, H, W] -> feature map [N, C', T', H', W'].

        ``stride1_stages``: stage numbers among (2, 3, 4) whose temporal stride is 1 for this call
        (the global path f' of §3.1); empty for the clip path f.
        """
        bad = [s for s in stride1_stages if s not in STRIDED_STAGES]
        if bad:
            raise ValueError(f"stride1_stages must be among {STRIDED_STAGES}, got {tuple(stride1_stages)}")
        x = self.maxpool(F.relu(self.bn1(self.conv1(x)), inplace=True))
        for i, blocks in enumerate(self.stages, start=1):
            for j, blk in enumerate(blocks):
                t_stride = 1 if (j == 0 and i in stride1_stages) else None
                x = blk(x, t_stride)
        return x

    def output_grid(self, in_thw: Sequence[int], stride1_stages: Sequence[int] = ()) -> tuple[int, int, int]:
        """Feature grid (T', H', W') for an input of (T, H, W), without running the network."""
        t, h, w = (int(v) for v in in_thw)

        def down(n: int, k: int, s: int, p: int) -> int:
            return (n + 2 * p - k) // s + 1

        h, w = down(h, 7, 2, 3), down(w, 7, 2, 3)  # conv1
        if self.stem == "hara":
            h, w = down(h, 3, 2, 1), down(w, 3, 2, 1)  # maxpool
        for i in STRIDED_STAGES:
            if i not in self.spatial_stride1_stages:
                h, w = down(h, 3, 2, 1), down(w, 3, 2, 1)
            if i not in stride1_stages:
                t = down(t, 3, 2, 1)
        return t, h, w


def build_encoder(arch: str = "r3d18", width: float = 1.0, spatial_stride1_stages: Sequence[int] = ()) -> R3D:
    """``arch`` in :data:`ARCHS` (``r3d18``/``r3d34``: Hara's stem; ``r3d18_tv``/``r3d34_tv``:
    torchvision's stem); ``width`` multiplies every channel count; ``spatial_stride1_stages``:
    stages among (2, 3, 4) with spatial stride 1 (see ``R3D``)."""
    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    depth, stem = ARCHS[arch]
    return R3D(depth, width, spatial_stride1_stages=spatial_stride1_stages, stem=stem)
