"""bench.gpu_check's pieces that need no GPU and no long run: the step runner, the pytest and
JUnit parsers, the summary writer and the CSV split."""
import json
import sys

from bench import gpu_check as gc
from bench.common import COLUMNS, append_rows, read_rows

PYTEST_TAIL = """\
..F.s.E
=========================== short test summary info ============================
SKIPPED [1] tests/ops/test_dec.py:12: needs a CUDA device
FAILED tests/ops/test_dec.py::test_dec_loss_small[bf16-triton-1.0-batch_target] - AssertionError
ERROR tests/ops/test_swav.py::test_opcheck[triton] - RuntimeError: boom
1 failed, 4 passed, 1 skipped, 308 deselected, 1 error in 12.34s
"""

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="5">
<testcase classname="tests.ops.test_dec" name="test_a[fp32]" time="0.1"/>
<testcase classname="tests.ops.test_dec" name="test_b[bf16]" time="0.1"><failure message="x">x</failure></testcase>
<testcase classname="tests.ops.test_swav" name="test_c" time="0.1"><error message="y">y</error></testcase>
<testcase classname="tests.ops.test_dec" name="test_d" time="0.0"><skipped message="z">z</skipped></testcase>
<testcase classname="tests.ops.test_dec" name="test_e" time="0.1"/>
</testsuite></testsuites>
"""


def _row(**kw):
    return {c: "" for c in COLUMNS} | kw


def test_parse_pytest_output():
    got = gc.parse_pytest_output(PYTEST_TAIL)
    assert got["counts"] == {"failed": 1, "passed": 4, "skipped": 1, "deselected": 308, "errors": 1}
    assert got["failing"] == ["tests/ops/test_dec.py::test_dec_loss_small[bf16-triton-1.0-batch_target]",
                              "tests/ops/test_swav.py::test_opcheck[triton]"]


def test_parse_junit(tmp_path):
    p = tmp_path / "junit.xml"
    p.write_text(JUNIT)
    got = gc.parse_junit(p)
    assert got["counts"] == {"passed": 2, "failed": 1, "errors": 1, "skipped": 1}
    assert got["failing"] == ["tests/ops/test_dec.py::test_b[bf16]", "tests/ops/test_swav.py::test_c"]
    merged = gc.tests_result({"output": PYTEST_TAIL}, p)
    assert merged["source"] == "junit" and merged["counts"]["deselected"] == 308


def test_run_step_output_exit_and_timeout(tmp_path):
    log = gc.Log(tmp_path / "log.txt")
    ok = gc.run_step("ok", [sys.executable, "-c", "print('hello')"], env=None, timeout=30, log=log)
    bad = gc.run_step("bad", [sys.executable, "-c", "raise SystemExit(3)"], env=None, timeout=30,
                      log=log)
    slow = gc.run_step("slow", [sys.executable, "-c", "import time; time.sleep(60)"], env=None,
                       timeout=2, log=log, grace=2)
    none = gc.run_step("none", ["true"], env=None, timeout=0, log=log)
    log.close()
    assert ok["status"] == "ok" and ok["output"] == "hello\n"
    assert bad["status"] == "failed" and bad["rc"] == 3
    assert slow["status"] == "timeout" and slow["seconds"] < 20
    assert none["status"] == "skipped"
    text = (tmp_path / "log.txt").read_text()
    assert "hello" in text and "===== slow" in text


def test_write_summary_on_a_fake_result(tmp_path):
    # no-triton-launch: "triton" is only data here
    csv_path = tmp_path / "bench.csv"
    append_rows(csv_path, [
        _row(op="dec_loss", provider="deepclust-triton", mode="full",
             sizes='{"K": 64, "N": 1048576, "d": 64}', dtype="bfloat16", median_ms="1.2345",
             peak_mb="12.0000", status="ok"),
        _row(op="dec_loss", provider="pyagc", mode="full", sizes='{"K": 64, "N": 1048576, "d": 64}',
             dtype="bfloat16", status="error", error="RuntimeError: expected Float | got BFloat16"),
    ])
    result = {
        "dry": False, "ok": False, "budget": 330, "started": "2026-01-01T00:00:00+00:00",
        "seconds": 301.5, "host": "h", "bench_csv": str(csv_path),
        "env": {"device": "NVIDIA H200", "capability": "sm_90", "gpu_memory_gb": 139.8,
                "python": "3.12.3", "torch": "2.11.0+cu130", "torch_cuda": "13.0",
                "triton": "3.6.0", "torch_geometric": "2.8.0", "nvcc": "Build cuda_13.0",
                "extension": True, "extension_cuda": True},
        "steps": [{"name": "install", "status": "ok", "seconds": 61.2, "rc": 0, "output": "x" * 50},
                  {"name": "tests", "status": "failed", "seconds": 150.0, "rc": 1,
                   "note": "passed 300, failed 1"},
                  {"name": "bench:dec", "status": "ok", "seconds": 40.0, "rc": 0,
                   "note": "2 rows; budget cut: 18 case(s) not started"}],
        "tests": gc.parse_pytest_output(PYTEST_TAIL),
        "bench_rows": read_rows(csv_path),
    }
    gc.write_summary(tmp_path, result)
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("# gpu-check FAILED")
    assert "NVIDIA H200 (sm_90, 139.8 GiB)" in md and "torch 2.11.0+cu130 (CUDA 13.0)" in md
    assert "CUDA kernels: yes" in md
    assert "| tests | failed | 150.0 | 1 | passed 300, failed 1 |" in md
    assert "passed 4, failed 1, errors 1, skipped 1, deselected 308" in md
    assert "- `tests/ops/test_swav.py::test_opcheck[triton]`" in md
    assert ("| dec_loss | deepclust-triton | full | K=64,N=1048576,d=64 | bfloat16 | 1.2345 | "
            "12.0000 | ok |") in md
    assert "| error: RuntimeError: expected Float \\| got BFloat16 |" in md
    js = json.loads((tmp_path / "summary.json").read_text())
    assert js["steps"][0] == {"name": "install", "status": "ok", "seconds": 61.2, "rc": 0}
    assert len(js["bench_rows"]) == 2 and js["env"]["device"] == "NVIDIA H200"


def test_split_csv(tmp_path):
    src = tmp_path / "bench.csv"
    append_rows(src, [_row(op="dec_loss", status="ok"), _row(op="sinkhorn_from_embeddings", status="ok"),
                      _row(op="sample+recon_loss", status="ok"), _row(op="negative_sampling", status="ok")])
    written = gc.split_csv(src, tmp_path / "gpu")
    assert sorted(p.name for p in written) == ["dec.csv", "recon.csv", "sinkhorn.csv"]
    assert len(read_rows(tmp_path / "gpu" / "recon.csv")) == 2


def test_console_summary_lists_only_rows_not_ok():
    rows = [_row(op="dec_loss", provider="deepclust-triton", sizes='{"N": 1}', dtype="float32",
                 status="ok", median_ms="1.0"),
            _row(op="dec_loss", provider="pyagc", sizes='{"N": 1}', dtype="bfloat16",
                 status="error", error="boom")]
    md = gc.render_summary({"ok": True, "steps": [], "bench_rows": rows, "bench_csv": "b.csv"},
                           rows=False)
    assert "- dec_loss pyagc  N=1 bfloat16: error boom" in md
    assert "deepclust-triton" not in md and "2 rows in `b.csv` (the table is in summary.md)." in md


def test_bench_steps_from_run_all_output():
    out = "\n".join([
        "== bench.dec", "dec rows ...", "== bench.dec done: 2 rows in 10.5 s",
        "== bench.sinkhorn", "budget of 3.0 s spent: 4 case(s) of bench.sinkhorn not started",
        "== bench.sinkhorn done: 1 rows in 3.2 s",
        "== bench.recon", "Traceback ...", "RuntimeError: CUDA error: an illegal memory access",
    ])
    rows = [_row(op="dec_loss", provider="deepclust-triton", status="ok"),
            _row(op="dec_loss", provider="reference", status="ok"),
            _row(op="sinkhorn", provider="deepclust-triton", status="ok"),
            _row(op="negative_sampling", provider="deepclust-cpp", status="error", error="x")]
    proc = {"output": out, "rc": 3, "seconds": 20.0, "timed_out": False}
    steps = gc.bench_steps(proc, ["dec", "sinkhorn", "recon", "kmeans"], rows)
    assert [s["name"] for s in steps] == ["bench:dec", "bench:sinkhorn", "bench:recon"]
    assert [s["status"] for s in steps] == ["ok", "ok", "failed"]
    assert [s["rows"] for s in steps] == [2, 1, 1]
    assert "budget cut: 4 case(s) not started" in steps[1]["note"]
    assert "process ended (exit 3)" in steps[2]["note"] and "illegal memory access" in steps[2]["note"]
    assert steps[2]["seconds"] == 6.3
    # nothing begun: no steps (the caller reports the process as broken)
    assert gc.bench_steps({"output": "ImportError", "rc": 1}, ["dec"], []) == []
