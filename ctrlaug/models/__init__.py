"""Encoders and heads: R3D-18/34 (Hara et al.'s blocks, a (1,2,2) max-pool for the paper's grids, per-call temporal stride) and the SSL heads."""

from collections.abc import Sequence

from .backbone import (
    build_torchvision_r3d18,
    load_backbone,
    read_backbone,
    save_backbone,
    torchvision_state_dict,
)
from .heads import (
    ORDER_HEADS,
    GRUMLPOrderHead,
    GRUOrderHead,
    MLPOrderHead,
    ProjectionHead,
    StatisticsNetwork,
    VCOPHead,
    build_order_head,
    pool,
)
from .r3d import INPUT_MEAN, INPUT_STD, R3D, normalize_input, prepare_input, stage_channels, to_unit

__all__ = [
    "INPUT_MEAN",
    "INPUT_STD",
    "ORDER_HEADS",
    "GRUMLPOrderHead",
    "GRUOrderHead",
    "MLPOrderHead",
    "ProjectionHead",
    "R3D",
    "StatisticsNetwork",
    "VCOPHead",
    "build_encoder",
    "build_torchvision_r3d18",
    "load_backbone",
    "read_backbone",
    "save_backbone",
    "torchvision_state_dict",
    "build_order_head",
    "normalize_input",
    "pool",
    "prepare_input",
    "stage_channels",
    "to_unit",
]


def build_encoder(arch: str = "r3d18", width: float = 1.0, spatial_stride1_stages: Sequence[int] = ()) -> R3D:
    """``arch`` in {"r3d18", "r3d34"}; ``width`` multiplies every channel count;
    ``spatial_stride1_stages``: stages among (2, 3, 4) with spatial stride 1 (see ``R3D``)."""
    depths = {"r3d18": 18, "r3d34": 34}
    if arch not in depths:
        raise ValueError(f"arch must be one of {sorted(depths)}, got {arch!r}")
    return R3D(depths[arch], width, spatial_stride1_stages=spatial_stride1_stages)
