"""torch.hub entry points: ``torch.hub.load(REPO_DIR, "r3d18", source="local", weights=PATH)``.

Each entry returns ctrlaug's encoder (:class:`ctrlaug.models.R3D`, eval mode): ``encoder(x)`` takes
normalised clips [N, 3, T, H, W] (``ctrlaug.models.prepare_input`` of uint8 RGB clips) and returns
the last feature map; ``ctrlaug.models.pool`` of it is the feature the evaluations use.

``weights``: a file of ``python -m ctrlaug.export`` in the ``ctrlaug`` or ``safetensors`` format
(the metadata on ``encoder.metadata``); its arch must be the entry's. Without ``weights`` the
encoder is randomly initialised at ``width`` (1.0 by default). ctrlaug publishes no weights to
download: pass your own export.
"""

dependencies = ["torch"]


def _entry(arch: str, weights: str | None, width: float, spatial_stride1_stages):
    from ctrlaug.errors import EvalError
    from ctrlaug.models import build_encoder, load_backbone

    if weights is None:
        return build_encoder(arch, width, spatial_stride1_stages).eval()
    enc = load_backbone(weights)
    if enc.metadata.get("arch") != arch:
        raise EvalError(
            f"{weights} holds a {enc.metadata.get('arch')!r} encoder; load it with the hub entry "
            f"{enc.metadata.get('arch')!r}, not {arch!r}"
        )
    return enc


def r3d18(weights: str | None = None, width: float = 1.0, spatial_stride1_stages=()):
    """R3D-18 with Hara's stem (the paper's encoder, ``model.arch=r3d18``)."""
    return _entry("r3d18", weights, width, spatial_stride1_stages)


def r3d34(weights: str | None = None, width: float = 1.0, spatial_stride1_stages=()):
    """R3D-34 with Hara's stem (``model.arch=r3d34``)."""
    return _entry("r3d34", weights, width, spatial_stride1_stages)


def r3d18_tv(weights: str | None = None, width: float = 1.0, spatial_stride1_stages=()):
    """R3D-18 with torchvision's stem (``model.arch=r3d18_tv``; same layout as ``r3d_18()``)."""
    return _entry("r3d18_tv", weights, width, spatial_stride1_stages)


def r3d34_tv(weights: str | None = None, width: float = 1.0, spatial_stride1_stages=()):
    """R3D-34 with torchvision's stem (``model.arch=r3d34_tv``)."""
    return _entry("r3d34_tv", weights, width, spatial_stride1_stages)
