"""PCL model: MoCo queue, ProtoNCE through the fused op, training on blobs."""
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from deepclust.models.pcl import PCL, cli_fit
from deepclust.reference import proto_nce_loss


def _blobs(n=240, d=12, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = 4 * torch.randn(k, d, generator=g)
    y = torch.arange(n) % k
    return centers[y] + torch.randn(n, d, generator=g), y


def _model(d=12, dim=16, r=64, **kw):
    enc = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, dim))
    return PCL(enc, dim=dim, r=r, m=0.9, T=0.2, impl="torch", **kw)


def test_queue_and_momentum():
    torch.manual_seed(0)
    model = _model(r=10)
    x = torch.randn(4, 12)
    before = model.queue.clone()
    out = model(x, x)
    k = model.embed(x)
    torch.testing.assert_close(model.queue[:4], k)          # enqueued at the pointer
    torch.testing.assert_close(model.queue[4:], before[4:])
    for _ in range(3):
        model(x, x)
    assert int(model.queue_ptr) == (4 * 4) % 10               # wraps around
    assert set(out.components) == {"info_nce"} and torch.isfinite(out.total)
    assert all(not p.requires_grad for p in model.encoder_k.parameters())


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_proto_term_matches_reference(impl, device):
    torch.manual_seed(0)
    x, _ = _blobs()
    x = x.to(device)
    model = _model().to(device)
    model.impl = impl
    clusters = model.compute_clusters(model.embed(x), [4, 7], backend="sklearn")
    idx = torch.arange(0, 37, device=device)
    model.generator = torch.Generator().manual_seed(3)
    out = model(x[idx], x[idx], index=idx, cluster_result=clusters)
    q = F.normalize(model.encoder_q(x[idx]), dim=1)
    want = proto_nce_loss(q, idx, clusters["centroids"], clusters["density"], clusters["im2cluster"],
                          r=model.r_proto, generator=torch.Generator().manual_seed(3))
    assert out.components["proto_nce"] == pytest.approx(want.item(), rel=1e-5)


def test_loss_falls_and_clusters_blobs():
    torch.manual_seed(0)
    x, y = _blobs()
    model = _model()
    opt = torch.optim.Adam(model.encoder_q.parameters(), lr=3e-3)
    clusters = model.compute_clusters(model.embed(x), [4, 8], n_init=3, backend="sklearn")
    losses = []
    for step in range(20):
        idx = torch.randperm(x.shape[0])[:64]
        out = model(x[idx] + 0.3 * torch.randn(64, 12), x[idx] + 0.3 * torch.randn(64, 12),
                    index=idx, cluster_result=clusters)
        opt.zero_grad()
        out.total.backward()
        opt.step()
        losses.append(out.components["proto_nce"])
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    from sklearn.metrics import adjusted_rand_score
    lab = model.compute_clusters(model.embed(x), [4], backend="sklearn")["im2cluster"][0]
    assert adjusted_rand_score(y.numpy(), lab.numpy()) > 0.5  # chance is 0


def test_cli_fit_beats_chance():
    from deepclust.data.datasets import make_blobs
    from deepclust.models.base import FitConfig
    from sklearn.metrics import normalized_mutual_info_score

    data = make_blobs(n_samples=300, n_features=8, n_clusters=3, seed=1)
    out = cli_fit(data, FitConfig(progress=False, epochs=3))
    assert out["pred"].shape == (300,) and out["pred"].dtype == np.int64
    assert normalized_mutual_info_score(data.y.numpy(), out["pred"]) > 0.5
    assert np.isfinite(out["info_nce"])


def test_bad_inputs():
    model = _model()
    x = torch.randn(4, 12)
    clusters = model.compute_clusters(torch.randn(20, 16), [3])
    with pytest.raises(ValueError, match="index"):
        model(x, x, cluster_result=clusters)
