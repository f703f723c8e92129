"""One convention for user errors (ctrlaug.cli.run_cli): every command, data.prepare, data.check
and checkpoint upgrade included, reports bad input as one ``error:`` line with exit 2, and the
lower layers raise the CtrlAugError family instead of bare ValueErrors (issue 31)."""

from __future__ import annotations

import ast
import json
import pathlib

import pytest

from ctrlaug.data.check import main as check_main
from ctrlaug.data.formats import get_format
from ctrlaug.data.prepare import MARKER
from ctrlaug.data.prepare import main as prepare_main
from ctrlaug.data.records import DatasetFormatError, load_records
from ctrlaug.errors import CtrlAugError, UsageError
from ctrlaug.utils.checkpoint import main as checkpoint_main

PKG = pathlib.Path(__file__).resolve().parents[1] / "ctrlaug"


def _one_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_every_command_module_reports_through_run_cli():
    """Each module run as a command has a main() that calls run_cli, and no module but cli.py
    prints an ``error:`` line of its own."""
    commands, printers = [], []
    for path in sorted(PKG.rglob("*.py")):
        tree = ast.parse(path.read_text())
        rel = str(path.relative_to(PKG.parent))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "print":
                text = ast.unparse(node.args[0]) if node.args else ""
                if text.lstrip("f").strip("'\"").startswith("error:"):
                    printers.append(rel)
        mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        if mains:
            commands.append(rel)
            calls = {getattr(c.func, "id", "") for c in ast.walk(mains[0]) if isinstance(c, ast.Call)}
            assert "run_cli" in calls, f"{rel}: main() does not go through run_cli"
    assert printers == []
    assert {"ctrlaug/data/prepare.py", "ctrlaug/data/check.py", "ctrlaug/utils/checkpoint.py"} <= set(
        commands
    )


def test_check_reports_a_bad_request_in_one_line(tmp_path, capsys):
    assert check_main([str(tmp_path), "--format", "nope"]) == 2  # was a ValueError traceback
    _one_error(capsys, "unknown dataset format 'nope'")
    assert check_main([str(tmp_path), "--format", "ucf101", "--fold", "7"]) == 2
    _one_error(capsys, "fold must be 1, 2 or 3, got 7")
    assert check_main([str(tmp_path), "--format", "shapes"]) == 2
    _one_error(capsys, "'shapes' set is rendered")


@pytest.mark.parametrize("marker", ["{not json", "[1, 2]"])
def test_prepare_refuses_a_foreign_marker_in_one_line(tmp_path, capsys, marker):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "a").mkdir(parents=True)
    dst.mkdir()
    (dst / MARKER).write_text(marker)  # "[1, 2]" was an AttributeError traceback
    assert prepare_main([str(src), str(dst), "--format", "folder"]) == 2
    _one_error(capsys, f"DST {dst}", MARKER, "choose a new folder")
    assert (dst / MARKER).read_text() == marker and sorted(p.name for p in dst.iterdir()) == [MARKER]
    assert prepare_main([str(src), str(tmp_path / "d2"), "--format", "nope"]) == 2
    _one_error(capsys, "unknown dataset format 'nope'")


def test_checkpoint_upgrade_errors_are_one_line_and_leave_the_file(tmp_path, capsys):
    junk = tmp_path / "ckpt_000000001.pt"
    junk.write_bytes(b"not a checkpoint")
    assert checkpoint_main(["upgrade", str(junk)]) == 2  # no opt-in: nothing is unpickled
    _one_error(capsys, "--trust", "full unpickler")
    assert checkpoint_main(["upgrade", "--trust"]) == 2
    _one_error(capsys, "no FILE")
    assert checkpoint_main(["upgrade", "--trust", str(tmp_path / "nope.pt")]) == 2
    _one_error(capsys, "nope.pt: no such file")
    assert checkpoint_main(["upgrade", "--trust", str(junk)]) == 2
    _one_error(capsys, f"{junk}: cannot upgrade")
    assert junk.read_bytes() == b"not a checkpoint" and sorted(p.name for p in tmp_path.iterdir()) == [
        junk.name
    ]


def test_lower_layers_raise_the_family_and_stay_value_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown dataset format 'nope'") as e:
        get_format("nope")
    assert isinstance(e.value, ValueError)  # older `except ValueError` clauses still catch it
    with pytest.raises(UsageError, match="split must be 'train' or 'test', got 'bogus'"):
        load_records("ucf101", str(tmp_path), "bogus")
    with pytest.raises(UsageError, match="version must be 'v1' or 'v2'"):
        load_records("diving48", str(tmp_path), "train", version="v9")
    # a malformed label in an annotation file names the file and line (was int()'s bare ValueError)
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    (lists / "classInd.txt").write_text("1 Archery\n")
    (lists / "trainlist01.txt").write_text("Archery/v_Archery_g01_c01.avi one\n")
    with pytest.raises(DatasetFormatError, match=r"trainlist01.txt:1: expected an integer, got 'one'") as e:
        load_records("ucf101", str(tmp_path), "train")
    assert isinstance(e.value, CtrlAugError)
    (tmp_path / "Diving48_V2_train.json").write_text(json.dumps([{"vid_name": "x", "label": "five"}]))
    with pytest.raises(DatasetFormatError, match=r"entry 0: expected an integer, got 'five'"):
        load_records("diving48", str(tmp_path), "train", version="v2")
