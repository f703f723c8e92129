"""Exporting the encoder (issue 21): the ctrlaug backbone file round trip (weights_only load, the
same features) and the torchvision layout (key mapping; equivalence with torchvision's own
VideoResNet where torchvision's model code imports)."""

from __future__ import annotations

import json
import os

import pytest
import torch
from tiny import TINY

from ctrlaug.config import config_to_dict, load_config
from ctrlaug.eval.encoder import load_encoder
from ctrlaug.export import main
from ctrlaug.models import build_encoder, load_backbone, pool, torchvision_state_dict
from ctrlaug.models.backbone import check_torchvision_compatible, read_backbone
from ctrlaug.utils.checkpoint import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _fake_run(folder, overrides, step=7, commit="0123abc"):
    """A run folder with one checkpoint of a randomly initialised (BN statistics perturbed)
    encoder of the config, and the provenance.json a run writes."""
    cfg = load_config(None, [*TINY, *overrides, f"out_dir={folder}"])
    torch.manual_seed(3)
    enc = build_encoder(cfg.model.arch, cfg.model.width, cfg.model.spatial_stride1_stages)
    g = torch.Generator().manual_seed(4)
    for m in enc.modules():
        if isinstance(m, torch.nn.BatchNorm3d):  # non-trivial statistics, so eval-mode BN matters
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
    state = {
        "model": {f"encoder.{k}": v for k, v in enc.state_dict().items()},
        "optimizer": {},
        "epoch": 1,
        "step": step,
        "config": config_to_dict(cfg),
    }
    path = save_checkpoint(state, str(folder), step)
    with open(os.path.join(folder, "provenance.json"), "w") as f:
        json.dump({"git_commit": commit, "git_dirty": False, "ctrlaug_version": "0.1.0"}, f)
    return path


def _clips(n=2, t=8, s=32, seed=0):
    return torch.randint(
        0, 256, (n, 3, t, s, s), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_ctrlaug_export_round_trip(tmp_path):
    ckpt = _fake_run(tmp_path / "run", ["model.spatial_stride1_stages=[4]"])
    out = str(tmp_path / "exp" / "enc.pt")
    assert main([str(tmp_path / "run"), out]) == 0
    payload = torch.load(out, weights_only=True)  # plain types only
    assert payload["format"] == "ctrlaug-backbone" and set(payload) == {
        "format",
        "format_version",
        "metadata",
        "state_dict",
    }
    assert not any(k.startswith(("proj", "mi", "td", "encoder.")) for k in payload["state_dict"])
    meta = payload["metadata"]
    ref, cfg, _ = load_encoder(ckpt)
    assert (
        meta["arch"] == "r3d18" and meta["width"] == cfg.model.width and meta["spatial_stride1_stages"] == [4]
    )
    assert meta["input"]["mean"] == [0.45] * 3 and meta["input"]["std"] == [0.225] * 3
    assert meta["clip"]["frames"] == cfg.augment.clip_frames and meta["clip"]["size"] == cfg.augment.size
    assert meta["clip"]["feature_grid"] == list(ref.output_grid((cfg.augment.clip_frames, 32, 32)))
    assert meta["global_view"]["feature_grid"] == list(
        ref.output_grid((cfg.augment.global_frames, 32, 32), cfg.model.global_stride1_stages)
    )
    src = meta["source"]
    assert src["checkpoint"] == os.path.abspath(ckpt) and src["step"] == 7 and src["git_commit"] == "0123abc"
    assert src["config"]["model"]["width"] == cfg.model.width and "git_commit" in meta["exported_by"]
    enc = load_backbone(out)
    assert enc.metadata == meta and not enc.training
    from ctrlaug.models import prepare_input

    ref.eval()
    x = prepare_input(_clips())
    with torch.no_grad():
        assert torch.equal(pool(enc(x)), pool(ref(x)))
        assert enc(x).shape[2:] == torch.Size(meta["clip"]["feature_grid"])


def test_bad_backbone_files_are_one_clear_error(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"state_dict": {}}, p)
    with pytest.raises(ValueError, match="not a ctrlaug backbone file"):
        read_backbone(str(p))
    p.write_text("garbage")
    with pytest.raises(ValueError, match="cannot read backbone file"):
        load_backbone(str(p))


def test_torchvision_export_is_refused_for_other_layouts(tmp_path, capsys):
    _fake_run(tmp_path / "run", [])  # TINY: width 1/16
    assert main([str(tmp_path / "run"), str(tmp_path / "tv.pth"), "--format", "torchvision"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "width 0.0625 (needs 1.0)" in err and "\n" not in err
    assert not os.path.exists(tmp_path / "tv.pth")
    with pytest.raises(ValueError, match=r"spatial_stride1_stages \[4\]"):
        check_torchvision_compatible("r3d18", 1.0, [4])
    with pytest.raises(ValueError, match="arch 'r3d34'"):
        check_torchvision_compatible("r3d34", 1.0, [])
    check_torchvision_compatible("r3d18", 1.0, [])


def test_torchvision_key_mapping_covers_every_key():
    sd = build_encoder("r3d18", 0.125).state_dict()
    tv = torchvision_state_dict(sd)
    assert len(tv) == len(sd) == 120  # every key mapped, none merged
    assert {"stem.0.weight", "stem.1.running_var", "layer1.0.conv1.0.weight", "layer1.1.conv2.1.bias"} <= set(
        tv
    )
    assert {"layer2.0.downsample.0.weight", "layer4.0.downsample.1.num_batches_tracked"} <= set(tv)
    assert not any(k.startswith(("layer1.0.downsample", "stages", "conv1", "bn1")) for k in tv)
    assert torch.equal(tv["layer3.1.conv2.0.weight"], sd["stages.2.1.conv2.weight"])
    with pytest.raises(ValueError, match="no rule maps the key 'fc.weight'"):
        torchvision_state_dict({"fc.weight": torch.zeros(1)})


def _torchvision_or_skip():
    from ctrlaug.models.backbone import import_torchvision_video_resnet

    try:
        return import_torchvision_video_resnet(stub_missing_ops=True)
    except ImportError as e:
        pytest.skip(f"torchvision's model code does not import here ({e}); pip install torchvision")


def test_torchvision_export_gives_the_same_features_in_torchvision(tmp_path):
    _torchvision_or_skip()
    from ctrlaug.models import build_torchvision_r3d18, prepare_input

    _fake_run(tmp_path / "run", ["model.width=1.0"])
    out = str(tmp_path / "r3d18_tv.pth")
    assert main([str(tmp_path / "run"), out, "--format", "torchvision"]) == 0
    sd = torch.load(out, weights_only=True)
    with open(out + ".json") as f:
        assert json.load(f)["source"]["git_commit"] == "0123abc"
    tv = build_torchvision_r3d18(sd, stub_missing_ops=True).eval()  # strict: every key matched
    assert type(tv).__module__ == "torchvision.models.video.resnet"
    ref, _, _ = load_encoder(str(tmp_path / "run"))
    ref.eval()
    x = prepare_input(_clips(n=2, t=8, s=48, seed=1))
    with torch.no_grad():
        a, b = pool(ref(x)), tv(x)
    assert a.shape == b.shape == (2, 512)
    assert torch.equal(a, b), (a - b).abs().max()
    head = build_torchvision_r3d18(sd, num_classes=5, stub_missing_ops=True)
    assert head.fc.out_features == 5 and torch.equal(
        head.layer4[1].conv2[0].weight, tv.layer4[1].conv2[0].weight
    )


# ---- issue 30: torchvision's stem (r3d18_tv), stock r3d_18, MMAction2, safetensors, torch.hub ----


def test_tv_stem_changes_only_the_stem_and_the_grid():
    hara, tv = build_encoder("r3d18", 0.125), build_encoder("r3d18_tv", 0.125)
    a, b = hara.state_dict(), tv.state_dict()
    assert list(a) == list(b)  # same keys, same order: every key rule serves both stems
    assert [k for k in a if a[k].shape != b[k].shape] == ["conv1.weight"]
    assert tuple(a["conv1.weight"].shape[2:]) == (7, 7, 7) and tuple(b["conv1.weight"].shape[2:]) == (3, 7, 7)
    assert hara.stem == "hara" and tv.stem == "tv" and isinstance(tv.maxpool, torch.nn.Identity)
    # the paper's clip: 2x4x4 with Hara's max-pool, 2x7x7 without it (docs/evaluation.md)
    assert hara.output_grid((16, 112, 112)) == (2, 4, 4) and tv.output_grid((16, 112, 112)) == (2, 7, 7)
    x = torch.randn(1, 3, 8, 40, 40)
    with torch.no_grad():
        assert tuple(tv.eval()(x).shape[2:]) == tv.output_grid((8, 40, 40)) == (1, 3, 3)
        assert tuple(tv(x, (3, 4)).shape[2:]) == tv.output_grid((8, 40, 40), (3, 4)) == (4, 3, 3)
    with pytest.raises(ValueError, match="arch must be one of"):
        build_encoder("r3d18_hara")


def test_stock_torchvision_r3d18_loads_the_r3d18_tv_export(tmp_path):
    tvm = _torchvision_or_skip()
    from ctrlaug.models import prepare_input
    from ctrlaug.models.backbone import build_torchvision_video_resnet

    _fake_run(tmp_path / "run", ["model.width=1.0", "model.arch=r3d18_tv"])
    out = str(tmp_path / "r3d18_tv.pth")
    assert main([str(tmp_path / "run"), out, "--format", "torchvision"]) == 0
    sd = torch.load(out, weights_only=True)
    stock = tvm.r3d_18()  # torchvision's own builder, its own stem
    assert set(sd) == set(stock.state_dict()) - {"fc.weight", "fc.bias"}
    stock.fc = torch.nn.Identity()
    stock.load_state_dict(sd, strict=True)
    with open(out + ".json") as f:
        meta = json.load(f)
    assert meta["arch"] == "r3d18_tv" and meta["stem"] == "tv" and "r3d_18()" in meta["format"]
    ref, _, _ = load_encoder(str(tmp_path / "run"))
    x = prepare_input(_clips(n=2, t=8, s=48, seed=2))
    with torch.no_grad():
        a, b = pool(ref.eval()(x)), stock.eval()(x)
    assert a.shape == b.shape == (2, 512) and torch.equal(a, b), (a - b).abs().max()
    assert torch.equal(build_torchvision_video_resnet("r3d18_tv", sd, stub_missing_ops=True).eval()(x), b)
    # r3d34_tv: torchvision's VideoResNet with [3, 4, 6, 3] blocks and its BasicStem
    sd34 = torchvision_state_dict(build_encoder("r3d34_tv", 1.0).state_dict())
    m34 = build_torchvision_video_resnet("r3d34_tv", sd34, stub_missing_ops=True)
    assert isinstance(m34.stem, tvm.BasicStem) and len(m34.layer3) == 6


# The layout of MMAction2's ResNet3d (mmaction/models/backbones/resnet3d.py) as docs/evaluation.md
# records it, written here from those facts (MMAction2 needs mmcv, which CI does not install): mmcv
# ConvModule names its parts conv / bn (norm abbreviation of a _BatchNorm) / activate (no weights);
# the stem is ConvModule(conv1_kernel, stride (conv1_stride_t, conv1_stride_s, conv1_stride_s),
# padding (k-1)//2) + ReLU, then a (1,3,3) max-pool if with_pool1, a (2,1,1) pool2 after layer1 if
# with_pool2; BasicBlock3d with inflate: two 3x3x3 ConvModules, the first strided
# (temporal_stride, spatial_stride, spatial_stride) with ReLU, the second without; a downsample
# ConvModule (1x1x1, the same stride, no act) when spatial_stride != 1 or the channels change.
class _ConvModule(torch.nn.Module):
    def __init__(self, cin, cout, k, stride=1, act=True):
        super().__init__()
        k = (k,) * 3 if isinstance(k, int) else tuple(k)
        self.conv = torch.nn.Conv3d(cin, cout, k, stride, tuple((v - 1) // 2 for v in k), bias=False)
        self.bn = torch.nn.BatchNorm3d(cout)
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(x))
        return torch.relu(x) if self.act else x


class _MMBasicBlock3d(torch.nn.Module):
    def __init__(self, cin, cout, s, t, downsample):
        super().__init__()
        self.conv1 = _ConvModule(cin, cout, 3, (t, s, s))
        self.conv2 = _ConvModule(cout, cout, 3, 1, act=False)
        self.downsample = downsample

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.conv2(self.conv1(x)) + idt)


class _MMResNet3d(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        blocks = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}[cfg["depth"]]
        c = cfg["base_channels"]
        s1, t1 = cfg["conv1_stride_s"], cfg["conv1_stride_t"]
        self.conv1 = _ConvModule(cfg["in_channels"], c, cfg["conv1_kernel"], (t1, s1, s1))
        self.with_pool1, self.with_pool2 = cfg["with_pool1"], cfg["with_pool2"]
        self.maxpool = torch.nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
        assert cfg["inflate"] == [1, 1, 1, 1] and cfg["dilations"] == [1, 1, 1, 1]
        cin = c
        for i, n in enumerate(blocks):
            cout, s, t = c * 2**i, cfg["spatial_strides"][i], cfg["temporal_strides"][i]
            down = _ConvModule(cin, cout, 1, (t, s, s), act=False) if (s != 1 or cin != cout) else None
            layer = [_MMBasicBlock3d(cin, cout, s, t, down)]
            layer += [_MMBasicBlock3d(cout, cout, 1, 1, None) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", torch.nn.Sequential(*layer))
            cin = cout

    def forward(self, x):
        x = self.conv1(x)
        if self.with_pool1:
            x = self.maxpool(x)
        for i in range(4):
            x = getattr(self, f"layer{i + 1}")(x)
            if i == 0 and self.with_pool2:
                x = torch.nn.functional.max_pool3d(x, (2, 1, 1), (2, 1, 1))
        return x


def test_mmaction2_export_keys_config_and_features(tmp_path):
    from ctrlaug.models import prepare_input
    from ctrlaug.models.backbone import mmaction2_backbone_config, mmaction2_state_dict

    _fake_run(tmp_path / "run", ["model.width=1.0", "model.arch=r3d18_tv"])
    out = str(tmp_path / "mm" / "r3d18_mmaction2.pth")
    assert main([str(tmp_path / "run"), out, "--format", "mmaction2"]) == 0
    ck = torch.load(out, weights_only=True)
    assert set(ck) == {"state_dict", "meta"} and ck["meta"]["source_git_commit"] == "0123abc"
    sd = ck["state_dict"]
    assert len(sd) == 120 and all(k.startswith("backbone.") for k in sd)
    assert {
        "backbone.conv1.conv.weight",
        "backbone.conv1.bn.running_mean",
        "backbone.layer1.0.conv1.conv.weight",
        "backbone.layer1.1.conv2.bn.bias",
        "backbone.layer2.0.downsample.conv.weight",
        "backbone.layer4.0.downsample.bn.num_batches_tracked",
    } <= set(sd)
    assert not any(".downsample." in k for k in sd if k.startswith("backbone.layer1."))
    assert tuple(sd["backbone.conv1.conv.weight"].shape) == (64, 3, 3, 7, 7)
    assert tuple(sd["backbone.layer2.0.downsample.conv.weight"].shape) == (128, 64, 1, 1, 1)
    cfg = mmaction2_backbone_config("r3d18_tv")
    with open(out + ".json") as f:
        assert json.load(f)["mmaction2_backbone"] == cfg == ck["meta"]["mmaction2_backbone"]
    mm = _MMResNet3d(cfg)
    mm.load_state_dict({k.removeprefix("backbone."): v for k, v in sd.items()}, strict=True)
    ref, _, _ = load_encoder(str(tmp_path / "run"))
    x = prepare_input(_clips(n=1, t=8, s=48, seed=3))
    with torch.no_grad():
        a, b = ref.eval()(x), mm.eval()(x)
    assert a.shape == b.shape and torch.equal(a, b), (a - b).abs().max()
    sd34 = mmaction2_state_dict(build_encoder("r3d34_tv", 0.125).state_dict())
    assert (
        "backbone.layer3.5.conv2.bn.weight" in sd34 and mmaction2_backbone_config("r3d34_tv")["depth"] == 34
    )


def test_mmaction2_export_refuses_the_hara_stem(tmp_path, capsys):
    _fake_run(tmp_path / "run", ["model.width=1.0"])
    out = tmp_path / "mm.pth"
    assert main([str(tmp_path / "run"), str(out), "--format", "mmaction2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert "arch 'r3d18'" in err and "3x3x3 max-pool" in err and "r3d18_tv" in err
    assert not out.exists() and not (tmp_path / "mm.pth.json").exists()


def test_safetensors_export_round_trip_and_hub(tmp_path):
    pytest.importorskip("safetensors")
    from safetensors import safe_open

    from ctrlaug.models import prepare_input

    _fake_run(tmp_path / "run", ["model.arch=r3d18_tv"])
    out = str(tmp_path / "enc.safetensors")
    assert main([str(tmp_path / "run"), out, "--format", "safetensors"]) == 0
    with safe_open(out, framework="pt") as f:
        header = f.metadata()
        keys = set(f.keys())
    assert header["format"] == "ctrlaug-backbone" and header["format_version"] == "1"
    meta = json.loads(header["metadata"])
    assert meta["arch"] == "r3d18_tv" and meta["source"]["git_commit"] == "0123abc"
    ref, _, _ = load_encoder(str(tmp_path / "run"))
    assert keys == set(ref.state_dict())
    enc = load_backbone(out)
    assert enc.metadata == meta and enc.stem == "tv"
    x = prepare_input(_clips(seed=4))
    with torch.no_grad():
        want = pool(ref.eval()(x))
        assert torch.equal(pool(enc(x)), want)
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        hub = torch.hub.load(repo, "r3d18_tv", source="local", weights=out)
        assert torch.equal(pool(hub(x)), want) and not hub.training
    with pytest.raises(ValueError, match="holds a 'r3d18_tv' encoder"):
        torch.hub.load(repo, "r3d18", source="local", weights=out)
    bogus = tmp_path / "other.safetensors"
    import safetensors.torch as st

    bogus.write_bytes(st.save({"w": torch.zeros(2)}))
    with pytest.raises(ValueError, match="not a ctrlaug backbone"):
        load_backbone(str(bogus))


def test_safetensors_missing_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors.torch -> ImportError
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    assert (
        main([str(tmp_path / "no-such-run"), str(tmp_path / "x.safetensors"), "--format", "safetensors"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err == "error: the safetensors format needs the safetensors package: pip install safetensors"
