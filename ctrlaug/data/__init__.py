"""Video data pipeline: decoding (PyAV, frame folders), dataset adapters (UCF-101, HMDB-51,
Kinetics-400, Diving-48, class-per-folder, CSV), the synthetic motion set, the factorised shapes benchmark and the view collate.

Importing this package needs torch and numpy only; PyAV is imported when a video file is opened
and Pillow when a frame folder is read.
"""

from . import decode
from .collate import collate_views
from .dataset import (
    BadVideoLog,
    DataConfig,
    SyntheticMotion,
    SyntheticShapes,
    VideoDataset,
    build_dataset,
    build_train_dataset,
)
from .decode import BadVideoError, VideoInfo, open_video, probe_video, read_frames, write_video
from .formats import REGISTRY as FORMAT_REGISTRY
from .formats import DatasetFormat, canonical_format, get_format
from .records import FORMATS, DatasetFormatError, RecordList, VideoRecord, format_splits, load_records
from .shapes import FACTORS, ShapesConfig, render_shapes, shape_factors, write_shapes
from .synthetic import MOTION_CLASSES, SyntheticConfig, render_video, write_synthetic

__all__ = [
    "decode",
    "build_dataset",
    "build_train_dataset",
    "VideoDataset",
    "SyntheticMotion",
    "SyntheticShapes",
    "ShapesConfig",
    "FACTORS",
    "render_shapes",
    "shape_factors",
    "write_shapes",
    "SyntheticConfig",
    "MOTION_CLASSES",
    "render_video",
    "write_synthetic",
    "DataConfig",
    "collate_views",
    "BadVideoLog",
    "BadVideoError",
    "VideoInfo",
    "open_video",
    "probe_video",
    "read_frames",
    "write_video",
    "FORMATS",
    "FORMAT_REGISTRY",
    "DatasetFormat",
    "canonical_format",
    "get_format",
    "DatasetFormatError",
    "RecordList",
    "VideoRecord",
    "format_splits",
    "load_records",
]
