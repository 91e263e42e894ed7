"""``deepclust.check``: every op passes against its reference on this machine, every size runs
on the path of its row, the table, and the demo's timing of the DEC loss."""
import deepclust.ops
from deepclust import check as chk


def test_every_op_passes_here(device):
    """The quick check of every op, every dtype, both paths (Triton: compiled on CUDA, the
    interpreter on the CPU) passes."""
    rows = chk.run_checks(device, quick=True)
    failed = [(r.op, r.impl, r.dtype, r.worst, r.note) for r in rows if r.status == "fail"]
    assert not failed, failed
    seen = {r.op for r in rows}
    assert seen == set(chk.OPS) == set(deepclust.ops.__all__)
    paths = {(r.op, r.impl) for r in rows}
    assert ("dec_loss", "triton") in paths and ("dec_loss", "torch") in paths
    dtypes = {r.dtype for r in rows if r.op == "dec_loss"}
    assert {"fp32", "fp16", "bf16"} <= dtypes
    assert {r.dtype for r in rows if r.op == "negative_sampling"} == {"int64", "int32"}
    for r in rows:
        if r.status == "pass":
            assert r.max_error <= r.bound and r.checks >= 1


def test_every_size_runs_on_the_path_of_its_row(device, monkeypatch):
    """A row labelled "triton" checks the Triton path at every size, not only the first."""
    seen = []
    real = deepclust.ops.hard_assign

    def recorder(*a, impl, **k):
        seen.append(impl)
        return real(*a, impl="torch", **k)

    monkeypatch.setattr(deepclust.ops, "hard_assign", recorder)
    (row,) = chk.run_checks(device, dtypes=["fp32"], impls=["triton"], ops=["hard_assign"])
    assert row.impl == "triton" and row.status == "pass"
    assert seen == ["triton"] * len(chk.OPS["hard_assign"][1])


def test_the_table_has_one_line_per_row():
    rows = [chk.CheckRow("dec_loss", "torch", "fp32", 1.5e-7, 2e-5, "pass", checks=3),
            chk.CheckRow("recon_loss", "cpp", "fp32", float("nan"), float("nan"), "skip",
                         note="not built")]
    lines = chk.format_table(rows).splitlines()
    assert lines[0].split() == ["op", "path", "dtype", "max", "error", "bound", "result"]
    assert lines[2].split() == ["dec_loss", "torch", "fp32", "1.50e-07", "2.00e-05", "PASS"]
    assert lines[3].split()[3:] == ["-", "-", "SKIP", "not", "built"]
    assert rows[1].as_dict()["max_error"] is None


def test_time_dec_loss_times_both_paths():
    t = chk.time_dec_loss("cpu", n=257, d=5, k=7, rep=2)
    assert t["op"] == "dec_loss" and (t["N"], t["d"], t["K"]) == (257, 5, 7)
    assert t["fused_ms"] > 0 and t["reference_ms"] > 0
    assert t["line"].startswith("dec_loss fwd+bwd, N=257 d=5 K=7 fp32 on cpu: fused ")
