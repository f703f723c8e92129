"""ctrlaug.config: the model, optim, log and eval groups of TrainConfig. Configs saved with the old
flat keys (checkpoints, run folders) migrate exactly; a user's old flat key is a clear error."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import yaml
from tiny import TINY

from ctrlaug.config import (
    RENAMED,
    ConfigError,
    EvalConfig,
    LogConfig,
    ModelConfig,
    OptimConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    migrate_saved_config,
)

GROUPS = {"model": ModelConfig, "optim": OptimConfig, "log": LogConfig, "eval": EvalConfig}
#: old flat key -> (group, field) of every key that moved into one of the four groups
MOVED = {old: tuple(new.split(".")) for old, new in RENAMED.items() if new.split(".")[0] in GROUPS}


def to_old_form(values: dict) -> dict:
    """A config dict of today in the flat form earlier versions saved (the groups' keys at the
    top level under their old names); fails if a group field has no old name in RENAMED."""
    out = copy.deepcopy(values)
    for old, (group, key) in MOVED.items():
        out[old] = out[group].pop(key)
    for group in GROUPS:
        assert out.pop(group) == {}, f"{group} has fields without an old name: {values[group]}"
    return out


def test_every_field_of_the_groups_has_exactly_one_old_flat_key():
    fields = {(g, f.name) for g, cls in GROUPS.items() for f in dataclasses.fields(cls)}
    assert set(MOVED.values()) == fields and len(MOVED) == len(fields) == 30
    assert not set(MOVED) & {f.name for f in dataclasses.fields(TrainConfig)}  # no old key is a field
    assert MOVED["probe"] == ("eval", "linear") and MOVED["probe_epochs"] == ("eval", "linear_epochs")
    assert MOVED["probe_split"] == ("eval", "split") and MOVED["probe_clips"] == ("eval", "clips")


def _non_default() -> TrainConfig:
    """A config whose every moved key differs from its default."""
    return load_config(
        None,
        [
            *"model.arch=r3d34 model.width=0.25 model.global_stride1_stages=[4] model.spatial_stride1_stages=[4]".split(),
            *"model.proj_hidden=32 model.proj_dim=16 model.sync_bn=true model.channels_last=false".split(),
            *"model.compile=true model.amp=bf16".split(),
            *"optim.lr=2e-4 optim.weight_decay=0 optim.lr_milestones=[3] optim.lr_gamma=0.5".split(),
            *"optim.grad_clip=1.0 optim.max_steps_per_epoch=7 optim.max_bad_steps=2".split(),
            *"log.every=3 log.ckpt_every_steps=10 log.keep_checkpoints=4 log.tensorboard=false".split(),
            *"log.progress=false log.plot=false".split(),
            *"eval.linear=false eval.split=val eval.clips=3 eval.linear_epochs=50 eval.knn_every=1".split(),
            *"eval.knn_k=5 eval.knn_t=0.1".split(),
        ],
    )


def test_a_config_saved_with_the_old_flat_keys_migrates_exactly():
    want = _non_default()
    default = TrainConfig()
    for group, key in MOVED.values():  # every moved key carries a value of its own
        assert getattr(getattr(want, group), key) != getattr(getattr(default, group), key), (group, key)
    old = to_old_form(config_to_dict(want))
    assert old["lr"] == 2e-4 and old["probe"] is False and old["width"] == 0.25 and "optim" not in old
    # through YAML, as a run folder's config.yaml holds it
    old = yaml.safe_load(yaml.safe_dump(old, sort_keys=False))
    assert migrate_saved_config(old) == config_to_dict(want)  # nothing lost, nothing added
    assert config_from_dict(migrate_saved_config(old)) == want
    # today's form passes through unchanged
    assert migrate_saved_config(config_to_dict(want)) == config_to_dict(want)
    # the flat form before the loss groups too (mi_ema, tau, ... and the flat model keys at once)
    older = {k: v for k, v in old.items() if k not in ("rc", "mi", "td", "nce")}
    older.update(tau=0.07, mi_ema=0.05, td_head="mlp", nce=True)
    cfg = config_from_dict(migrate_saved_config(older))
    assert (cfg.rc.tau, cfg.mi.ema, cfg.td.ema, cfg.td.head, cfg.nce.enabled) == (
        0.07,
        0.05,
        0.05,
        "mlp",
        True,
    )
    assert (cfg.model, cfg.optim, cfg.log, cfg.eval) == (want.model, want.optim, want.log, want.eval)


def test_old_flat_keys_from_the_user_name_their_new_key(tmp_path, capsys):
    from ctrlaug.train import main

    old = to_old_form(config_to_dict(TrainConfig()))
    moved = {k: old[k] for k in MOVED}
    # key=value overrides: every old key is reported, each with its new name
    with pytest.raises(ConfigError) as ei:
        load_config(None, [f"{k}={json.dumps(v)}" for k, v in moved.items()])
    msg = str(ei.value)
    for k, (group, key) in MOVED.items():
        assert f"'{k}' was renamed to {group}.{key}\n" in msg + "\n", k
    assert len(ei.value.problems) == len(MOVED)
    # a YAML file in the old flat form: the same errors, not a silent migration
    p = tmp_path / "old.yaml"
    p.write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.raises(ConfigError) as ei:
        load_config(str(p))
    assert len(ei.value.problems) == len(MOVED) and "'knn_every' was renamed to eval.knn_every" in str(
        ei.value
    )
    # the CLI: exit 2, one error, no traceback
    assert main(["--config", str(p), "lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert "'probe' was renamed to eval.linear" in err and "'lr' was renamed to optim.lr" in err
    # a mistyped new key gets the did-you-mean of its group
    with pytest.raises(ConfigError, match=r"unknown key 'optim.lrr' \(did you mean optim.lr, "):
        load_config(None, ["optim.lrr=0.1"])


def test_help_lists_the_grouped_keys_and_no_old_flat_key(capsys):
    from ctrlaug.train import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for group, key in MOVED.values():
        assert f"\n  {group}.{key}=" in out, (group, key)
    for group in GROUPS:
        assert f"\n  {group}.*  (" in out
    for k in MOVED:
        assert f"\n  {k}=" not in out, k
    assert "\n  optim.lr=0.001  [float]" in out and "\n  eval.linear=true  [bool]" in out


def test_cross_field_checks_name_the_grouped_keys():
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["model.global_stride1_stages=[1,3]", "optim.lr_milestones=[0]"])
    assert ei.value.problems == [
        "model.global_stride1_stages: invalid value [1, 3]; valid choices: a subset of [2, 3, 4]",
        "optim.lr_milestones: epochs must be >= 1, got [0]",
    ]
    with pytest.raises(ConfigError, match=r"model.spatial_stride1_stages: invalid value \[4, 4\]"):
        load_config(None, ["model.spatial_stride1_stages=[4,4]"])
    with pytest.raises(ConfigError, match="eval.knn_t: 0.0 is below the minimum 0.0001"):
        load_config(None, ["eval.knn_t=0"])
    with pytest.raises(
        ConfigError, match="model.amp: invalid value 'fp8'; valid choices: auto, bf16, fp16, off"
    ):
        load_config(None, ["model.amp=fp8"])


def test_a_checkpoint_saved_with_the_old_flat_keys_loads_and_resumes(tmp_path, capsys):
    """End to end: a run whose checkpoint holds the old flat config; evaluate builds the same
    config and encoder from it, and a resume sees no changed key but the one it changes."""
    from ctrlaug.engine.trainer import train
    from ctrlaug.eval.encoder import load_encoder
    from ctrlaug.utils.checkpoint import list_checkpoints, load_latest, save_checkpoint

    extra = ["epochs=1", "optim.max_steps_per_epoch=1", "log.keep_checkpoints=3", "eval.knn_k=7"]
    cfg = load_config(None, [*TINY, f"out_dir={tmp_path / 'new'}", *extra])
    train(cfg)
    path, state = load_latest(cfg.out_dir)
    run = tmp_path / "old"
    state["config"] = to_old_form(config_to_dict(dataclasses.replace(cfg, out_dir=str(run))))
    assert "model" not in state["config"] and state["config"]["knn_k"] == 7
    save_checkpoint(state, str(run), state["step"])
    enc, got, _ = load_encoder(str(run), None, False)
    assert got == dataclasses.replace(cfg, out_dir=str(run))
    saved = {k[len("encoder.") :]: v for k, v in state["model"].items() if k.startswith("encoder.")}
    assert saved and all(torch.equal(enc.state_dict()[k], v) for k, v in saved.items())
    capsys.readouterr()
    train(load_config(None, [*TINY, f"out_dir={run}", *extra[1:], "epochs=2"]))
    err = capsys.readouterr().err
    assert "with changed config keys: epochs (1 -> 2)\n" in err, err
    assert len(list_checkpoints(str(run))) == 2


def test_a_key_renamed_inside_its_group_migrates_from_saved_configs_and_errs_from_the_user(tmp_path, capsys):
    """log.log_every (saved between the groups and issue 31) is log.every: a saved config carries its
    value over exactly; a user who writes it gets the "renamed to" error, once, with exit 2."""
    from ctrlaug.config import RENAMED_IN_GROUPS
    from ctrlaug.train import main

    assert RENAMED_IN_GROUPS == {"log": {"log_every": "every"}} and RENAMED["log_every"] == "log.every"
    want = _non_default()
    saved = config_to_dict(want)
    saved["log"] = {("log_every" if k == "every" else k): v for k, v in saved["log"].items()}
    assert saved["log"]["log_every"] == 3 and "every" not in saved["log"]
    saved = yaml.safe_load(yaml.safe_dump(saved, sort_keys=False))  # as config.yaml holds it
    assert migrate_saved_config(saved) == config_to_dict(want)
    assert config_from_dict(migrate_saved_config(saved)) == want
    # the flat key of before the groups goes straight to today's name
    assert config_from_dict(migrate_saved_config(to_old_form(config_to_dict(want)))).log.every == 3
    # what a user writes: an override, a YAML file, the command line
    with pytest.raises(ConfigError) as ei:
        load_config(None, ["log.log_every=3"])
    assert ei.value.problems == ["'log.log_every' was renamed to log.every"]
    p = tmp_path / "old.yaml"
    p.write_text("log:\n  log_every: 3\n")
    with pytest.raises(ConfigError, match=r"'log.log_every' was renamed to log.every"):
        load_config(str(p))
    assert main(["--config", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "'log.log_every' was renamed to log.every" in err
    assert "Traceback" not in err
