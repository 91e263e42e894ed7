"""``deepclust report`` finds ``bench/results`` and the README beside the package when run from
another folder; the command's behaviour on real files is tested in tests/test_report.py."""
from pathlib import Path

from deepclust.cli import _report, main

REPO = Path(__file__).resolve().parents[2]


def test_default_results_are_beside_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no bench/results here
    assert main(["report", "--check"]) in (0, 1)
    out = capsys.readouterr().out
    assert out.startswith(f"{REPO / 'README.md'}: ")
    assert Path(_report.__file__).resolve().parents[2] == REPO


def test_a_results_folder_that_is_missing_is_one_line(tmp_path, capsys):
    assert main(["report", "--results", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepclust: error:") and "is not a folder" in err
    assert len(err.strip().splitlines()) == 1
