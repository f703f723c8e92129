"""Correspondence throughput for a whole batch: B=128 videos x 4 clips, 2x4x4 vs 8x4x4 grids.

pytest bench/bench_correspondence.py --benchmark-only
"""

from __future__ import annotations

import pytest
import torch
from common import CUDA, SMOKE, peak_extra_bytes, provenance, sync

from ctrlaug.ops import available, correspondence, correspondence_ref

P = 128 if SMOKE else 512  # 128 videos x 4 clips
GRIDS = ((2, 4, 4), (8, 4, 4))
PROVIDERS = ["eager", "compile"] + (["triton", "cuda"] if CUDA else ["cpp"])


def _boxes(device):
    g = torch.Generator().manual_seed(0)
    v = torch.tensor([[0.0, 1.0, 0.05, 0.95, 0.02, 0.98, 0.0]]).repeat(P, 1)
    c = v.clone()
    c[:, 0] = torch.rand(P, generator=g) * 0.7
    c[:, 1] = c[:, 0] + 0.25
    c[:, 2], c[:, 3] = 0.1, 0.7
    c[:, 4], c[:, 5] = 0.2, 0.9
    c[:, 6] = (torch.rand(P, generator=g) < 0.5).float()
    v[:, 6] = (torch.rand(P, generator=g) < 0.5).float()
    return c.to(device), v.to(device)


_compiled = None


@pytest.mark.parametrize("provider", PROVIDERS)
def test_correspondence_batch(benchmark, provider):
    global _compiled
    device = torch.device("cuda" if CUDA else "cpu")
    if provider in ("cpp", "triton", "cuda") and not available(provider, device, "correspondence"):
        pytest.skip(f"{provider} backend not available on {device.type}")
    c, v = _boxes(device)
    if provider == "eager":
        fn = lambda: correspondence_ref(c, v, *GRIDS)  # noqa: E731
    elif provider == "compile":
        if _compiled is None:
            _compiled = torch.compile(correspondence_ref, dynamic=False)
        fn = lambda: _compiled(c, v, *GRIDS)  # noqa: E731
    else:
        fn = lambda: correspondence(c, v, *GRIDS, backend=provider)  # noqa: E731

    def timed():
        fn()
        sync(device)

    benchmark.group = f"correspondence P={P} {GRIDS[0]}x{GRIDS[1]}"
    benchmark.pedantic(timed, rounds=20, warmup_rounds=2, iterations=1)
    benchmark.extra_info.update(provenance(device))
    benchmark.extra_info.update(
        {
            "provider": provider,
            "P": P,
            "median_ms": benchmark.stats.stats.median * 1e3,
            "peak_extra_mib": peak_extra_bytes(fn, device) / 2**20,
        }
    )
