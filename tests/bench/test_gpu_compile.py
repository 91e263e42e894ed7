"""bench.gpu_compile without a GPU and without compiling: the argument specialisation, the launch
record, the occupancy, the gate's failure rule, the CSV, and the recorder on one real launcher
(in a subprocess: the tests run with TRITON_INTERPRET=1, where ``triton.jit`` gives
InterpretedFunction and the recorder, which patches ``JITFunction.run``, would see nothing)."""
import csv
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

from bench import gpu_compile as gc
from bench import nvcc_gate

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- _arg_spec
@pytest.mark.parametrize("dtype, name", [
    (torch.float32, "*fp32"), (torch.float16, "*fp16"), (torch.bfloat16, "*bf16"),
    (torch.float64, "*fp64"), (torch.int64, "*i64"), (torch.int32, "*i32"),
    (torch.int8, "*i8"), (torch.uint8, "*u8"), (torch.bool, "*i1"),
])
def test_arg_spec_tensor(dtype, name):
    t = torch.zeros(64, dtype=dtype)
    assert t.data_ptr() % 16 == 0  # fresh allocations are aligned
    assert gc._arg_spec(t, True) == (name, None, True)


def test_arg_spec_tensor_misaligned():
    t = torch.zeros(64)[1:]  # 4 bytes past an aligned pointer
    assert gc._arg_spec(t, True) == ("*fp32", None, False)


@pytest.mark.parametrize("value, specialize, expected", [
    (None, True, ("constexpr", None, False)),
    (1, True, ("constexpr", 1, False)),
    (1, False, ("i32", None, False)),
    (0, True, ("i32", None, True)),
    (32, True, ("i32", None, True)),
    (32, False, ("i32", None, False)),
    (33, True, ("i32", None, False)),
    (-16, True, ("i32", None, True)),
    (2 ** 31 - 1, True, ("i32", None, False)),
    (-(2 ** 31), True, ("i32", None, True)),
    (2 ** 31, True, ("i64", None, True)),
    (2 ** 31 + 1, True, ("i64", None, False)),
    (-(2 ** 31) - 1, True, ("i64", None, False)),
    (2 ** 40, False, ("i64", None, False)),
    (0.5, True, ("fp32", None, False)),
    (1.0, True, ("fp32", None, False)),
    (True, True, ("i1", None, False)),
    (False, True, ("i1", None, False)),
])
def test_arg_spec_scalars(value, specialize, expected):
    assert gc._arg_spec(value, specialize) == expected


def test_arg_spec_unsupported():
    with pytest.raises(TypeError, match="str"):
        gc._arg_spec("x", True)


# ----------------------------------------------------------------------------- _record_launch
def _kernel_source(x_ptr, out_ptr, n, stride, scale, BLOCK, HAS_BIAS=False):
    pass


def _param(name, constexpr=False, default=None, no_spec=False):
    return types.SimpleNamespace(name=name, is_constexpr=constexpr, default=default,
                                 do_not_specialize=no_spec)


FAKE_FN = types.SimpleNamespace(
    fn=_kernel_source, __name__="_kernel_source",
    params=[_param("x_ptr"), _param("out_ptr"), _param("n"), _param("stride", no_spec=True),
            _param("scale"), _param("BLOCK", constexpr=True),
            _param("HAS_BIAS", constexpr=True, default=False)])


def test_record_launch():
    store = {}
    x, out = torch.zeros(8), torch.zeros(8, dtype=torch.float16)
    gc._record_launch(store, FAKE_FN, (x, out, 64, 1, 0.5), dict(BLOCK=128, num_warps=8),
                      ("bench", "case a"))
    (rec,) = store.values()
    assert rec["module"] == __name__ and rec["name"] == "_kernel_source"
    assert rec["signature"] == {"x_ptr": "*fp32", "out_ptr": "*fp16", "n": "i32", "stride": "i32",
                                "scale": "fp32", "BLOCK": "constexpr", "HAS_BIAS": "constexpr"}
    assert rec["constexprs"] == {"BLOCK": 128, "HAS_BIAS": False}
    assert rec["options"] == {"num_warps": 8, "num_stages": 3}  # num_stages defaulted
    assert rec["divisible"] == [0, 1, 2]  # stride is not specialised
    assert rec["used_by"] == {"bench"} and rec["cases"] == {"case a"}


def test_record_launch_dedupes_and_caps_cases():
    store = {}
    x = torch.zeros(8)
    for i in range(5):
        gc._record_launch(store, FAKE_FN, (x, x, 7, 3), dict(scale=2.0, BLOCK=64, HAS_BIAS=True),
                          ("test", f"case {i}"))
    (rec,) = store.values()
    assert rec["signature"]["n"] == "i32" and rec["divisible"] == [0, 1]
    assert rec["constexprs"] == {"BLOCK": 64, "HAS_BIAS": True}
    assert rec["options"] == {"num_warps": 4, "num_stages": 3}
    assert rec["used_by"] == {"test"}
    assert len(rec["cases"]) == 3
    # the same choice launched by a benchmark is compiled apart, with the benchmark's alignment
    gc._record_launch(store, FAKE_FN, (x, x, 16, 3), dict(scale=2.0, BLOCK=64, HAS_BIAS=True),
                      ("bench", "bench case"))
    assert len(store) == 2
    bench = next(r for r in store.values() if r["used_by"] == {"bench"})
    assert bench["divisible"] == [0, 1, 2]
    # n == 1 is specialised: a distinct compile
    gc._record_launch(store, FAKE_FN, (x, x, 1, 1, 2.0), dict(BLOCK=64), ("test", "one"))
    assert len(store) == 3
    new = [r for r in store.values() if "n" in r["constexprs"]][0]
    assert new["signature"]["n"] == "constexpr" and new["constexprs"]["n"] == 1
    assert new["signature"]["stride"] == "i32"  # do_not_specialize: 1 stays an i32


# ----------------------------------------------------------------------------- _occupancy
@pytest.mark.parametrize("regs, warps, shared, arch, expected", [
    (255, 4, 0, 90, 8),         # 8192 regs/warp: 2 blocks of 4 warps
    (32, 4, 0, 90, 64),         # 1024 regs/warp: 16 blocks of 4 -> the 64-warp limit
    (64, 8, 0, 90, 32),         # 2048 * 8 = 16384 regs per block: 4 blocks
    (0, 1, 0, 90, 32),          # the 32-block limit
    (32, 4, 100000, 90, 8),     # 233472 // (100000 + 1024) = 2 blocks
    (32, 4, 100000, 80, 4),     # 167936 // 101024 = 1 block
    (32, 4, 240000, 90, 0),     # more shared memory than the SM has
    (128, 32, 0, 90, 0),        # 4096 * 32 warps > 65536 registers
])
def test_occupancy(regs, warps, shared, arch, expected):
    assert gc._occupancy(regs, warps, shared, arch) == expected


@pytest.mark.parametrize("regs, warps", [(192, 1), (192, 2), (80, 1)])
def test_occupancy_agrees_with_nvcc_gate(regs, warps):
    assert gc._occupancy(regs, warps, 0, 90) == \
        nvcc_gate.occupancy_warps_per_sm(90, regs, 0, warps * 32)


# ----------------------------------------------------------------------------- gate rule
def _row(**kw):
    row = {c: "" for c in gc.COLUMNS}
    row.update(kw)
    return row


def test_failures():
    rows = [
        _row(kernel="a", status="ok", used_by="bench+test"),
        _row(kernel="b", status="error", used_by="test"),
        _row(kernel="c", status="smem", used_by="test"),
        _row(kernel="d", status="spill", used_by="test"),
        _row(kernel="e", status="spill", used_by="bench"),
        _row(kernel="f", status="spill", used_by="bench+test"),
        _row(kernel="g", status="skipped", used_by="bench"),
        _row(kernel="h", status="weird", used_by="test"),
        _row(kernel="i", status="spill", used_by="benchmark"),  # not the 'bench' tag
    ]
    assert [r["kernel"] for r in gc.failures(rows)] == ["b", "c", "e", "f", "h"]
    assert gc.failures([]) == []


def test_config_text():
    cfg = {"signature": {"x": "*fp32", "y": "*bf16", "z": "*fp32", "n": "i32", "B": "constexpr",
                         "opt": "constexpr"},
           "constexprs": {"B": 64, "opt": None, "PREC": "tf32"},
           "options": {"num_warps": 4, "num_stages": 2}}
    assert gc._config_text(cfg) == "B=64,PREC=tf32;warps=4;stages=2;ptrs=*bf16/*fp32"


def test_compile_one_reports_errors_as_rows():
    cfg = {"module": "deepclust._no_such_module_", "name": "_k", "signature": {"x": "*fp32"},
           "constexprs": {"B": 16}, "options": {"num_warps": 2, "num_stages": 3},
           "divisible": [0], "used_by": ["bench", "test"]}
    row = gc._compile_one((cfg, 90))
    assert set(row) == set(gc.COLUMNS)
    assert row["status"] == "error" and "ModuleNotFoundError" in row["error"]
    assert row["arch"] == "sm_90" and row["used_by"] == "bench+test" and row["warps"] == 2
    assert row["config"] == "B=16;warps=2;stages=3;ptrs=*fp32"
    assert gc.failures([row]) == [row]


# ----------------------------------------------------------------------------- CSV, summary
def test_write_csv(tmp_path):
    rows = [
        _row(kernel="k2", config="B=64", arch="sm_90", compiler="triton 3.6.0", registers=40,
             status="ok", used_by="bench"),
        _row(kernel="k1", config="B=32", arch="sm_80", compiler="triton 3.6.0", status="spill",
             used_by="test", extra="ignored"),
        dict(nvcc_gate._row(kernel="kernels/x.cu", config="", arch="sm_90", compiler="",
                            status="skipped", error="nvcc not found"), used_by="bench"),
    ]
    path = tmp_path / "sub" / "compile.csv"
    gc.write_csv(rows, path)
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        body = list(reader)
    assert header == gc.COLUMNS
    assert [r[0] for r in body] == ["k1", "k2", "kernels/x.cu"]
    back = {r["kernel"]: r for r in csv.DictReader(open(path, newline=""))}
    assert back["k2"]["registers"] == "40" and back["k2"]["used_by"] == "bench"
    assert back["kernels/x.cu"]["registers"] == "" and back["kernels/x.cu"]["status"] == "skipped"


def test_summary():
    # no-triton-launch: "triton" is only data here
    rows = [
        _row(kernel="k", arch="sm_90", compiler="triton x", status="ok", used_by="test",
             registers=40),
        _row(kernel="k", arch="sm_90", compiler="triton x", status="spill", used_by="bench",
             registers=255),
        _row(kernel="k", arch="sm_90", compiler="triton x", status="error", used_by="test"),
    ]
    lines = gc._summary(rows).splitlines()
    assert lines[0].split()[:3] == ["kernel", "arch", "compiler"]
    assert lines[1].split() == ["k", "sm_90", "triton", "x", "3", "1(1)", "1", "255"]


# ----------------------------------------------------------------------------- the recorder
RECORD_CODE = r"""
import json
import torch
from triton.runtime.jit import JITFunction
import bench.gpu_compile as gc
import deepclust.ops as ops

run, randn = JITFunction.run, torch.randn
with gc._Recorder() as rec:
    rec.origin = ("bench", "hard_assign 5x3 K=2")
    labels = ops.hard_assign(torch.randn(5, 3), torch.randn(2, 3), impl="triton")
records = []
for r in rec.store.values():
    r = dict(r, used_by=sorted(r["used_by"]), cases=sorted(r["cases"]))
    records.append(r)
print("RECORDS=" + json.dumps(dict(
    records=records, restored=JITFunction.run is run and torch.randn is randn,
    labels=list(labels.shape)), default=str))
"""


def test_recorder_hard_assign():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, "-c", RECORD_CODE], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RECORDS="))
    out = json.loads(line[len("RECORDS="):])
    assert out["restored"] is True
    assert out["labels"] == [5]
    (rec,) = [r for r in out["records"] if r["name"] == "_hard_assign_kernel"]
    assert len(out["records"]) == 1
    assert rec["module"] == "deepclust.ops.dec._kernels"
    assert rec["used_by"] == ["bench"] and rec["cases"] == ["hard_assign 5x3 K=2"]
    assert {"BLOCK_N", "BLOCK_K", "BLOCK_D", "PREC"} <= set(rec["constexprs"])
    assert all(isinstance(rec["constexprs"][k], int) and rec["constexprs"][k] > 0
               for k in ("BLOCK_N", "BLOCK_K", "BLOCK_D"))
    sig = rec["signature"]
    assert (sig["z_ptr"], sig["mu_ptr"], sig["out_ptr"]) == ("*fp32", "*fp32", "*i64")
    assert sig["BLOCK_N"] == "constexpr"
    assert {0, 1, 2} <= set(rec["divisible"])
    assert set(rec["options"]) == {"num_warps", "num_stages"}
    # and what the compile step makes of it
    text = gc._config_text(rec)
    assert f"BLOCK_N={rec['constexprs']['BLOCK_N']}" in text and text.endswith("ptrs=*fp32/*i64")
