"""Provenance records, --print-config and packaging (issue 21)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import warnings

import tomllib
import yaml
from tiny import TINY

from ctrlaug.config import load_config
from ctrlaug.utils.provenance import PROVENANCE_KEYS, provenance, write_provenance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args):
    r = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else None


def test_provenance_record():
    import torch

    import ctrlaug

    p = provenance("cpu", argv=["prog", "--x", "a b"])
    assert set(PROVENANCE_KEYS) <= set(p)
    assert p["ctrlaug_version"] == ctrlaug.__version__ and p["torch"] == torch.__version__
    assert p["cuda"] == torch.version.cuda and p["device"] == "cpu"
    assert p["command"].endswith("prog --x 'a b'")
    head = _git("rev-parse", "HEAD")
    if head is None:
        assert p["git_commit"] is None
    else:
        assert p["git_commit"] == head and isinstance(p["git_dirty"], bool)
    json.dumps(p)


def test_write_provenance_keeps_earlier_records(tmp_path):
    path = write_provenance(str(tmp_path), "cpu", world_size=1)
    with open(path) as f:
        first = json.load(f)
    assert first["world_size"] == 1 and "previous" not in first
    write_provenance(str(tmp_path), "cpu", world_size=2)
    with open(path) as f:
        second = json.load(f)
    assert second["world_size"] == 2 and [r["world_size"] for r in second["previous"]] == [1]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]


def test_training_run_folder_has_provenance(tmp_path):
    from ctrlaug.engine.trainer import train

    cfg = load_config(None, [*TINY, "epochs=1", "optim.max_steps_per_epoch=1", f"out_dir={tmp_path / 'run'}"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        train(cfg)
    with open(tmp_path / "run" / "provenance.json") as f:
        rec = json.load(f)
    assert set(PROVENANCE_KEYS) <= set(rec) and rec["device"] == "cpu" and rec["world_size"] == 1
    assert os.path.isfile(tmp_path / "run" / "config.yaml")


def test_print_config_prints_the_resolved_config_and_exits(tmp_path, capsys):
    from ctrlaug.train import main

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("model: {width: 0.25}\noptim: {lr: 0.01}\n")
    out_dir = tmp_path / "never"
    assert main(["--print-config", "--config", str(cfg_file), "optim.lr=0.002", f"out_dir={out_dir}"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (
        printed["model"]["width"] == 0.25
        and printed["optim"]["lr"] == 0.002
        and printed["out_dir"] == str(out_dir)
    )
    assert printed["augment"]["clip_frames"] == load_config(None).augment.clip_frames  # defaults filled
    assert not out_dir.exists()  # nothing trained or written
    assert main(["--print-config", "no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_packaging_files_and_console_scripts():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        proj = tomllib.load(f)["project"]
    scripts = proj["scripts"]
    assert {"ctrlaug-train", "ctrlaug-eval", "ctrlaug-export", "ctrlaug-diagnose"} <= set(scripts)
    for name, target in scripts.items():
        mod, func = target.split(":")
        assert callable(getattr(importlib.import_module(mod), func)), name
    assert proj["optional-dependencies"]["torchcodec"] == ["torchcodec"]
    with open(os.path.join(ROOT, "LICENSE")) as f:
        text = f.read()
    assert text.startswith("MIT License") and proj["license"]["text"] == "MIT"
    with open(os.path.join(ROOT, "CITATION.cff")) as f:
        cff = yaml.safe_load(f)
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    pc = cff["preferred-citation"]
    assert pc["title"] == "Controllable Augmentations for Video Representation Learning"
    assert [a["family-names"] for a in pc["authors"]] == ["Qian", "Lin", "See", "Li"]


def test_console_script_entry_point_runs():
    # the entry point as the generated script calls it: sys.exit(main()) with sys.argv
    code = "import sys; from ctrlaug.train import main; sys.argv=['ctrlaug-train','--print-config','model.width=0.5']; sys.exit(main())"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["model"]["width"] == 0.5
