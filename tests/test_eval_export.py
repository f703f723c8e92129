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
