"""``deepclust check``: every op passes against its reference on this machine, a broken op fails
the check (forward, backward, an exception, a sampler that breaks its contract), and bad input
is one line."""
import json

import pytest
import torch

import deepclust.ops
from deepclust import check as chk
from deepclust.cli import main
from tests.helpers import MARGIN


def _run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_margins_are_the_test_suites():
    assert chk.MARGIN == MARGIN


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


def test_without_interpreter_the_cpu_checks_torch_and_the_extension(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ok, why = chk.triton_available("cpu")
    assert not ok and "TRITON_INTERPRET=1" in why
    rows = chk.run_checks("cpu", dtypes=["fp32"], ops=["hard_assign", "recon_loss"], quick=True)
    paths = {(r.op, r.impl) for r in rows}
    assert ("hard_assign", "triton") not in paths and ("hard_assign", "torch") in paths
    from deepclust.ops import recon

    if recon.HAS_EXTENSION:
        assert ("recon_loss", "cpp") in paths
    assert all(r.status == "pass" for r in rows)


def _only(op, **kw):
    return chk.run_checks("cpu", dtypes=["fp32"], impls=["torch"], ops=[op], quick=True, **kw)


def test_a_wrong_forward_fails(monkeypatch):
    real = deepclust.ops.dec_loss
    monkeypatch.setattr(deepclust.ops, "dec_loss", lambda *a, **k: real(*a, **k) * 1.001)
    (row,) = _only("dec_loss")
    assert row.status == "fail" and row.max_error > row.bound


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return g * 1.01


def test_a_wrong_gradient_fails(monkeypatch):
    real = deepclust.ops.soft_assign
    monkeypatch.setattr(deepclust.ops, "soft_assign",
                        lambda z, mu, *a, **k: real(_ScaleGrad.apply(z), mu, *a, **k))
    (row,) = _only("soft_assign")
    assert row.status == "fail" and row.worst.startswith("grad z")


def test_an_op_that_raises_is_a_failed_row(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(deepclust.ops, "sinkhorn", boom)
    (row,) = _only("sinkhorn")
    assert row.status == "fail" and "kernel exploded" in row.note


def test_a_sampler_that_draws_edges_fails(monkeypatch):
    def edges(edge_index, num_nodes=None, num_neg_samples=None, **kw):
        reps = -(-num_neg_samples // edge_index.shape[1])
        return edge_index.long().repeat(1, reps)[:, :num_neg_samples]

    monkeypatch.setattr(deepclust.ops, "negative_sampling", edges)
    rows = chk.run_checks("cpu", impls=["torch"], ops=["negative_sampling"], quick=True)
    assert rows and all(r.status == "fail" for r in rows)
    assert any("edges drawn" in r.worst for r in rows)


def test_cli_exit_status_and_table(monkeypatch, tmp_path, capsys):
    path = tmp_path / "check.json"
    args = ["check", "--device", "cpu", "--ops", "hard_assign,target_distribution", "--impl",
            "torch", "--dtype", "fp32", "--dtype", "bf16", "--quick", "--no-progress",
            "--json", str(path)]
    rc, out, _ = _run(args, capsys)
    assert rc == 0, out
    lines = out.splitlines()
    header = next(l for l in lines if l.startswith("op "))
    for col in ("path", "dtype", "max error", "bound", "result"):
        assert col in header
    assert sum(" PASS" in l for l in lines) == 4 and "4 passed, 0 failed" in out
    res = json.loads(path.read_text())
    assert res["passed"] is True and len(res["rows"]) == 4
    assert {r["op"] for r in res["rows"]} == {"hard_assign", "target_distribution"}
    # the same check with one op broken exits 1 and names it
    real = deepclust.ops.target_distribution
    monkeypatch.setattr(deepclust.ops, "target_distribution",
                        lambda q, **k: real(q, **k).roll(1, dims=1))
    rc, out, _ = _run(args[:-2], capsys)
    assert rc == 1 and "FAIL target_distribution [torch, fp32]" in out


@pytest.mark.parametrize(
    "args,msg",
    [
        (["check", "--ops", "nope"], "unknown op 'nope'"),
        (["check", "--dtype", "fp8"], "unknown dtype 'fp8'"),
        (["check", "--impl", "cuda"], "unknown impl 'cuda'"),
        (["check", "--device", "banana"], "is not a device"),
        (["check", "--device", "meta"], "only cpu and cuda"),
        (["check", "--device", "cuda:7"], "--device 'cuda:7'"),
        (["check", "--json", "/no/such/dir/c.json"], "does not exist"),
    ],
    ids=["op", "dtype", "impl", "device-name", "device-type", "device-absent", "json-folder"],
)
def test_errors_are_one_line(args, msg, capsys):
    rc, out, err = _run(args, capsys)
    assert rc == 2 and err.startswith("deepclust: error:") and msg in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
