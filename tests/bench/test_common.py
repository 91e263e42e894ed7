"""The benchmark helper: rows, OOM handling, skipped providers, isolated peak memory."""
import csv
import json

import torch

from bench.common import COLUMNS, Case, append_rows, main, read_rows, time_cpu


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


def _failing_cases(args):
    def make_ok(device):
        x = torch.randn(64, 8, device=device)
        return lambda: (x @ x.T).sum()

    def make_raises(device):
        raise ValueError("bad shape in make")

    def make_call_raises(device):
        def fn():
            raise RuntimeError("kernel exploded\nsecond line")
        return fn

    yield Case("matmul", "a", "fwd", {"N": 64}, "float32", make_raises)
    yield Case("matmul", "b", "fwd", {"N": 64}, "float32", make_call_raises)
    yield Case("matmul", "c", "fwd", {"N": 64}, "float32", make_ok)


def test_failing_case_is_an_error_row_and_the_run_goes_on(tmp_path, capsys):
    out = tmp_path / "r.csv"
    rows = main("selftest", _failing_cases, ["--device", "cpu", "--out", str(out), "--in-process",
                                              "--rep", "1"])
    assert [r["provider"] for r in rows] == ["a", "b", "c"]
    got = read_rows(out)
    assert [r["status"] for r in got] == ["error", "error", "ok"]
    assert got[0]["error"] == "ValueError: bad shape in make"
    assert got[1]["error"] == "RuntimeError: kernel exploded second line"
    assert got[0]["median_ms"] == "" and got[2]["error"] == ""
    err = capsys.readouterr().err
    assert "bad shape in make" in err and "kernel exploded" in err


def test_failing_case_isolated_subprocess(tmp_path):
    """The CPU default (each case in a fresh interpreter) reports errors the same way."""
    import bench.dec as dec

    # the child process builds its own cases, so the failure comes from the arguments: a device
    # string torch rejects makes the child's make() raise
    rows = main("dec", dec.cases, ["--quick", "--device", "cpu:nonsense", "--out",
                                   str(tmp_path / "dec.csv"), "--provider", "reference",
                                   "--rep", "1", "--timeout", "120"])
    assert len(rows) == 1 and rows[0]["status"] == "error" and rows[0]["error"], rows


def test_old_csv_without_error_column_reads_and_upgrades(tmp_path):
    old_cols = [c for c in COLUMNS if c != "error"]
    path = tmp_path / "old.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old_cols)
        w.writeheader()
        w.writerow({c: "" for c in old_cols} | {"op": "dec_loss", "status": "ok", "median_ms": "1.5"})
    (r,) = read_rows(path)
    assert r["error"] == "" and r["op"] == "dec_loss" and r["median_ms"] == "1.5"
    append_rows(path, [{c: "" for c in COLUMNS} | {"op": "x", "status": "error", "error": "boom"}])
    with open(path) as f:
        assert next(csv.reader(f)) == COLUMNS
    rows = read_rows(path)
    assert [r["op"] for r in rows] == ["dec_loss", "x"]
    assert rows[0]["median_ms"] == "1.5" and rows[1]["error"] == "boom"


def test_committed_results_still_read():
    from bench.common import RESULTS

    for path in sorted(RESULTS.glob("*.csv")):
        rows = read_rows(path)
        assert rows and all(set(COLUMNS) <= set(r) for r in rows), path


def test_out_folder_and_budget(tmp_path, capsys):
    rows = main("selftest", _cases, ["--device", "cpu", "--out", str(tmp_path / "res"),
                                      "--in-process", "--rep", "1", "--max-seconds", "0"])
    assert rows == []
    assert "budget of 0 s spent: 3 case(s)" in capsys.readouterr().err
    assert main("selftest", _cases, ["--device", "cpu", "--out", str(tmp_path / "res"),
                                     "--in-process", "--deadline", "1"]) == []
    assert "budget of --deadline spent: 3 case(s)" in capsys.readouterr().err
    rows = main("selftest", _cases, ["--device", "cpu", "--out", str(tmp_path / "res"),
                                      "--in-process", "--deadline", "1", "--min-cases", "1"])
    assert [r["provider"] for r in rows] == ["reference"]
    assert "budget of --deadline spent: 2 case(s)" in capsys.readouterr().err
    rows = main("selftest", _cases, ["--device", "cpu", "--out", str(tmp_path / "res"),
                                      "--in-process", "--rep", "1", "--provider", "reference"])
    assert len(read_rows(tmp_path / "res" / "selftest.csv")) == 2 and len(rows) == 1
