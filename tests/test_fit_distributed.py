"""Data-parallel ``deepclust fit``: two gloo processes match one process on the same global
batch (DEC, SwAV), the pieces behind it, and the one-line errors of ``--nproc``."""
import os

import pytest
import torch
import torch.nn as nn

from deepclust import distributed as D
from deepclust.cli import fit, main

from .helpers import run_distributed


def _run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_shard_covers_the_batch():
    for n in (0, 1, 5, 256):
        for w in (1, 2, 3):
            parts = [D.shard(n, r, w) for r in range(w)]
            assert parts[0].start == 0 and parts[-1].stop == n
            assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
            sizes = [s.stop - s.start for s in parts]
            assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("args,msg", [
    (["dec", "--nproc", "0"], "--nproc must be >= 1"),
    (["dec", "--nproc", "100000"], "--nproc 100000 is more than the"),
    (["pcl", "--nproc", "2"], "method 'pcl' trains in one process"),
    (["kmeans", "--nproc", "2"], "method 'kmeans' trains in one process"),
], ids=["zero", "too-many", "pcl", "kmeans"])
def test_bad_nproc_is_one_line(args, msg, capsys):
    if "2" in args and (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPU cores")
    rc, _, err = _run(["fit", args[0], "--data", "blobs", "--no-progress"] + args[1:], capsys)
    assert rc == 2 and err.startswith("deepclust: error:") and msg in err, err
    assert len(err.strip().splitlines()) == 1


def test_nproc_under_torchrun_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc, _, err = _run(["fit", "dec", "--data", "blobs", "--nproc", "2"], capsys)
    assert rc == 2 and "under torchrun leave it out" in err
    rc, _, err = _run(["fit", "tcl", "--data", "digits"], capsys)
    assert rc == 2 and "method 'tcl' trains in one process" in err


# ----------------------------------------------------------------------------- 2 gloo ranks
KW = dict(seed=1, epochs=1, impl="torch", progress=False)
CASES = (("dec", "blobs"), ("swav", "digits"))


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv1d(6, 4, 1), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(12, 1))


def _x():
    return torch.randn(10, 6, 3, generator=torch.Generator().manual_seed(1))


def _ranks(rank, world):
    """In each of 2 ranks: one step of a batch-norm net on a shard, then the fits."""
    x, net = _x(), D.convert_batchnorm(_net())
    sl = D.shard(x.shape[0], rank, world)
    net(x[sl]).pow(2).sum().div(x.shape[0]).backward()
    D.all_reduce_gradients(net.parameters())
    out = {"grads": [p.grad.clone() for p in net.parameters()], "running": net[1].running_var.clone(),
           "bn": type(net[1]).__name__}
    for method, data in CASES:  # cli.fit inside an initialised group, as under torchrun
        out[method] = fit(method, data, **KW)
    return out


@pytest.fixture(scope="module")
def one_process():
    torch.set_num_threads(1)
    return {method: fit(method, data, **KW) for method, data in CASES}


def _match(one, two):
    """Each step's gradient agrees to float rounding (checked below); over a run Adam turns
    rounding-level gradients (e.g. of biases before a batch norm, zero in exact arithmetic)
    into lr-sized steps, so the final k-means labels can move a little: the loss is compared
    at 1e-4, the metrics at 0.01."""
    assert one["world_size"] == 1 and two["world_size"] == 2
    for key in ("acc", "nmi", "ari", "f1"):
        assert two[key] == pytest.approx(one[key], abs=0.01), (key, one, two)
    if "loss" in one.get("extra", {}):
        assert two["extra"]["loss"] == pytest.approx(one["extra"]["loss"], rel=1e-4)


@pytest.mark.distributed
def test_two_gloo_processes_match_one(one_process):
    x, net = _x(), _net()
    net(x).pow(2).sum().div(x.shape[0]).backward()
    ranks = run_distributed(_ranks, world_size=2)
    for res in ranks:
        # GroupBatchNorm + summed gradients on shards = batch norm on the whole batch
        assert res["bn"] == "GroupBatchNorm"
        for g, w in zip(res["grads"], [p.grad for p in net.parameters()]):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res["running"], net[1].running_var, rtol=1e-5, atol=1e-6)
    for method, _ in CASES:
        _match(one_process[method], ranks[0][method])
        assert ranks[0][method]["acc"] == ranks[1][method]["acc"]  # the ranks agree


@pytest.mark.distributed
def test_nproc_starts_the_processes(one_process, tmp_path, capsys):
    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPU cores")
    path = tmp_path / "r.json"
    rc, out, err = _run(["fit", "dec", "--data", "blobs", "--epochs", "1", "--seed", "1", "--impl",
                         "torch", "--no-progress", "--nproc", "2", "--json", str(path)], capsys)
    assert rc == 0, err
    assert out.strip().splitlines()[-1].startswith("dec on blobs: ACC")
    import json

    _match(one_process["dec"], json.loads(path.read_text()))
