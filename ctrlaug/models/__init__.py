"""Encoders and heads: R3D-18/34 (Hara et al.'s blocks, a (1,2,2) max-pool for the paper's grids, per-call temporal stride) and the SSL heads."""

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
from .r3d import (
    INPUT_MEAN,
    INPUT_STD,
    R3D,
    build_encoder,
    normalize_input,
    prepare_input,
    stage_channels,
    to_unit,
)

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
