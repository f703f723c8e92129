"""ctrlaug: Controllable Augmentations for Video Representation Learning (Qian, Lin, See, Li).

Subpackages, bottom up: ``ctrlaug.ops`` (fused correspondence and region contrast),
``ctrlaug.kernels`` (Triton), ``ctrlaug.models``, ``ctrlaug.augment``, ``ctrlaug.losses``,
``ctrlaug.data``, ``ctrlaug.eval`` (evaluation as a library), ``ctrlaug.engine`` (pretraining as a
library), ``ctrlaug.studies`` (calibration, diagnostics, ablations, pictures). The modules
``ctrlaug.train``, ``ctrlaug.evaluate``, ``ctrlaug.ablate``, ``ctrlaug.calibrate``,
``ctrlaug.diagnose``, ``ctrlaug.viz`` and ``ctrlaug.export`` are the ``python -m`` commands.
Importing ctrlaug is cheap: the compiled extension is loaded on the first op call.
"""

__version__ = "0.1.0"
