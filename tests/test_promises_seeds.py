"""The seed conventions the docs state, each pinned against an expectation built here:

- the random-init floor (``ctrlaug.eval.floor``, docs/training.md "three random-init encoders ...
  seeds seed+1, seed+2, seed+3"): the i-th random-init encoder of a run of seed s has exactly the
  weights of ``build_encoder`` right after ``torch.manual_seed(s + 1 + i)``, i < 3, in the demo's
  probe (``run_probe``), in ``load_encoder(random_init=True, init=i)`` (evaluate, diagnose,
  export), in calibrate's floor and in ablate's random-init diagnostics (i = 0);
- the probes' classifiers keep the seed s itself: every ``factor_probe`` call of ``run_probe``
  gets ``seed=s``, and ``fit_linear_clips(seed=s)`` starts from N(0, 0.01) weights drawn from
  ``torch.Generator().manual_seed(s)`` and a zero bias;
- the sampler's order is a function of (seed, epoch) alone: the same global batches on one
  process and on two ranks (rank r takes its slice of each), another order for another epoch or seed.
"""

from __future__ import annotations

import pytest
import torch
from tiny import TINY

from ctrlaug.config import load_config
from ctrlaug.models import build_encoder

SEED = 5


def _cfg(*extra):
    return load_config(None, [*TINY, f"seed={SEED}", *extra])


def _expected_init(cfg, torch_seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(torch_seed)
    enc = build_encoder(cfg.model.arch, cfg.model.width, cfg.model.spatial_stride1_stages)
    return {k: v.clone() for k, v in enc.state_dict().items()}


def _same(sd: dict, want: dict) -> bool:
    return sd.keys() == want.keys() and all(torch.equal(sd[k], want[k]) for k in want)


def _weights(enc) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in enc.state_dict().items()}


def test_floor_constants_are_the_documented_ones():
    from ctrlaug.eval.floor import FLOOR_INITS, random_init_seed

    assert FLOOR_INITS == 3
    assert [random_init_seed(SEED, i) for i in range(FLOOR_INITS)] == [SEED + 1, SEED + 2, SEED + 3]


def test_the_demo_probe_floor_uses_inits_s_plus_1_plus_i_and_probes_with_seed_s(monkeypatch):
    import ctrlaug.eval.factors as factors

    cfg = _cfg()

    class _Set:
        primary_factor = "shape"

        def __len__(self):
            return 4

    calls = []

    def spy(encoder, train_set, test_set, **kw):
        calls.append((_weights(encoder), kw["seed"]))
        top1 = float(len(calls))  # a distinct score per call, to see which one is reported where
        return {"shape": {"top1": top1, "train_top1": top1, "chance": 50.0}}

    monkeypatch.setattr(factors, "probe_datasets", lambda c: (_Set(), _Set()))
    monkeypatch.setattr(factors, "factor_probe", spy)
    torch.manual_seed(123)
    trained = build_encoder(cfg.model.arch, cfg.model.width, cfg.model.spatial_stride1_stages)
    res = factors.run_probe(cfg, trained, torch.device("cpu"))

    assert len(calls) == 1 + 3
    assert _same(calls[0][0], _weights(trained))
    for i in range(3):
        assert _same(calls[1 + i][0], _expected_init(cfg, SEED + 1 + i)), f"init {i}"
    assert [s for _, s in calls] == [SEED] * 4  # the classifiers keep the seed s
    f = res["factors"]["shape"]
    assert f["random_init"] == 2.0  # the single random-init number is init 0 (seed s + 1)
    assert f["random_init_floor"]["values"] == [2.0, 3.0, 4.0]
    # non-vacuous: the inits really differ from each other
    assert not _same(calls[1][0], calls[2][0])


@pytest.mark.parametrize("init", [0, 1, 2])
def test_load_encoder_random_init_i_is_built_after_manual_seed_s_plus_1_plus_i(init):
    from ctrlaug.eval.encoder import load_encoder

    enc, cfg, path = load_encoder(None, random_init=True, overrides=[*TINY, f"seed={SEED}"], init=init)
    assert path is None and cfg.seed == SEED
    assert _same(_weights(enc), _expected_init(cfg, SEED + 1 + init))


def test_diagnose_floor_reads_inits_0_1_2(monkeypatch):
    """diagnose --random-init: the first encoder is init 0, the floor adds inits 1 and 2."""
    import ctrlaug.studies.diagnose.runner as dg  # run() looks these names up in its own module

    seen = []

    def fake_diagnose(encoder, cfg, **kw):
        seen.append((_weights(encoder), kw["seed"]))
        return {"n": len(seen)}

    monkeypatch.setattr(dg, "diagnose", fake_diagnose)
    monkeypatch.setattr(dg, "floor_summary", lambda results: {"n": len(results)})
    monkeypatch.setattr(dg, "summary_line", lambda res: "")
    monkeypatch.setattr(dg, "write_report", lambda res, stem: stem)
    opts = dg.DiagnoseOptions(
        checkpoint=None, random_init=True, set=[*TINY, f"seed={SEED}"], seed=7, device="cpu", out="unused"
    )
    res = dg.run(opts, log=lambda *a: None)
    cfg = _cfg()
    assert len(seen) == 3 and res["floor"] == {"n": 3}
    for i, (sd, seed) in enumerate(seen):
        assert _same(sd, _expected_init(cfg, SEED + 1 + i)), f"init {i}"
        assert seed == 7  # the diagnostics' own draws keep --seed


def test_calibrate_floor_is_init_0_and_probes_with_seed_s(monkeypatch):
    import ctrlaug.studies.calibrate as cal

    seen = []
    monkeypatch.setattr(cal, "probe_datasets", lambda c: (None, None))
    monkeypatch.setattr(
        cal, "factor_probe", lambda enc, tr, te, **kw: seen.append((_weights(enc), kw["seed"]))
    )
    cal.random_init_floor(_cfg(), seed=SEED)
    ((sd, seed),) = seen
    assert _same(sd, _expected_init(_cfg(), SEED + 1)) and seed == SEED


def test_ablate_random_init_diagnostics_use_init_0(monkeypatch, tmp_path):
    import ctrlaug.studies.ablate.diagnostics as ab  # diagnose_random looks _diagnose_dir up here

    seen = []
    monkeypatch.setattr(
        ab, "_diagnose_dir", lambda folder, cfg, enc, videos, stem: seen.append((_weights(enc), stem))
    )
    ab.diagnose_random([*TINY, f"seed={SEED}"], str(tmp_path))
    assert len(seen) == 1 and _same(seen[0][0], _expected_init(_cfg(), SEED + 1))
    assert seen[0][1] == "diagnose"  # init 0 is written as diagnose.json, the others diagnose_init<i>


def test_the_probe_classifier_starts_from_normal_weights_of_generator_seed_s():
    from ctrlaug.eval.linear import fit_linear_clips

    g = torch.Generator().manual_seed(0)
    N, C, K = 6, 4, 3
    x = torch.randn(N, 1, C, generator=g)
    y = torch.arange(N) % K
    clf = fit_linear_clips(x, y, K, epochs=0, seed=SEED)  # no step: the initial classifier
    f = torch.randn(5, C, generator=g)
    flat = x.reshape(N, C)
    z = (f - flat.mean(0)) / flat.std(0)
    w = torch.empty(K, C).normal_(0, 0.01, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        torch.testing.assert_close(clf(f), z @ w.t(), rtol=1e-6, atol=1e-7)
    w_other = torch.empty(K, C).normal_(0, 0.01, generator=torch.Generator().manual_seed(SEED + 1))
    assert not torch.allclose(z @ w.t(), z @ w_other.t())  # non-vacuous


def test_the_sampler_order_depends_on_seed_and_epoch_only():
    from ctrlaug.engine.sampling import GlobalBatches

    def order(seed, epoch, rank=0, world=1, start=0):
        s = GlobalBatches(16, 4, seed, rank, world)
        s.epoch, s.start = epoch, start
        return [[i for _, i in b] for b in s]

    one = order(SEED, 1)
    assert sorted(i for b in one for i in b) == list(range(16)) and len(one) == 4
    assert order(SEED, 1) == one  # a function of (seed, epoch): a rebuilt sampler gives it again
    two = [order(SEED, 1, r, 2) for r in range(2)]
    assert [a + b for a, b in zip(*two)] == one  # ranks in order = the one-process batch
    assert order(SEED, 1, start=2) == one[2:]  # a resume skips whole batches of the same order
    assert order(SEED, 2) != one and order(SEED + 1, 1) != one
