"""Issue 33, items 3 and 4: every config value is checked before a run creates anything, config
files are UTF-8 without YAML aliases, and no message that echoes a user's value grows without
bound (a few hundred bytes of aliases, or of shared references in a checkpoint's pickle, expand to
gigabytes)."""

from __future__ import annotations

import pytest

from ctrlaug import train
from ctrlaug.cli import parse_seeds
from ctrlaug.config import ConfigError, config_from_dict, load_config, migrate_saved_config
from ctrlaug.errors import CtrlAugError

SEED_MAX = 2**63 - 1  # ctrlaug.utils.cfgtools.SEED_MAX


def _train(argv, capsys, monkeypatch):
    """``python -m ctrlaug.train ARGV`` in-process; a config that passes the checks fails the test
    instead of training (the run folder is created inside ``train``)."""

    def accepted(cfg):
        pytest.fail(f"the config was accepted: {argv}")

    monkeypatch.setattr(train, "train", accepted)
    rc = train.main(argv)
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize(
    "override, key",
    [
        ("seed=-1", "seed"),
        ("seed=18446744073709551616", "seed"),  # beyond torch.manual_seed's range
        ("seed=9223372036854775808", "seed"),  # 2**63: beyond the documented bound
        ("seed=1.0e+20", "seed"),  # a float that looks like an integer
        ("data.seed=-1", "data.seed"),
        ("shapes.seed=-1", "shapes.seed"),
        ("synthetic.seed=-3", "synthetic.seed"),
    ],
)
def test_a_bad_seed_is_one_line_before_the_run_folder_exists(tmp_path, capsys, monkeypatch, override, key):
    out = tmp_path / "run"
    rc, err = _train([override, f"out_dir={out}"], capsys, monkeypatch)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: bad training config: ") and f"{key}:" in err
    assert not out.exists()


def test_the_largest_seed_is_accepted_and_floats_are_not_rounded_into_ints():
    assert load_config(None, [f"seed={SEED_MAX}"]).seed == SEED_MAX
    assert load_config(None, ["seed=7.0"]).seed == 7  # an exact float still reads as its integer
    with pytest.raises(ConfigError, match="not exact"):
        load_config(None, ["seed=1.0e+20"])


def test_seed_lists_of_the_study_commands_are_bounded():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("-1", "0,18446744073709551616"):
        with pytest.raises(CtrlAugError, match="--seeds"):
            parse_seeds(bad)


def test_a_config_file_that_is_not_utf8_is_one_line_naming_the_file_and_offset(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes(b"seed: 1\nout_dir: caf\xe9\n")
    out = tmp_path / "run"
    rc, err = _train(["--config", str(cfg), f"out_dir={out}"], capsys, monkeypatch)
    assert rc == 2 and err.count("\n") == 1
    assert str(cfg) in err and "not UTF-8" in err and "offset 20" in err
    assert not out.exists()


def _alias_bomb(levels: int = 7) -> str:
    lines = ['a0: &a0 ["xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_is_refused_in_a_few_bytes(tmp_path, capsys, monkeypatch):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(_alias_bomb())
    assert cfg.stat().st_size < 500
    rc, err = _train(["--config", str(cfg), f"out_dir={tmp_path / 'run'}"], capsys, monkeypatch)
    assert rc == 2 and err.count("\n") == 1 and len(err) < 400
    assert "aliases" in err and str(cfg) in err
    # the same in a key=value override: read as a plain string, never expanded
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.global_stride1_stages=[&a [3], *a, *a]"])
    assert len(str(e.value)) < 400


def _shared_bomb(levels: int = 8) -> list:
    """What a pickle with shared references (or an expanded YAML alias bomb) unpickles to: 9**levels
    leaves from a few hundred bytes."""
    v: list = ["x" * 30]
    for _ in range(levels):
        v = [v] * 9
    return v


def test_a_checkpoint_config_with_shared_references_is_refused_before_it_is_walked():
    bombed = {"seed": 0, "batch_size": 16, "augment": {"num_clips": _shared_bomb()}}
    with pytest.raises(ConfigError) as e:
        migrate_saved_config(bombed, "checkpoint runs/x/ckpt_000000001.pt")
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 300 and "runs/x/ckpt_000000001.pt" in msg
    with pytest.raises(ConfigError) as e:
        config_from_dict(bombed)
    assert len(str(e.value)) < 300
    deep: dict = {}
    d = deep
    for _ in range(100):
        d["a"] = {}
        d = d["a"]
    with pytest.raises(ConfigError, match="deeper"):
        migrate_saved_config(deep)


def test_messages_that_echo_values_are_cut_and_say_how_much():
    from ctrlaug.utils.cfgtools import SEED_MAX as max_seed
    from ctrlaug.utils.cfgtools import cap_line, short_repr

    assert max_seed == SEED_MAX
    huge = "y" * 1_000_000
    with pytest.raises(ConfigError) as e:
        config_from_dict({"out_dir": ["z" * 100_000], huge: 1, "seed": huge})
    msg = str(e.value)
    assert len(msg) < 5000 and "more characters cut" in msg
    # many problems: at most 50 listed
    with pytest.raises(ConfigError) as e:
        config_from_dict({f"nope{i}": 1 for i in range(500)})
    assert "more problems" in str(e.value) and len(str(e.value)) < 80_000
    assert short_repr(_shared_bomb(12)).__len__() < 300  # bounded work and length on a shared structure
    assert cap_line("a" * 10_000, 100).endswith("(9900 more characters cut)")
