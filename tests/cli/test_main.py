"""``deepclust.cli``: one parser with the commands in order, ``python -m deepclust.cli``, and the
names the package keeps."""
import subprocess
import sys

import pytest

import deepclust.cli as cli
from deepclust.cli import main


def test_help_lists_the_commands_in_order(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "{fit,adapt,demo,check,bench,report}" in capsys.readouterr().out


def test_console_script_runs():
    p = subprocess.run([sys.executable, "-m", "deepclust.cli", "fit", "kmeans", "--data", "nope"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "unknown data set" in p.stderr


def test_the_package_keeps_its_names():
    """``deepclust.distributed`` and the tests call these through ``deepclust.cli``."""
    for name in cli.__all__:
        assert callable(getattr(cli, name)) or name in ("METHODS", "PARALLEL_METHODS")
    assert issubclass(cli.CLIError, Exception)

