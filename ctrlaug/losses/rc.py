"""L_rc, paper eq. 3-4: soft-target spatio-temporal region contrast, its config and the memory
queue of past global-view cells it draws extra negatives from.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ctrlaug.losses.base import OUR_CHOICE, StepContext, loss_config
from ctrlaug.ops import correspondence, region_contrast
from ctrlaug.utils import dist as dist_utils
from ctrlaug.utils.cfgtools import opt

__all__ = ["RCConfig", "cells", "FeatureQueue", "RegionContrastLoss"]


@loss_config("L_rc", enabled=True, weight=1.0)
class RCConfig:
    """L_rc, spatio-temporal region contrast (eq. 3-4)."""

    tau: float = opt(
        0.2,
        f"temperature of L_rc ({OUR_CHOICE}: 0.2 chosen on the shapes val split, docs/benchmark.md; "
        "configs/ucf101.yaml and k400.yaml keep 0.07)",
        min=1e-6,
    )
    queue_size: int = opt(
        0, "memory queue of past global cells used as extra L_rc negatives (0 = off)", min=0
    )
    backend: str = opt(
        "auto", "backend of the fused ops", choices=("auto", "reference", "cpp", "triton", "cuda")
    )


def cells(feat: torch.Tensor) -> torch.Tensor:
    """[N, D, T, H, W] -> [N*T*H*W, D]: cells t-major, then h, then w (the ops' order)."""
    return feat.flatten(2).transpose(1, 2).reshape(-1, feat.shape[1])


class FeatureQueue(nn.Module):
    """FIFO memory of past global-view cells (extra L_rc negatives). ``size`` 0 = off."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.size = int(size)
        self.register_buffer("feats", torch.zeros(self.size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.int64))
        self.register_buffer("filled", torch.zeros((), dtype=torch.int64))

    def get(self) -> torch.Tensor | None:
        n = int(self.filled)
        return None if n == 0 else self.feats[:n]

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        if self.size == 0:
            return
        keys = keys.detach().to(self.feats.dtype)[-self.size :]
        n, p = keys.shape[0], int(self.ptr)
        first = min(n, self.size - p)
        self.feats[p : p + first] = keys[:first]
        if n > first:
            self.feats[: n - first] = keys[first:]
        self.ptr.fill_((p + n) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))


class RegionContrastLoss(nn.Module):
    """L_rc, paper eq. 3-4: soft-target spatio-temporal region contrast.

    Queries are all clip cells f(v_k)[i] of this rank; keys are all global cells f'(v)[j] of
    every video of the global batch (all-gathered, gradients reach every rank's own keys), then
    the queue. Clip p's target S_p = ``correspondence(clip box, its video's box)`` (eq. 1) sits
    on its owner video's key block; all other keys are negatives (the n of eq. 4).
    """

    stats: tuple[str, ...] = ()

    def __init__(self, cfg: RCConfig | None = None):
        super().__init__()
        cfg = cfg or RCConfig()
        self.tau, self.backend, self.weight = cfg.tau, cfg.backend, cfg.weight

    def term(self, ctx: StepContext) -> dict:
        """L_rc of one step: clip cells query the global cells of the batch (and the queue)."""
        B, K = ctx.B, ctx.K
        loss, keys = self(
            ctx.proj(ctx.fc),
            ctx.proj(ctx.fg),
            ctx.clip_boxes.reshape(B * K, 7),
            ctx.global_boxes,
            ctx.owner,
            ctx.queue,
        )
        return {"loss": loss, "stats": {}, "keys": keys}

    def forward(
        self,
        clip_cells: torch.Tensor,
        global_cells: torch.Tensor,
        clip_boxes: torch.Tensor,
        global_boxes: torch.Tensor,
        owner: torch.Tensor,
        queue: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """clip_cells [P, D, Tc, H, W] (L2-normalised), global_cells [B, D, Tv, Hv, Wv],
        clip_boxes [P, 7], global_boxes [B, 7], owner [P] (local video index of clip p).

        Returns (loss, gathered keys [world*B*Nv, D] detached, for the queue).
        """
        cg, vg = tuple(clip_cells.shape[2:]), tuple(global_cells.shape[2:])
        # Under autocast the fused op takes the autocast dtype (bf16/fp16 tensor-core path,
        # float32 accumulation inside the kernel); otherwise float32.
        dev = clip_cells.device.type
        dt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else torch.float32
        q = cells(clip_cells).to(dt)
        k = dist_utils.gather_with_grad(cells(global_cells).to(dt))
        offset = dist_utils.rank() * global_cells.shape[0]
        S = correspondence(clip_boxes.float(), global_boxes.float()[owner], cg, vg, backend=self.backend)
        loss = region_contrast(
            q, k, S, (owner + offset).to(torch.int64), tau=self.tau, queue=queue, backend=self.backend
        )
        return loss, k.detach()
