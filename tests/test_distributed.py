"""Data-parallel ``deepclust fit``: two gloo processes match one process on the same global
batch (DEC, SwAV, TCL, PCL), the pieces behind it, and the one-line errors of ``--nproc``."""
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
    (["daegc", "--nproc", "2"], "method 'daegc' trains in one process: it trains on the whole graph"),
    (["kmeans", "--nproc", "2"], "method 'kmeans' trains in one process"),
], ids=["zero", "too-many", "daegc", "kmeans"])
def test_bad_nproc_is_one_line(args, msg, capsys):
    if "2" in args and (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPU cores")
    data = "sbm" if args[0] == "daegc" else "blobs"
    rc, _, err = _run(["fit", args[0], "--data", data, "--no-progress"] + args[1:], capsys)
    assert rc == 2 and err.startswith("deepclust: error:") and msg in err, err
    assert len(err.strip().splitlines()) == 1


def test_nproc_under_torchrun_is_refused(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    rc, _, err = _run(["fit", "dec", "--data", "blobs", "--nproc", "2"], capsys)
    assert rc == 2 and "under torchrun leave it out" in err
    rc, _, err = _run(["fit", "daegc", "--data", "sbm"], capsys)
    assert rc == 2 and "method 'daegc' trains in one process: it trains on the whole graph" in err


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


# ----------------------------------------------------------------------------- TCL and PCL
# One step of each model on a global batch: in 2 gloo ranks on shards (batch norm over the
# group, gradients summed) against one process on the whole batch; then each method's cli_fit
# for one step (a data set as big as one batch) in both settings.
def _digits(n):
    from deepclust.data import Dataset, load_digits

    d = load_digits()
    return Dataset(d.x[:n], d.y[:n], "digits", image_shape=(1, 8, 8))


def _tcl_model():
    from deepclust.models._images import SmallCNN
    from deepclust.models.tcl import TCL

    torch.manual_seed(0)
    return TCL(SmallCNN(1, 8, 8, feat_dim=16), 16, 4, instance_dim=8, impl="torch")


def _tcl_views():
    from deepclust.data.augment import strong_augment, weak_augment

    g = torch.Generator().manual_seed(2)
    xb = _digits(12).x.reshape(-1, 1, 8, 8)
    return [weak_augment(xb, g), strong_augment(xb, g)]


def _tcl_ranks(rank, world, views):
    from deepclust.models.base import FitConfig
    from deepclust.models.tcl import cli_fit

    model = D.convert_batchnorm(_tcl_model())
    sl = D.shard(views[0].shape[0], rank, world)
    out = model.loss([v[sl] for v in views])
    (out.total / world).backward()  # the ops give each rank world x its part of the gradient
    D.all_reduce_gradients(model.parameters())
    bn = model.backbone.net[1]
    return {"loss": float(out.total.detach()), "parts": out.components, "bn": type(bn).__name__,
            "grads": [p.grad.clone() for p in model.parameters()], "running": bn.running_var.clone(),
            "fit": cli_fit(_digits(64), FitConfig(seed=0, epochs=1, impl="torch", progress=False))}


def _agree(a, b):
    return float((a == b).mean())


@pytest.mark.distributed
def test_tcl_two_gloo_processes_match_one():
    from deepclust.models.base import FitConfig
    from deepclust.models.tcl import cli_fit

    torch.set_num_threads(1)
    views = _tcl_views()
    model = _tcl_model()
    want = model.loss(views)
    want.total.backward()
    fit_one = cli_fit(_digits(64), FitConfig(seed=0, epochs=1, impl="torch", progress=False))
    ranks = run_distributed(_tcl_ranks, views, world_size=2)
    for res in ranks:
        assert res["bn"] == "GroupBatchNorm"
        assert res["loss"] == pytest.approx(float(want.total.detach()), rel=1e-6)
        for key in ("instance", "cluster"):
            assert res["parts"][key] == pytest.approx(want.components[key], rel=1e-6)
        for g, w in zip(res["grads"], [p.grad for p in model.parameters()]):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res["running"], model.backbone.net[1].running_var, rtol=1e-5, atol=1e-6)
        # cli_fit: one step of batch 64 (the loss is taken before the step: same parameters)
        assert res["fit"]["loss"] == pytest.approx(fit_one["loss"], rel=1e-6)
        assert _agree(res["fit"]["pred"], fit_one["pred"]) >= 0.9
    assert (ranks[0]["fit"]["pred"] == ranks[1]["fit"]["pred"]).all()  # the ranks agree


def _blobs():
    g = torch.Generator().manual_seed(0)
    centers = 4 * torch.randn(4, 12, generator=g)
    return centers[torch.arange(60) % 4] + torch.randn(60, 12, generator=g)


def _pcl_model():
    from deepclust.models.pcl import PCL

    torch.manual_seed(0)
    enc = nn.Sequential(nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 16))
    # 20 prototypes and 5 negatives: the negatives are sampled (the generator must stay in step)
    return PCL(enc, dim=16, r=32, m=0.9, T=0.2, r_proto=5, impl="torch",
               generator=torch.Generator().manual_seed(3))


def _pcl_steps(model, x, clusters, sl=slice(None)):
    """Two steps (batches of 10 rows; the second one's InfoNCE sees the first one's keys in the
    queue): the loss, its parts and the gradients of each, then the queue and key encoder."""
    out = {"steps": []}
    for idx in (torch.arange(0, 20, 2), torch.arange(25, 35)):
        idx = idx[sl]
        for p in model.parameters():
            p.grad = None
        res = model(x[idx], x[idx] + 0.1, index=idx, cluster_result=clusters)
        res.total.backward()
        D.all_reduce_gradients(model.encoder_q.parameters())
        out["steps"].append({"loss": float(res.total.detach()), "parts": res.components,
                             "grads": [p.grad.clone() for p in model.encoder_q.parameters()]})
    out.update(queue=model.queue.clone(), ptr=int(model.queue_ptr),
               key=[t.clone() for t in model.encoder_k.state_dict().values()])
    return out


def _pcl_ranks(rank, world, x, clusters):
    from deepclust.data import make_blobs
    from deepclust.models.base import FitConfig
    from deepclust.models.pcl import cli_fit

    model = D.convert_batchnorm(_pcl_model()).double()
    out = _pcl_steps(model, x, clusters, D.shard(10, rank, world))
    out["bn"] = type(model.encoder_k[1]).__name__
    out["fit"] = cli_fit(make_blobs(64, 8, 3, seed=1), FitConfig(seed=0, epochs=1, impl="torch",
                                                                  progress=False))
    return out


@pytest.mark.distributed
def test_pcl_two_gloo_processes_match_one():
    from deepclust.data import make_blobs
    from deepclust.models.base import FitConfig
    from deepclust.models.pcl import cli_fit

    torch.set_num_threads(1)
    # the steps in float64: in float32 the gradient of the layer before batch norm (nearly
    # cancelled by it) differs at rounding level, ~2e-6 of its largest entry
    x = _blobs().double()
    model = _pcl_model().double()
    model.eval()
    clusters = model.compute_clusters(model.embed(x), [4, 20], backend="sklearn")
    model.train()
    want = _pcl_steps(model, x, clusters)
    # one step of batch 64 after a clustering (epoch 0 has no warm-up with epochs=1)
    fit_one = cli_fit(make_blobs(64, 8, 3, seed=1), FitConfig(seed=0, epochs=1, impl="torch",
                                                               progress=False))
    ranks = run_distributed(_pcl_ranks, x, clusters, world_size=2)
    for res in ranks:
        assert res["bn"] == "GroupBatchNorm"
        for got, exp in zip(res["steps"], want["steps"]):
            assert got["loss"] == pytest.approx(exp["loss"], rel=1e-12)
            assert set(got["parts"]) == {"info_nce", "proto_nce"}
            for key in got["parts"]:
                assert got["parts"][key] == pytest.approx(exp["parts"][key], rel=1e-12)
            for g, w in zip(got["grads"], exp["grads"]):
                torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
        assert res["ptr"] == want["ptr"]
        torch.testing.assert_close(res["queue"], want["queue"], rtol=1e-10, atol=1e-12)
        for a, b in zip(res["key"], want["key"]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        for key in ("info_nce", "proto_nce"):
            assert res["fit"][key] == pytest.approx(fit_one[key], rel=1e-6)
        assert _agree(res["fit"]["pred"], fit_one["pred"]) >= 0.9
    assert torch.equal(ranks[0]["queue"], ranks[1]["queue"])  # one queue on every rank
    assert (ranks[0]["fit"]["pred"] == ranks[1]["fit"]["pred"]).all()
