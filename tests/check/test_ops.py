"""The op checks catch a broken op: a wrong forward, a wrong gradient, an exception, a sampler
that breaks its contract."""
import torch

import deepclust.ops
from deepclust import check as chk


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
