"""The `iounet` console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import iounet
from iounet.cli import main


def test_console_script_prints_version():
    script = Path(sys.executable).with_name("iounet")
    output = subprocess.run([script, "--version"], check=True, capture_output=True, text=True)
    assert output.stdout.strip() == f"iounet {iounet.__version__}"


def test_no_subcommand_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "usage: iounet" in capsys.readouterr().err


def test_bad_input_is_one_line_not_a_traceback(tmp_path, capsys):
    existing = tmp_path / "data"
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    assert main(["data", "synth", "--out", str(existing), "--train", "1", "--val", "1"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("iounet data: ") and "force" in error and "Traceback" not in error
    assert (existing / "keep.txt").read_text() == "user data"
    assert main(["train", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err
