"""Every benchmark script builds its cases and measures them (tiny sizes, eager providers)."""
import argparse
import csv
import importlib
import json

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


@pytest.mark.parametrize("name", SCRIPTS)
def test_dtypes_and_headline_sizes(name):
    """CUDA lists have fp32 and bf16 rows of the float ops; the CPU and --quick lists keep
    theirs; --headline gives one or two large sizes, fp32 and bf16 on CUDA."""
    mod = importlib.import_module(f"bench.{name}")
    ns = lambda **kw: argparse.Namespace(**{"quick": False, "device": "cuda", **kw})  # noqa: E731
    float_cases = lambda cs: [c for c in cs if c.dtype != "int64"]  # noqa: E731
    full = float_cases(mod.cases(ns()))
    assert {c.dtype for c in full} == {"float32", "bfloat16"}
    head = list(mod.cases(ns(headline=True)))
    assert {c.dtype for c in float_cases(head)} == {"float32", "bfloat16"}
    head_sizes = {json.dumps(c.sizes, sort_keys=True) for c in head if c.dtype != "int64"}
    assert 1 <= len(head_sizes) <= 2 and len(head) < len(list(mod.cases(ns())))
    assert {c.provider for c in head} == {c.provider for c in mod.cases(ns())}
    if name not in ("sinkhorn", "swav_loss"):  # those two always had bf16 rows
        for kw in (dict(device="cpu"), dict(device="cpu", quick=True), dict(quick=True)):
            assert {c.dtype for c in float_cases(mod.cases(ns(**kw)))} == {"float32"}, kw


def test_headline_sizes_are_the_readme_ones():
    from bench import contrastive, dec, prototype, recon, sinkhorn, swav_loss

    def sizes(mod, **kw):
        args = argparse.Namespace(quick=False, device="cuda", headline=True, **kw)
        return {tuple(sorted(c.sizes.items())) for c in mod.cases(args)}

    assert sizes(dec) == {(("K", 64), ("N", 1 << 20), ("d", 64)), (("K", 1000), ("N", 1 << 20), ("d", 64))}
    assert sizes(contrastive) == {(("N", 16384), ("d", 128), ("m", 2))}
    assert {dict(s)["B"] for s in sizes(sinkhorn)} == {16384} and {dict(s)["K"] for s in sizes(sinkhorn)} == {3000}
    assert {(dict(s)["B"], dict(s)["K"]) for s in sizes(swav_loss)} == {(4096, 3000)}
    assert sizes(prototype) == {(("K", 3000), ("N", 65536), ("d", 128))}
    assert {(dict(s)["N"], dict(s)["E"]) for s in sizes(recon)} == {(100_000, 1_000_000)}


def test_run_all_shares_the_budget(monkeypatch):
    import bench.common
    import bench.run_all as run_all

    seen = []
    monkeypatch.setattr(bench.common, "main", lambda name, cases, argv: seen.append((name, argv)))
    assert run_all.main(["--quick", "--max-seconds", "60", "--out", "d"]) == 0
    assert [n for n, _ in seen] == list(SCRIPTS)
    first = seen[0][1]
    assert first[:3] == ["--quick", "--out", "d"] and first[3] == "--max-seconds"
    assert abs(float(first[4]) - 60 / len(SCRIPTS)) < 0.5  # 60 s shared out over the scripts
