"""The encoder outside the training pickle: a backbone-only file, and torchvision's layout.

``ctrlaug`` format (:func:`save_backbone` / :func:`load_backbone`): one ``torch.save`` of a plain
``{"format": "ctrlaug-backbone", "format_version": 1, "metadata": {...}, "state_dict": {...}}``
(tensors, strings, numbers, lists, dicts only), so ``torch.load(path, weights_only=True)`` reads it.
``metadata`` holds what a user needs to feed the encoder: ``arch``, ``depth``, ``width``,
``spatial_stride1_stages``, ``out_channels``, ``input`` (layout, value range, per-channel mean and
std), ``clip`` and ``global_view`` geometry with their ``feature_grid``, and ``source`` (checkpoint,
run folder, step, the run's git commit and config).

``torchvision`` format: the same weights under the keys of torchvision's ``VideoResNet`` built as
``VideoResNet(BasicBlock, [Conv3DSimple] * 4, [2, 2, 2, 2], stem=HaraStem)`` where ``HaraStem``
is a 7x7x7 conv (stride (1, 2, 2), padding 3) + BN + ReLU + a 3x3x3 max-pool (stride (1, 2, 2),
padding 1) -- the stem of Hara et al. as ctrlaug builds it (docs/training.md, "Encoder"). Stock
``torchvision.models.video.r3d_18`` differs only in its stem (a 3x7x7 conv, stride (1, 2, 2),
and no max-pool): the stages, blocks and strides are the same, so only the stem needs a custom
module. :func:`torchvision_state_dict` renames the keys (eight rules, :data:`TV_RULES`);
:func:`build_torchvision_r3d18` returns that torchvision module (``fc`` = ``Identity`` by
default, so its output is the pooled 512-d feature, equal to ``pool(encoder(x))``).
"""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Mapping

import torch
import torch.nn as nn

__all__ = [
    "BACKBONE_FORMAT",
    "TV_RULES",
    "save_backbone",
    "read_backbone",
    "load_backbone",
    "torchvision_state_dict",
    "check_torchvision_compatible",
    "import_torchvision_video_resnet",
    "build_torchvision_r3d18",
]

BACKBONE_FORMAT = "ctrlaug-backbone"
FORMAT_VERSION = 1

# ctrlaug key -> torchvision VideoResNet key (first match wins; every key must match one rule)
TV_RULES: tuple[tuple[str, str], ...] = (
    (r"^conv1\.(.+)$", r"stem.0.\1"),
    (r"^bn1\.(.+)$", r"stem.1.\1"),
    (r"^stages\.(\d+)\.(\d+)\.conv1\.(.+)$", r"layer{s}.\2.conv1.0.\3"),
    (r"^stages\.(\d+)\.(\d+)\.bn1\.(.+)$", r"layer{s}.\2.conv1.1.\3"),
    (r"^stages\.(\d+)\.(\d+)\.conv2\.(.+)$", r"layer{s}.\2.conv2.0.\3"),
    (r"^stages\.(\d+)\.(\d+)\.bn2\.(.+)$", r"layer{s}.\2.conv2.1.\3"),
    (r"^stages\.(\d+)\.(\d+)\.down_conv\.(.+)$", r"layer{s}.\2.downsample.0.\3"),
    (r"^stages\.(\d+)\.(\d+)\.down_bn\.(.+)$", r"layer{s}.\2.downsample.1.\3"),
)


def save_backbone(encoder: nn.Module, path: str, metadata: Mapping) -> None:
    """Write the ``ctrlaug`` backbone file (see the module docstring)."""
    sd = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    payload = {
        "format": BACKBONE_FORMAT,
        "format_version": FORMAT_VERSION,
        "metadata": _plain(dict(metadata)),
        "state_dict": sd,
    }
    torch.save(payload, path)


def _plain(x):
    """Tuples -> lists, recursively: only types the weights_only unpickler reads back plainly."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def read_backbone(path: str, map_location="cpu") -> tuple[dict, dict]:
    """(state_dict, metadata) of a ``ctrlaug`` backbone file, read with ``weights_only=True``;
    ValueError naming the file when it is not one."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(
            f"cannot read backbone file {path}: {type(e).__name__}: {e}".splitlines()[0]
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != BACKBONE_FORMAT:
        raise ValueError(
            f"{path} is not a ctrlaug backbone file (no format={BACKBONE_FORMAT!r}); "
            "make one with python -m ctrlaug.export"
        )
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: backbone format_version {payload.get('format_version')!r} is not supported"
        )
    return payload["state_dict"], payload["metadata"]


def load_backbone(path: str, map_location="cpu") -> nn.Module:
    """Rebuild the encoder (:class:`ctrlaug.models.R3D`, eval mode) of a ``ctrlaug`` backbone
    file; its metadata is on ``encoder.metadata``. ``encoder(x)`` takes normalised clips
    [N, 3, T, H, W] (``ctrlaug.models.prepare_input`` of uint8 clips) and returns the last
    feature map; ``ctrlaug.models.pool`` of it is the feature the evaluations use."""
    from ctrlaug.models.r3d import build_encoder

    sd, meta = read_backbone(path, map_location)
    try:
        enc = build_encoder(meta["arch"], meta["width"], meta.get("spatial_stride1_stages") or ())
        enc.load_state_dict(sd, strict=True)
    except (KeyError, ValueError, RuntimeError) as e:
        raise ValueError(f"{path}: backbone does not rebuild: {e}".splitlines()[0]) from None
    enc.metadata = meta
    return enc.eval()


def check_torchvision_compatible(arch: str, width: float, spatial_stride1_stages=()) -> None:
    """ValueError (one line) unless the encoder has torchvision's R3D-18 layout: r3d18, width 1,
    no spatially unstrided stage."""
    problems = []
    if arch != "r3d18":
        problems.append(f"arch {arch!r} (needs r3d18)")
    if float(width) != 1.0:
        problems.append(f"width {width} (needs 1.0)")
    if tuple(spatial_stride1_stages or ()):
        problems.append(f"spatial_stride1_stages {list(spatial_stride1_stages)} (needs [])")
    if problems:
        raise ValueError(
            "the torchvision format needs torchvision's R3D-18 layout; this encoder has "
            + ", ".join(problems)
        )


def torchvision_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ctrlaug R3D state dict under torchvision ``VideoResNet`` keys (:data:`TV_RULES`; stage
    index i -> ``layer{i+1}``); ValueError for a key no rule maps."""
    out = {}
    for k, v in state_dict.items():
        for pat, rep in TV_RULES:
            m = re.match(pat, k)
            if m:
                if "{s}" in rep:
                    rep = rep.replace("{s}", str(int(m.group(1)) + 1))
                out[m.expand(rep)] = v
                break
        else:
            raise ValueError(f"torchvision export: no rule maps the key {k!r}")
    return out


def import_torchvision_video_resnet(stub_missing_ops: bool = False) -> types.ModuleType:
    """``torchvision.models.video.resnet`` (ImportError with the reason when unusable).

    ``stub_missing_ops=True`` is for a torchvision whose compiled ops do not load beside this
    torch (a wheel built for another torch: importing torchvision then fails with "operator
    torchvision::nms does not exist" while registering the ops' fake implementations). The model
    code needs none of those ops, so the registration module is replaced by an empty one before
    torchvision is imported; detection ops then fail if called, video models work.
    """
    try:
        from torchvision.models.video import resnet

        return resnet
    except ImportError:
        raise
    except Exception as e:  # RuntimeError from the ops' registration
        if not stub_missing_ops:
            raise ImportError(f"torchvision does not import here: {type(e).__name__}: {e}") from None
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        try:
            from torchvision.models.video import resnet
        except Exception as e2:
            raise ImportError(
                f"torchvision does not import here, even without its ops: {type(e2).__name__}: {e2}"
            ) from None
        return resnet


def build_torchvision_r3d18(
    state_dict: Mapping[str, torch.Tensor] | None = None,
    num_classes: int | None = None,
    stub_missing_ops: bool = False,
) -> nn.Module:
    """torchvision's ``VideoResNet`` with ctrlaug's (Hara's) stem, R3D-18 blocks, optionally
    loaded (strictly) with a torchvision-format state dict. ``num_classes`` None: ``fc`` is
    ``Identity`` and the output is the pooled 512-d feature; else a fresh ``Linear(512, K)``
    (loaded weights leave it untouched). Needs torchvision (see
    :func:`import_torchvision_video_resnet` for ``stub_missing_ops``)."""
    tv = import_torchvision_video_resnet(stub_missing_ops)

    class HaraStem(nn.Sequential):
        """7x7x7 conv, stride (1, 2, 2) + BN + ReLU + 3x3x3 max-pool, stride (1, 2, 2)."""

        def __init__(self) -> None:
            super().__init__(
                nn.Conv3d(3, 64, kernel_size=(7, 7, 7), stride=(1, 2, 2), padding=(3, 3, 3), bias=False),
                nn.BatchNorm3d(64),
                nn.ReLU(inplace=True),
                nn.MaxPool3d(kernel_size=(3, 3, 3), stride=(1, 2, 2), padding=(1, 1, 1)),
            )

    model = tv.VideoResNet(tv.BasicBlock, [tv.Conv3DSimple] * 4, [2, 2, 2, 2], stem=HaraStem)
    model.fc = nn.Identity() if num_classes is None else nn.Linear(512, num_classes)
    if state_dict is not None:
        if num_classes is None:
            model.load_state_dict(state_dict, strict=True)
        else:
            missing, unexpected = model.load_state_dict(state_dict, strict=False)
            bad = [k for k in missing if not k.startswith("fc.")] + list(unexpected)
            if bad:
                raise ValueError(f"torchvision R3D-18: state dict keys do not match: {bad[:5]}")
    return model
