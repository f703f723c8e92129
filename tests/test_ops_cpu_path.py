"""The cpp backend's choice of instruction-set path (ctrlaug/ops/_registry.py): "auto" races every
path this CPU runs once per process and takes the fastest, caches the choice per machine, thread
count and build, and CTRLAUG_CPU_ISA / pin_cpu_isa force a path. No assertion here depends on how
fast anything is: slow paths are made slow by the race's test hook (a penalty added to its
measured time), and what is checked is which path the chooser takes from what it measured."""

from __future__ import annotations

import json
import os
import threading

import pytest
import torch
from tolerance import skip_unless

from ctrlaug.ops import _registry as reg
from ctrlaug.ops import cpu_isa_chosen, pin_cpu_isa, region_contrast


@pytest.fixture(autouse=True)
def fresh_chooser(tmp_path, monkeypatch):
    """A cache in a tmp folder, no forced path, no choice made yet; restored afterwards."""
    skip_unless("cpp", torch.device("cpu"), "region_contrast_fwd", torch.float32)
    monkeypatch.setenv(reg.CACHE_DIR_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(reg.CPU_ISA_ENV, raising=False)
    monkeypatch.setattr(reg, "_TRIAL_PENALTY", {})
    monkeypatch.setattr(reg, "_load_average", lambda: 0.0)  # a quiet machine: races are cached
    reg._reset_cpu_choice()
    yield tmp_path / "cache" / "cpu_isa.json"
    reg._reset_cpu_choice()


def _runnable() -> list[str]:
    paths = reg._cpu_isa_raw()["paths"]
    return [p for p in reg.CPU_AUTO_PATHS if paths[p] == "ok"]


def _case(seed=0):
    g = torch.Generator().manual_seed(seed)
    P, Nc, Nv, B, D = 4, 32, 16, 3, 64
    q = torch.nn.functional.normalize(torch.randn(P * Nc, D, generator=g), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B * Nv, D, generator=g), dim=-1)
    t = torch.rand(P, Nc, Nv, generator=g)
    t = t / t.sum(-1, keepdim=True)
    owner = torch.randint(0, B, (P,), generator=g)
    return q, k, t, owner


def _loss_and_grads(q, k, t, owner):
    q, k = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    loss = region_contrast(q, k, t, owner, backend="cpp")
    loss.backward()
    return loss.detach(), q.grad, k.grad


def test_auto_takes_the_fastest_path_it_measured_and_caches_it(fresh_chooser):
    info = reg.cpu_isa()
    auto = info["auto"]
    assert auto["source"] == "measured"
    assert set(auto["timings_ms"]) == set(_runnable())
    assert auto["path"] == min(auto["timings_ms"], key=auto["timings_ms"].get)
    assert info["chosen"] == auto["path"] == cpu_isa_chosen()
    assert info["chosen_by"] == "selected"  # never a trial path left behind
    assert auto["threads"] == torch.get_num_threads()
    entries = json.loads(fresh_chooser.read_text())["entries"]
    (entry,) = entries.values()
    assert entry["path"] == auto["path"] and entry["key"]["threads"] == torch.get_num_threads()


@pytest.mark.parametrize("winner", reg.CPU_AUTO_PATHS)
def test_every_path_but_one_made_slow_loses_the_race(winner, fresh_chooser, monkeypatch):
    runnable = _runnable()
    if winner not in runnable:
        pytest.skip(f"cpp path {winner} cannot run here")
    if len(runnable) < 2:
        pytest.skip("only one cpp path runs here: no race")
    monkeypatch.setattr(reg, "_TRIAL_PENALTY", {p: 30.0 for p in runnable if p != winner})
    assert cpu_isa_chosen() == winner
    auto = reg.cpu_isa()["auto"]
    assert auto["source"] == "measured"
    assert sorted(auto["pruned"]) == sorted(p for p in runnable if p != winner)  # raced on the slice only
    assert not fresh_chooser.exists(), "a race skewed by the test hook must not be cached"


def test_the_naturally_fastest_path_made_slow_loses(monkeypatch):
    runnable = _runnable()
    if len(runnable) < 2:
        pytest.skip("only one cpp path runs here: no race")
    fastest = cpu_isa_chosen()
    reg._reset_cpu_choice()
    monkeypatch.setattr(reg, "_TRIAL_PENALTY", {fastest: 30.0})
    assert cpu_isa_chosen() != fastest
    assert reg.cpu_isa()["auto"]["timings_ms"][fastest] >= 30e3


def test_a_cached_choice_is_reused_without_a_race(fresh_chooser, monkeypatch):
    first = cpu_isa_chosen()
    reg._reset_cpu_choice()

    def no_race(candidates):
        raise AssertionError("the cached choice must be reused, not raced again")

    monkeypatch.setattr(reg, "_race", no_race)
    assert cpu_isa_chosen() == first
    assert reg.cpu_isa()["auto"]["source"] == "cache"
    # the cache decides, not a fixed order: a planted entry naming another runnable path wins
    others = [p for p in _runnable() if p != first]
    if not others:
        return
    data = json.loads(fresh_chooser.read_text())
    (kid,) = data["entries"]
    data["entries"][kid]["path"] = others[-1]
    fresh_chooser.write_text(json.dumps(data))
    reg._reset_cpu_choice()
    assert cpu_isa_chosen() == others[-1]


@pytest.mark.parametrize(
    "content",
    [b"\x00\xff not json", b"[1, 2]", b'{"entries": 3}', None],
    ids=["garbage", "list", "bad-entries", "foreign-path"],
)
def test_a_corrupt_or_foreign_cache_is_ignored(content, fresh_chooser):
    cpu_isa_chosen()  # a valid cache for this key
    if content is None:  # the right key, a path that is not a candidate
        data = json.loads(fresh_chooser.read_text())
        for e in data["entries"].values():
            e["path"] = "sse9"
        content = json.dumps(data).encode()
    fresh_chooser.write_bytes(content)
    reg._reset_cpu_choice()
    assert cpu_isa_chosen() in _runnable()
    assert reg.cpu_isa()["auto"]["source"] == "measured"
    entries = json.loads(fresh_chooser.read_text())["entries"]  # rewritten, valid again
    assert any(e["path"] == cpu_isa_chosen() for e in entries.values())


def test_a_race_under_load_decides_for_the_process_but_is_not_cached(fresh_chooser, monkeypatch):
    monkeypatch.setattr(reg, "_load_average", lambda: 4.0 * (os.cpu_count() or 1))
    chosen = cpu_isa_chosen()
    auto = reg.cpu_isa()["auto"]
    assert auto["source"] == "measured" and auto["cached"] is False
    assert not fresh_chooser.exists()

    def no_race(candidates):
        raise AssertionError("the process keeps its choice: no second race")

    monkeypatch.setattr(reg, "_race", no_race)
    assert cpu_isa_chosen() == chosen


def test_an_unwritable_cache_costs_a_race_not_a_crash(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(reg.CACHE_DIR_ENV, str(blocker))  # its cache folder would be below a file
    assert cpu_isa_chosen() in _runnable()
    assert reg.cpu_isa()["auto"]["source"] == "measured"


def test_the_cache_is_keyed_by_thread_count(fresh_chooser):
    n = torch.get_num_threads()
    other = 1 if n != 1 else 2
    cpu_isa_chosen()
    key_n = reg._cpu_cache_key(_runnable())
    try:
        torch.set_num_threads(other)
        key_other = reg._cpu_cache_key(_runnable())
        reg._reset_cpu_choice()
        cpu_isa_chosen()
        assert reg.cpu_isa()["auto"]["source"] == "measured"
        assert reg.cpu_isa()["auto"]["threads"] == other
    finally:
        torch.set_num_threads(n)
    assert key_n["threads"] == n and key_other["threads"] == other
    assert reg._key_id(key_n) != reg._key_id(key_other)
    assert len(json.loads(fresh_chooser.read_text())["entries"]) == 2


def test_the_default_cache_location_follows_xdg(tmp_path, monkeypatch):
    monkeypatch.delenv(reg.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert reg._cache_file() == str(tmp_path / "xdg" / "ctrlaug" / "cpu_isa.json")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert reg._cache_file() == str(tmp_path / "home" / ".cache" / "ctrlaug" / "cpu_isa.json")


def test_the_race_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    cpu_isa_chosen()
    assert torch.equal(torch.get_rng_state(), state)


def test_a_forced_path_skips_the_race(monkeypatch):
    forced = _runnable()[-1]
    monkeypatch.setenv(reg.CPU_ISA_ENV, forced)

    def no_race(candidates):
        raise AssertionError("CTRLAUG_CPU_ISA forces the path: no race")

    monkeypatch.setattr(reg, "_race", no_race)
    _loss_and_grads(*_case())
    assert cpu_isa_chosen() == forced
    assert reg.cpu_isa()["chosen_by"] == "CTRLAUG_CPU_ISA" and reg.cpu_isa()["auto"] is None


def test_a_trial_path_is_the_calling_threads_own():
    main = cpu_isa_chosen()
    others = [p for p in _runnable() if p != main]
    if not others:
        pytest.skip("only one cpp path runs here")
    seen = {}

    def other_thread():
        torch.ops.ctrlaug.cpu_isa_trial(others[0])
        seen["during"] = json.loads(torch.ops.ctrlaug.cpu_isa_info())
        torch.ops.ctrlaug.cpu_isa_trial("")
        seen["after"] = json.loads(torch.ops.ctrlaug.cpu_isa_info())["chosen"]

    th = threading.Thread(target=other_thread)
    th.start()
    th.join()
    assert seen["during"]["chosen"] == others[0] and seen["during"]["chosen_by"] == "trial"
    assert seen["after"] == main
    assert json.loads(torch.ops.ctrlaug.cpu_isa_info())["chosen"] == main


def test_pin_forces_a_path_even_after_the_op_ran(monkeypatch):
    runnable = _runnable()
    case = _case()
    auto_out = _loss_and_grads(*case)  # auto chose and ran
    auto = cpu_isa_chosen()
    target = next((p for p in reversed(runnable) if p != auto), auto)
    monkeypatch.setenv(reg.CPU_ISA_ENV, target)
    forced_out = _loss_and_grads(*case)
    monkeypatch.delenv(reg.CPU_ISA_ENV)
    assert cpu_isa_chosen() == auto  # the variable forced it, the choice did not stick
    pin_cpu_isa(target)
    assert os.environ[reg.CPU_ISA_ENV] == target
    assert cpu_isa_chosen() == target and reg.cpu_isa()["chosen_by"] == "CTRLAUG_CPU_ISA"
    pinned_out = _loss_and_grads(*case)
    for a, b in zip(pinned_out, forced_out):
        assert torch.equal(a, b)  # exactly what CTRLAUG_CPU_ISA=target runs
    monkeypatch.delenv(reg.CPU_ISA_ENV)
    assert cpu_isa_chosen() == target  # still pinned with the variable gone
    assert reg.cpu_isa()["chosen_by"] == "selected"
    if target == auto:
        for a, b in zip(pinned_out, auto_out):
            assert torch.equal(a, b)


def test_pin_rejects_unknown_and_unsupported_paths():
    with pytest.raises(
        ValueError, match=r"^pin_cpu_isa: 'sse9' is not a CPU path; choose one of avx512, avx2, "
    ):
        pin_cpu_isa("sse9")
    with pytest.raises(RuntimeError, match=r"cpu_isa_select=sse9 is not a CPU path; choose one of auto, "):
        torch.ops.ctrlaug.cpu_isa_select("sse9")
    assert reg.CPU_ISA_ENV not in os.environ  # a refused pin forces nothing
    missing = [p for p, why in reg._cpu_isa_raw()["paths"].items() if why != "ok"]
    if not missing:
        pytest.skip("every cpp path runs here: no unsupported one to reject")
    with pytest.raises(RuntimeError, match=rf"^pin_cpu_isa: path {missing[0]} cannot run here: "):
        pin_cpu_isa(missing[0])
