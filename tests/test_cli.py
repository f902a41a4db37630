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
