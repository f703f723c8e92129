"""The fused ops of ctrlaug: tube-intersection correspondence and soft-target region contrast.

Each op takes ``backend="auto" | "reference" | "cpp" | "triton" | "cuda"``; see README's
backend table. ``ctrlaug.ops.status()`` reports what is built here; ``cpu_isa_chosen()`` is the
cpp backend's instruction-set path in this process and ``pin_cpu_isa(name)`` forces one (resume).
"""

from ._registry import BACKENDS, available, cpu_isa_chosen, pin_cpu_isa, status
from .correspondence import correspondence
from .reference import correspondence_ref, region_contrast_ref
from .region_contrast import region_contrast

__all__ = [
    "BACKENDS",
    "available",
    "correspondence",
    "correspondence_ref",
    "cpu_isa_chosen",
    "pin_cpu_isa",
    "region_contrast",
    "region_contrast_ref",
    "status",
]
