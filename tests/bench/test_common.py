"""The benchmark helper: rows, OOM handling, skipped providers, isolated peak memory."""
import csv
import json

import torch

from bench.common import COLUMNS, Case, main, time_cpu


def _cases(args):
    def make_ok(device):
        x = torch.randn(256, 64, device=device)
        return lambda: (x @ x.T).sum()

    def make_oom(device):
        def fn():
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64 GiB")
        return fn

    def make_missing(device):
        import deepclust_no_such_peer  # noqa: F401

    yield Case("matmul", "reference", "fwd", {"N": 256}, "float32", make_ok, bytes_moved=256 * 64 * 4)
    yield Case("matmul", "bigpeer", "fwd", {"N": 256}, "float32", make_oom)
    yield Case("matmul", "peer", "fwd", {"N": 256}, "float32", make_missing)


def test_rows_oom_and_missing_peer(tmp_path):
    out = tmp_path / "r.csv"
    rows = main("selftest", _cases, ["--device", "cpu", "--out", str(out), "--in-process", "--rep", "3"])
    assert [r["provider"] for r in rows] == ["reference", "bigpeer"]
    with open(out) as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == COLUMNS
    ok, oom = got
    assert ok["status"] == "ok" and float(ok["median_ms"]) > 0
    assert float(ok["p20_ms"]) <= float(ok["median_ms"]) <= float(ok["p80_ms"])
    assert float(ok["gbps"]) > 0 and ok["device"].startswith("cpu")
    assert json.loads(ok["sizes"]) == {"N": 256} and ok["torch"] == torch.__version__
    assert oom["status"] == "OOM" and oom["median_ms"] == ""


def test_time_cpu_percentiles():
    med, p20, p80 = time_cpu(lambda: sum(range(1000)), rep=7)
    assert 0 < p20 <= med <= p80


def test_provider_filter(tmp_path):
    out = tmp_path / "r.csv"
    rows = main("selftest", _cases, ["--device", "cpu", "--out", str(out), "--in-process",
                                      "--provider", "reference", "--rep", "2"])
    assert len(rows) == 1 and rows[0]["provider"] == "reference"
