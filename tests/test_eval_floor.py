"""The random-init floor: one seed convention (ctrlaug.eval.floor) and mean/spread over inits."""

import pytest
import torch

from ctrlaug.eval.floor import FLOOR_INITS, mean_spread, random_init_seed


def test_seed_convention_and_spread():
    assert FLOOR_INITS == 3
    assert [random_init_seed(5, i) for i in range(3)] == [6, 7, 8]
    ms = mean_spread([1.0, 2.0, 6.0])
    assert ms["mean"] == pytest.approx(3.0) and ms["std"] == pytest.approx(2.6457513)
    assert (ms["min"], ms["max"], ms["n"]) == (1.0, 6.0, 3)
    assert mean_spread([4.0])["std"] == 0.0
    with pytest.raises(ValueError):
        mean_spread([])
    with pytest.raises(ValueError):
        random_init_seed(0, -1)


def test_every_tool_builds_the_same_random_init_encoders():
    """evaluate/diagnose (load_encoder), calibrate's floor and the demo probe all build init i of
    seed s after torch.manual_seed(s + 1 + i): the same weights, and different inits differ."""
    from ctrlaug.config import load_config
    from ctrlaug.eval.encoder import load_encoder
    from ctrlaug.models import build_encoder

    cfg = load_config(None, ["seed=3"])
    for i in range(FLOOR_INITS):
        enc, _, _ = load_encoder(None, None, True, ["seed=3"], init=i)
        torch.manual_seed(3 + 1 + i)
        ref = build_encoder(cfg.model.arch, cfg.model.width, cfg.model.spatial_stride1_stages)
        for (k, a), b in zip(enc.state_dict().items(), ref.state_dict().values()):
            assert torch.equal(a, b), (i, k)
    a = load_encoder(None, None, True, ["seed=3"], init=0)[0].state_dict()
    b = load_encoder(None, None, True, ["seed=3"], init=1)[0].state_dict()
    assert not torch.equal(a["conv1.weight"], b["conv1.weight"])


def test_demo_probe_reports_the_floor_over_three_inits(tmp_path, monkeypatch):
    """run_probe: the primary random-init number is init 0's, and every factor carries the floor
    over FLOOR_INITS inits (mean, spread, the three values) -- what probe.json then holds."""
    import json

    from ctrlaug.config import load_config
    from ctrlaug.eval import factors as tr

    seen = []

    def fake_probe(encoder, train_set, test_set, **kw):
        w = float(next(encoder.parameters()).flatten()[0])
        seen.append(w)
        return {f: {"top1": 10.0 + len(seen), "train_top1": 0.0, "chance": 5.0} for f in ("shape", "motion")}

    class _DS:
        primary_factor = "shape"

        def __len__(self):
            return 4

    monkeypatch.setattr(tr, "factor_probe", fake_probe)
    monkeypatch.setattr(tr, "probe_datasets", lambda cfg: (_DS(), _DS()))
    cfg = load_config(None, [f"out_dir={tmp_path}", "seed=0"])
    res = tr.run_probe(cfg, torch.nn.Conv3d(1, 1, 1), torch.device("cpu"))
    assert len(seen) == 1 + FLOOR_INITS  # the trained encoder, then three random inits
    assert len(set(seen[1:])) == FLOOR_INITS  # three different initialisations
    fl = res["factors"]["shape"]["random_init_floor"]
    assert fl["values"] == [12.0, 13.0, 14.0] and fl["mean"] == pytest.approx(13.0)
    assert res["random_init"]["top1"] == 12.0 == res["factors"]["shape"]["random_init"]
    tr.write_probe(cfg, res, 1.0)
    saved = json.load(open(tmp_path / "probe.json"))
    assert saved["factors"]["motion"]["random_init_floor"]["n"] == FLOOR_INITS
