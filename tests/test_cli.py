"""The command itself: `psyattr` and `python -m psyattr`, help and version."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from click.testing import CliRunner

import psyattr
from psyattr.cli import cli

COMMANDS = ("import-caffe", "pretrain", "train", "grid", "evaluate", "explain", "study", "report", "demo", "export",
            "serve", "predict", "data")


def test_help_lists_every_command_and_short_help_works():
    result = CliRunner().invoke(cli, ["-h"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert f"  {command} " in result.output
    assert CliRunner().invoke(cli, ["study", "-h"]).exit_code == 0


def test_python_dash_m_and_the_console_script_report_the_version():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    module = subprocess.run([sys.executable, "-m", "psyattr", "--version"], capture_output=True, text=True, env=env,
                            timeout=120, check=False)
    assert module.returncode == 0 and module.stdout.strip() == f"psyattr, version {psyattr.__version__}"
    script = shutil.which("psyattr", path=os.path.dirname(sys.executable))
    assert script is not None, "the psyattr console script is not installed next to this Python"
    console = subprocess.run([script, "--version"], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert console.stdout == module.stdout


def test_unknown_option_values_are_refused_by_click():
    result = CliRunner().invoke(cli, ["pretrain", "--task", "emotion", "--data", "utkface:.", "--out", "x"])
    assert result.exit_code == 2 and "'emotion' is not one of 'age', 'gender'" in result.output
