"""kNN and retrieval at Kinetics scale: 100k queries x 100k gallery features, chunked over queries.

pytest bench/bench_eval_scale.py --benchmark-only   (MALLOC_MMAP_THRESHOLD_=65536 for exact memory)

The full query x gallery similarity matrix of this size would be 40 GB of float32; the chunked
functions keep one block of at most 256 MB (``ctrlaug.eval.metrics.CHUNK_ELEMENTS``) plus the features.
Each call is timed once (a 100k x 100k run takes minutes on 2 CPU cores); "peak extra MiB" is the
resident-set high-water mark beyond the inputs. CTRLAUG_BENCH_SMOKE=1: 4k x 4k.
"""

from __future__ import annotations

import pytest
import torch
from common import SMOKE, load_average, peak_extra_bytes, provenance

from ctrlaug.eval.metrics import CHUNK_ELEMENTS, knn_top1, retrieval_recall

N = 4000 if SMOKE else 100_000  # queries = gallery items
C = 64  # feature width (R3D-18 gives 512: 8x the matmul work here, the same similarity memory)
CLASSES = 400


def _features():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(CLASSES, C, generator=g)
    gl = torch.randint(CLASSES, (N,), generator=g)
    ql = torch.randint(CLASSES, (N,), generator=g)
    gallery = centres[gl] + 2.0 * torch.randn(N, C, generator=g)
    query = centres[ql] + 2.0 * torch.randn(N, C, generator=g)
    return query, ql, gallery, gl


@pytest.mark.parametrize("metric", ["knn", "retrieval"])
def test_eval_scale(benchmark, metric):
    q, ql, g, gl = _features()
    if metric == "knn":
        fn = lambda: knn_top1(g, gl, q, ql, k=20, t=0.07, num_classes=CLASSES)  # noqa: E731
    else:
        fn = lambda: retrieval_recall(q, ql, g, gl)  # noqa: E731
    out = {}
    cpu = torch.device("cpu")
    load0 = load_average()
    benchmark.group = f"eval scale {N} x {N} x {C}"
    # one timed call, whose resident-set high-water mark is read at the same time
    benchmark.pedantic(
        lambda: out.update(peak=peak_extra_bytes(lambda: out.update(value=fn()), cpu)),
        rounds=1,
        warmup_rounds=0,
        iterations=1,
    )
    peak = out["peak"]
    benchmark.extra_info.update(provenance(cpu))
    benchmark.extra_info.update(
        {
            "metric": metric,
            "queries": N,
            "gallery": N,
            "dim": C,
            "block_MiB": CHUNK_ELEMENTS * 4 / 2**20,
            "full_matrix_MiB": N * N * 4 / 2**20,
            "peak_extra_MiB": peak / 2**20 if peak >= 0 else None,
            "load_average": [load0, load_average()],
            "result": out["value"] if metric == "knn" else {str(k): v for k, v in out["value"].items()},
        }
    )
    if peak >= 0 and not SMOKE:  # the point of chunking: far below the full matrix
        assert peak < N * N * 4 / 4, peak
