"""ctrlaug: Controllable Augmentations for Video Representation Learning (Qian, Lin, See, Li).

Subpackages: ``ctrlaug.ops`` (fused correspondence and region contrast), ``ctrlaug.kernels``
(Triton), ``ctrlaug.augment``, ``ctrlaug.data``. Importing ctrlaug is cheap: the compiled
extension is loaded on the first op call.
"""

__version__ = "0.1.0"
