"""The encoder outside the training pickle: a backbone-only file, and torchvision's layout.

``ctrlaug`` format (:func:`save_backbone` / :func:`load_backbone`): one ``torch.save`` of a plain
``{"format": "ctrlaug-backbone", "format_version": 1, "metadata": {...}, "state_dict": {...}}``
(tensors, strings, numbers, lists, dicts only), so ``torch.load(path, weights_only=True)`` reads it.
``metadata`` holds what a user needs to feed the encoder: ``arch``, ``depth``, ``width``,
``spatial_stride1_stages``, ``out_channels``, ``input`` (layout, value range, per-channel mean and
std), ``clip`` and ``global_view`` geometry with their ``feature_grid``, and ``source`` (checkpoint,
run folder, step, the run's git commit and config).

``torchvision`` format: the same weights under the keys of torchvision's ``VideoResNet``
(:func:`torchvision_state_dict`, eight renaming rules, :data:`TV_RULES`). For ``model.arch=r3d18_tv``
(torchvision's own stem: 3x7x7 conv, stride (1, 2, 2), no max-pool) the file is exactly the state
dict of stock ``torchvision.models.video.r3d_18()``, which loads it with ``strict=True``;
``r3d34_tv`` gives that of ``VideoResNet(BasicBlock, [Conv3DSimple] * 4, [3, 4, 6, 3],
stem=BasicStem)``. For the default ``r3d18`` (Hara's stem: a 7x7x7 conv + a 3x3x3 max-pool) the keys
are the same but stock ``r3d_18`` cannot hold a 7x7x7 stem: :func:`build_torchvision_r3d18` builds
the ``VideoResNet`` with that stem. :func:`build_torchvision_video_resnet` returns the torchvision
module for any of these (``fc`` = ``Identity`` by default, so its output is the pooled feature,
equal to ``pool(encoder(x))``).

``mmaction2`` format (:func:`mmaction2_state_dict`): ``{"state_dict": {"backbone.<key>": ...}}``
under the keys of MMAction2's ``ResNet3d`` (``mmaction/models/backbones/resnet3d.py``), whose
convolutions are mmcv ``ConvModule`` s: ``conv1.conv`` / ``conv1.bn`` for the stem,
``layerN.M.conv1.conv``, ``layerN.M.conv1.bn``, ``layerN.M.conv2.conv``, ``layerN.M.conv2.bn``,
``layerN.M.downsample.conv``, ``layerN.M.downsample.bn``. Only the torchvision stem has an exact
MMAction2 counterpart (its max-pool is 1x3x3, not Hara's 3x3x3), so only ``r3d18_tv`` / ``r3d34_tv``
export; :func:`mmaction2_backbone_config` is the ``ResNet3d`` config that computes the same function.
"""

from __future__ import annotations

import json
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
    "safetensors_bytes",
    "import_safetensors",
    "read_backbone",
    "load_backbone",
    "torchvision_state_dict",
    "check_torchvision_compatible",
    "import_torchvision_video_resnet",
    "build_torchvision_r3d18",
    "build_torchvision_video_resnet",
    "MM_RULES",
    "mmaction2_state_dict",
    "mmaction2_backbone_config",
    "check_mmaction2_compatible",
]

BACKBONE_FORMAT = "ctrlaug-backbone"
FORMAT_VERSION = 1


def _key_rules(stem: str, conv: str, bn: str) -> tuple[tuple[str, str], ...]:
    """ctrlaug key -> another layout's key (first match wins; every key must match one rule): the
    stem is ``<stem>.<conv|bn>``, a block's convs and norms ``layer{s}.<k>.conv<n>.<conv|bn>``, its
    shortcut ``layer{s}.<k>.downsample.<conv|bn>``. ``{s}`` is filled with the stage number."""
    parts = (("conv1", "conv1", conv), ("bn1", "conv1", bn), ("conv2", "conv2", conv), ("bn2", "conv2", bn))
    parts += (("down_conv", "downsample", conv), ("down_bn", "downsample", bn))
    return (
        (r"^conv1\.(.+)$", rf"{stem}.{conv}.\1"),
        (r"^bn1\.(.+)$", rf"{stem}.{bn}.\1"),
        *(
            (rf"^stages\.(\d+)\.(\d+)\.{src}\.(.+)$", rf"layer{{s}}.\2.{dst}.{part}.\3")
            for src, dst, part in parts
        ),
    )


# torchvision VideoResNet: stem.0 / stem.1, layerN.M.conv1.0 / .1, layerN.M.downsample.0 / .1
TV_RULES = _key_rules("stem", "0", "1")
# MMAction2 ResNet3d (without the "backbone." prefix the file adds): ConvModule's conv / bn
MM_RULES = _key_rules("conv1", "conv", "bn")

# arches whose torchvision module exists: the Hara-stem R3D-18 (custom stem) and the tv-stem ones
TV_ARCHES = ("r3d18", "r3d18_tv", "r3d34_tv")
MM_ARCHES = ("r3d18_tv", "r3d34_tv")


def save_backbone(encoder: nn.Module, path: str, metadata: Mapping) -> None:
    """Write the ``ctrlaug`` backbone file (see the module docstring), atomically."""
    from ctrlaug.utils.atomic import atomic_open

    sd = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
    payload = {
        "format": BACKBONE_FORMAT,
        "format_version": FORMAT_VERSION,
        "metadata": _plain(dict(metadata)),
        "state_dict": sd,
    }
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)


def import_safetensors():
    """``safetensors.torch``, or a one-line :class:`ctrlaug.errors.UsageError` naming the install
    command (safetensors is an optional extra: ``pip install safetensors`` or ``ctrlaug[safetensors]``)."""
    try:
        import safetensors.torch as st
    except ImportError:
        from ctrlaug.errors import UsageError

        raise UsageError(
            "the safetensors format needs the safetensors package: pip install safetensors"
        ) from None
    return st


def safetensors_bytes(encoder: nn.Module, metadata: Mapping) -> bytes:
    """The ``ctrlaug`` backbone as a safetensors file: the encoder's state dict under its own keys,
    the header's ``__metadata__`` holding ``format``, ``format_version`` and ``metadata`` (the
    metadata dict as JSON; safetensors headers hold strings only)."""
    st = import_safetensors()
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in encoder.state_dict().items()}
    header = {
        "format": BACKBONE_FORMAT,
        "format_version": str(FORMAT_VERSION),
        "metadata": json.dumps(_plain(dict(metadata)), sort_keys=True),
    }
    return st.save(sd, metadata=header)


def _is_safetensors(path: str) -> bool:
    """A safetensors file starts with an 8-byte little-endian header length, then ``{``."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") > 0


def _plain(x):
    """Tuples -> lists, recursively: only types the weights_only unpickler reads back plainly."""
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def read_backbone(path: str, map_location="cpu") -> tuple[dict, dict]:
    """(state_dict, metadata) of a ``ctrlaug`` backbone file, read with ``weights_only=True`` (or
    of its safetensors form, :func:`safetensors_bytes`); ValueError naming the file when it is not
    one."""
    if _is_safetensors(path):
        return _read_safetensors(path, map_location)
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


def _read_safetensors(path: str, map_location) -> tuple[dict, dict]:
    st = import_safetensors()
    try:
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
        sd = st.load_file(path, device=str(map_location))
    except Exception as e:
        raise ValueError(
            f"cannot read safetensors file {path}: {type(e).__name__}: {e}".splitlines()[0]
        ) from None
    if header.get("format") != BACKBONE_FORMAT:
        raise ValueError(
            f"{path} is a safetensors file but not a ctrlaug backbone (no format={BACKBONE_FORMAT!r} "
            "in its header); make one with python -m ctrlaug.export --format safetensors"
        )
    if header.get("format_version") != str(FORMAT_VERSION):
        raise ValueError(f"{path}: backbone format_version {header.get('format_version')!r} is not supported")
    try:
        meta = json.loads(header["metadata"])
    except (KeyError, ValueError) as e:
        raise ValueError(f"{path}: the header's metadata is not JSON: {e}".splitlines()[0]) from None
    return sd, meta


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
    """ValueError (one line) unless the encoder has a torchvision ``VideoResNet`` layout:
    r3d18 (Hara stem), r3d18_tv or r3d34_tv (torchvision's stem), width 1, no spatially
    unstrided stage."""
    problems = []
    if arch not in TV_ARCHES:
        problems.append(f"arch {arch!r} (needs {', '.join(TV_ARCHES)})")
    if float(width) != 1.0:
        problems.append(f"width {width} (needs 1.0)")
    if tuple(spatial_stride1_stages or ()):
        problems.append(f"spatial_stride1_stages {list(spatial_stride1_stages)} (needs [])")
    if problems:
        raise ValueError(
            "the torchvision format needs a torchvision VideoResNet layout; this encoder has "
            + ", ".join(problems)
        )


def _rename(state_dict: Mapping[str, torch.Tensor], rules, what: str, prefix: str = "") -> dict:
    out = {}
    for k, v in state_dict.items():
        for pat, rep in rules:
            m = re.match(pat, k)
            if m:
                if "{s}" in rep:
                    rep = rep.replace("{s}", str(int(m.group(1)) + 1))
                out[prefix + m.expand(rep)] = v
                break
        else:
            raise ValueError(f"{what} export: no rule maps the key {k!r}")
    return out


def torchvision_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ctrlaug R3D state dict under torchvision ``VideoResNet`` keys (:data:`TV_RULES`; stage
    index i -> ``layer{i+1}``); ValueError for a key no rule maps."""
    return _rename(state_dict, TV_RULES, "torchvision")


def mmaction2_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ctrlaug R3D state dict under MMAction2 ``ResNet3d`` keys with the recognizer's
    ``backbone.`` prefix (:data:`MM_RULES`); ValueError for a key no rule maps."""
    return _rename(state_dict, MM_RULES, "mmaction2", prefix="backbone.")


def mmaction2_backbone_config(arch: str) -> dict:
    """The MMAction2 ``ResNet3d`` config that builds the layout of ``arch`` (``r3d18_tv`` or
    ``r3d34_tv``): torchvision's stem (3x7x7 conv, stride (1, 2, 2), no max-pool, no pool2), every
    block inflated to 3x3x3, layers 2-4 strided 2 in time and space, 1x1x1 projection shortcuts.
    Facts checked against ``mmaction/models/backbones/resnet3d.py`` (docs/evaluation.md)."""
    check_mmaction2_compatible(arch, 1.0)
    return {
        "type": "ResNet3d",
        "depth": {"r3d18_tv": 18, "r3d34_tv": 34}[arch],
        "pretrained": None,
        "pretrained2d": False,
        "in_channels": 3,
        "base_channels": 64,
        "num_stages": 4,
        "out_indices": [3],
        "conv1_kernel": [3, 7, 7],
        "conv1_stride_s": 2,
        "conv1_stride_t": 1,
        "with_pool1": False,
        "with_pool2": False,
        "spatial_strides": [1, 2, 2, 2],
        "temporal_strides": [1, 2, 2, 2],
        "dilations": [1, 1, 1, 1],
        "inflate": [1, 1, 1, 1],
        "norm_cfg": {"type": "BN3d", "requires_grad": True},
        "zero_init_residual": False,
    }


def check_mmaction2_compatible(arch: str, width: float, spatial_stride1_stages=()) -> None:
    """ValueError (one line) unless MMAction2's ``ResNet3d`` can compute this encoder exactly:
    torchvision's stem (``r3d18_tv`` / ``r3d34_tv``), width 1, no spatially unstrided stage."""
    problems = []
    if arch not in MM_ARCHES:
        why = " (Hara's 3x3x3 max-pool has no MMAction2 counterpart)" if arch in ("r3d18", "r3d34") else ""
        problems.append(f"arch {arch!r}{why} (needs {' or '.join(MM_ARCHES)})")
    if float(width) != 1.0:
        problems.append(f"width {width} (needs 1.0)")
    if tuple(spatial_stride1_stages or ()):
        problems.append(f"spatial_stride1_stages {list(spatial_stride1_stages)} (needs [])")
    if problems:
        raise ValueError(
            "the mmaction2 format needs MMAction2's ResNet3d layout; this encoder has " + ", ".join(problems)
        )


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


def build_torchvision_video_resnet(
    arch: str = "r3d18_tv",
    state_dict: Mapping[str, torch.Tensor] | None = None,
    num_classes: int | None = None,
    stub_missing_ops: bool = False,
) -> nn.Module:
    """torchvision's ``VideoResNet`` of ``arch``, optionally loaded (strictly) with a
    torchvision-format state dict: ``r3d18_tv`` is stock ``torchvision.models.video.r3d_18()``,
    ``r3d34_tv`` the same with [3, 4, 6, 3] blocks, ``r3d18`` the R3D-18 with Hara's stem.
    ``num_classes`` None: ``fc`` is ``Identity`` and the output is the pooled 512-d feature; else a
    fresh ``Linear(512, K)`` (loaded weights leave it untouched). Needs torchvision (see
    :func:`import_torchvision_video_resnet` for ``stub_missing_ops``)."""
    check_torchvision_compatible(arch, 1.0)
    tv = import_torchvision_video_resnet(stub_missing_ops)

    if arch == "r3d18_tv":
        model = tv.r3d_18()
    elif arch == "r3d34_tv":
        model = tv.VideoResNet(tv.BasicBlock, [tv.Conv3DSimple] * 4, [3, 4, 6, 3], stem=tv.BasicStem)
    else:

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
                raise ValueError(f"torchvision {arch}: state dict keys do not match: {bad[:5]}")
    return model


def build_torchvision_r3d18(
    state_dict: Mapping[str, torch.Tensor] | None = None,
    num_classes: int | None = None,
    stub_missing_ops: bool = False,
) -> nn.Module:
    """torchvision's ``VideoResNet`` with ctrlaug's default (Hara's) stem and R3D-18 blocks: the
    module a ``--format torchvision`` export of ``model.arch=r3d18`` loads into (see
    :func:`build_torchvision_video_resnet`)."""
    return build_torchvision_video_resnet("r3d18", state_dict, num_classes, stub_missing_ops)
