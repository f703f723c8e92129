"""Heads on top of the R3D feature map: per-cell projection, MI statistics network, order heads.

- :class:`ProjectionHead`: the per-cell projection (1x1x1 convs; the paper specifies no head, so
  its widths are our choice: 512-512-128 in configs/ucf101.yaml, 64-128-64 in the demo), output
  L2-normalised along channels; it maps a [N, C, T, H, W] map to [N, D, T, H, W] (the cells that
  L_rc contrasts) and a pooled [N, C] vector to [N, D] (what L_nce contrasts).
- :class:`StatisticsNetwork`: G_theta of eq. 5-6, a two-layer MLP on a pair of pooled view
  features. Its first layer is split into an x part and a y part, so scoring every (x_a, y_b)
  pair costs two small matmuls plus a broadcast add; ``detach_params=True`` evaluates it with
  detached parameters (the local-global term of §3.2 must not update theta).
- Order heads G_psi of eq. 7 (Table 6): :class:`GRUOrderHead` (default), :class:`MLPOrderHead`,
  :class:`GRUMLPOrderHead` score a (clip sequence, global feature) pair; :class:`VCOPHead`
  (Xu et al. 2019) classifies the permutation of the clips without the global feature.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ProjectionHead",
    "StatisticsNetwork",
    "GRUOrderHead",
    "MLPOrderHead",
    "GRUMLPOrderHead",
    "VCOPHead",
    "ORDER_HEADS",
    "build_order_head",
    "pool",
]


def pool(feat: torch.Tensor) -> torch.Tensor:
    """Global average pool of a [N, C, T, H, W] map -> [N, C]."""
    return feat.mean(dim=(2, 3, 4))


class ProjectionHead(nn.Module):
    """Per-cell projection C -> hidden -> dim (1x1x1 convs, ReLU between), L2-normalised.

    ``forward`` accepts a [N, C, T, H, W] map (returns [N, dim, T, H, W]) or pooled [N, C]
    vectors (returns [N, dim]); both use the same weights, a 1x1x1 conv being a linear map.
    """

    def __init__(self, in_dim: int, hidden: int = 512, dim: int = 128):
        super().__init__()
        self.fc1 = nn.Conv3d(in_dim, hidden, 1)
        self.fc2 = nn.Conv3d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            h = F.relu(F.linear(x, self.fc1.weight.flatten(1), self.fc1.bias))
            return F.normalize(F.linear(h, self.fc2.weight.flatten(1), self.fc2.bias), dim=1)
        return F.normalize(self.fc2(F.relu(self.fc1(x))), dim=1)


class StatisticsNetwork(nn.Module):
    """G_theta(x, y) = w2 . relu(Wx x + Wy y + b1) + b2: the two-layer MLP of eq. 5-6."""

    def __init__(self, in_dim: int, hidden: int = 512):
        super().__init__()
        self.wx = nn.Linear(in_dim, hidden)
        self.wy = nn.Linear(in_dim, hidden, bias=False)
        self.out = nn.Linear(hidden, 1)

    def _params(self, detach: bool):
        ps = (self.wx.weight, self.wx.bias, self.wy.weight, self.out.weight, self.out.bias)
        return tuple(p.detach() for p in ps) if detach else ps

    def forward(self, x: torch.Tensor, y: torch.Tensor, *, detach_params: bool = False) -> torch.Tensor:
        """Scores of aligned pairs: x, y [N, C] -> [N]."""
        wx, bx, wy, wo, bo = self._params(detach_params)
        h = F.relu(F.linear(x, wx, bx) + F.linear(y, wy))
        return F.linear(h, wo, bo).squeeze(-1)

    def score_matrix(self, x: torch.Tensor, y: torch.Tensor, *, detach_params: bool = False) -> torch.Tensor:
        """Scores of every pair: x [N, C], y [M, C] -> [N, M] (memory N*M*hidden)."""
        wx, bx, wy, wo, bo = self._params(detach_params)
        h = F.relu(F.linear(x, wx, bx)[:, None, :] + F.linear(y, wy)[None, :, :])
        return F.linear(h, wo, bo).squeeze(-1)


class GRUOrderHead(nn.Module):
    """Table 6 "GRU": a GRU reads the clip sequence; score = cos(GRU output, W g) / tau."""

    def __init__(self, in_dim: int, hidden: int = 256, num_clips: int = 4, tau: float = 0.1):
        super().__init__()
        self.gru = nn.GRU(in_dim, hidden, batch_first=True)
        self.proj_g = nn.Linear(in_dim, hidden)
        self.tau = tau

    def forward(self, seq: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """seq [N, K, C] clip features in the given order, g [N, C] global feature -> [N] scores."""
        _, h = self.gru(seq)
        return F.cosine_similarity(h[-1], self.proj_g(g), dim=-1) / self.tau


class MLPOrderHead(nn.Module):
    """Table 6 "MLP": concatenate g and the ordered clip features, a two-layer MLP gives a scalar."""

    def __init__(self, in_dim: int, hidden: int = 256, num_clips: int = 4, tau: float = 0.1):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim * (num_clips + 1), hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, seq: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([g, seq.flatten(1)], dim=1)).squeeze(-1)


class GRUMLPOrderHead(nn.Module):
    """Table 6 "GRU+MLP": GRU over the clips, concatenate its output with g, MLP to a scalar."""

    def __init__(self, in_dim: int, hidden: int = 256, num_clips: int = 4, tau: float = 0.1):
        super().__init__()
        self.gru = nn.GRU(in_dim, hidden, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(hidden + in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, seq: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        _, h = self.gru(seq)
        return self.mlp(torch.cat([h[-1], g], dim=1)).squeeze(-1)


class VCOPHead(nn.Module):
    """Table 6 "VCOP" (Xu et al. 2019): pairwise clip relations -> K! permutation logits.

    No global feature: the classic clip-order prediction baseline the paper compares against.
    ``perms`` lists the K! orders; class c means the clips were presented in order ``perms[c]``.
    """

    def __init__(self, in_dim: int, hidden: int = 256, num_clips: int = 4, tau: float = 0.1):
        super().__init__()
        if num_clips > 6:
            raise ValueError(f"VCOP enumerates K! orders; num_clips={num_clips} gives too many classes")
        self.register_buffer(
            "perms", torch.tensor(list(itertools.permutations(range(num_clips)))), persistent=False
        )
        self.pair = nn.Sequential(nn.Linear(2 * in_dim, hidden), nn.ReLU())
        npairs = num_clips * (num_clips - 1) // 2
        self.cls = nn.Linear(hidden * npairs, self.perms.shape[0])
        self.pairs = list(itertools.combinations(range(num_clips), 2))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """seq [N, K, C] -> logits [N, K!]."""
        rel = [self.pair(torch.cat([seq[:, i], seq[:, j]], dim=1)) for i, j in self.pairs]
        return self.cls(torch.cat(rel, dim=1))


ORDER_HEADS = {"gru": GRUOrderHead, "mlp": MLPOrderHead, "gru_mlp": GRUMLPOrderHead, "vcop": VCOPHead}


def build_order_head(kind: str, in_dim: int, hidden: int, num_clips: int, tau: float) -> nn.Module:
    if kind not in ORDER_HEADS:
        raise ValueError(f"td.head must be one of {sorted(ORDER_HEADS)}, got {kind!r}")
    return ORDER_HEADS[kind](in_dim, hidden=hidden, num_clips=num_clips, tau=tau)
