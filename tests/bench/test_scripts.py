"""Every benchmark script builds its cases and measures them (tiny sizes, eager providers)."""
import argparse
import csv
import importlib

import pytest

from bench.common import main
from bench.run_all import SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_quick_run_writes_ok_rows(name, tmp_path):
    mod = importlib.import_module(f"bench.{name}")
    full = list(mod.cases(argparse.Namespace(quick=False, device="cuda")))
    assert full, f"bench.{name} has no GPU cases"
    providers = {c.provider for c in mod.cases(argparse.Namespace(quick=True, device="cpu"))}
    assert "reference" in providers and any(p.startswith("deepclust") for p in providers)
    ours = "deepclust-cpp" if "deepclust-cpp" in providers else "deepclust-torch"
    out = tmp_path / f"{name}.csv"
    rows = main(name, mod.cases, ["--quick", "--device", "cpu", "--out", str(out), "--in-process",
                                  "--rep", "1", "--provider", ours, "--provider", "reference"])
    assert rows and all(r["status"] == "ok" for r in rows), rows
    with open(out) as f:
        assert len(list(csv.DictReader(f))) == len(rows)
