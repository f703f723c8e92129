"""Triton kernels of ctrlaug (installed as ``ctrlaug.kernels``).

Typed launchers only, no autograd and no op registration (``ctrlaug.ops`` does that):

- ``ctrlaug.kernels.correspondence.correspondence``
- ``ctrlaug.kernels.region_contrast.region_contrast_fwd`` / ``region_contrast_bwd``

The submodules import triton; this package file does not, so ``import ctrlaug.kernels`` works
where triton is missing. On a machine without a GPU, set ``TRITON_INTERPRET=1`` before triton is
first imported to run the kernels on CPU tensors (fp32 compute, slow, small shapes only).
"""
