"""PCL's production pieces (deepclust.nn.pcl) against the eager references."""
import pytest
import torch
import torch.nn.functional as F

from deepclust.nn import pcl as P
from deepclust.reference import pcl as R

DTYPES = [(torch.float32, 1e-5), (torch.float64, 1e-12)]


@pytest.mark.parametrize("dtype,tol", DTYPES, ids=["fp32", "fp64"])
def test_info_nce_matches_reference(dtype, tol):
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(13, 7, generator=g, dtype=dtype), dim=1).requires_grad_()
    k = F.normalize(torch.randn(13, 7, generator=g, dtype=dtype), dim=1).requires_grad_()
    queue = F.normalize(torch.randn(37, 7, generator=g, dtype=dtype), dim=1).requires_grad_()
    got = P.info_nce_loss(q, k, queue, tau=0.2)
    want = R.info_nce_loss(q, k, queue, tau=0.2)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    for a, b in zip(torch.autograd.grad(got, (q, k, queue)), torch.autograd.grad(want, (q, k, queue))):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_info_nce_large_logits_stay_finite():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queue = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    got = P.info_nce_loss(q, q.flip(1), queue, tau=1e-3)
    torch.testing.assert_close(got, R.info_nce_loss(q, q.flip(1), queue, tau=1e-3))
    assert torch.isfinite(got)


def _labels(n=61, k=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    centroids = torch.randn(k, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, k - 2, (n,), generator=g)
    labels[0] = k - 2  # a singleton; the last cluster stays empty
    return x, centroids, labels


@pytest.mark.parametrize("dtype,tol", DTYPES, ids=["fp32", "fp64"])
def test_concentration_matches_reference(dtype, tol):
    x, c, labels = _labels()
    got = P.cluster_concentration(x.to(dtype), c.to(dtype), labels, temperature=0.2)
    want = R.cluster_concentration(x.to(dtype), c.to(dtype), labels, temperature=0.2)
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_concentration_all_singletons_and_bad_labels():
    x = torch.randn(4, 3)
    torch.testing.assert_close(P.cluster_concentration(x, x.clone(), torch.arange(4), 0.3),
                               R.cluster_concentration(x, x.clone(), torch.arange(4), 0.3))
    with pytest.raises(ValueError, match="labels"):
        P.cluster_concentration(x, x[:2], torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="temperature"):
        P.cluster_concentration(x, x[:2], torch.tensor([0, 1, 1, 0]), temperature=0)


@pytest.mark.parametrize("r", [0, 3, 16, 100])
def test_negative_sampling_draws_the_references_ids(r):
    pos = torch.tensor([3, 3, 0, 7, 11])
    got = P.sample_negative_prototypes(pos, 20, r, torch.Generator().manual_seed(4))
    want = R.sample_negative_prototypes(pos, 20, r, torch.Generator().manual_seed(4))
    assert got.dtype == torch.int64 and torch.equal(got, want)
    assert not bool(torch.isin(got, pos).any())


def _clusters(n, d, ks, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = {"im2cluster": [], "centroids": [], "density": []}
    for k in ks:
        out["im2cluster"].append(torch.randint(0, k, (n,), generator=g).to(device))
        out["centroids"].append(F.normalize(torch.randn(k, d, generator=g), dim=1).to(device))
        out["density"].append((0.05 + 0.3 * torch.rand(k, generator=g)).to(device))
    return out


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_proto_nce_matches_reference(impl, device):
    cl = _clusters(50, 6, [12, 20], device)
    q = F.normalize(torch.randn(10, 6), dim=1).to(device).requires_grad_()
    index = torch.randperm(50)[:10].to(device)
    args = (q, index, cl["centroids"], cl["density"], cl["im2cluster"], 4)
    got = P.proto_nce_loss(*args, torch.Generator().manual_seed(5), impl=impl)
    want = R.proto_nce_loss(*args, torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    gq, = torch.autograd.grad(got, q)
    wq, = torch.autograd.grad(want, q)
    torch.testing.assert_close(gq, wq, rtol=1e-4, atol=1e-6)


def test_proto_nce_row_shards_with_offset_sum_to_the_batch():
    cl = _clusters(40, 5, [9], "cpu")
    q = F.normalize(torch.randn(11, 5, dtype=torch.float64), dim=1)
    index = torch.randperm(40)[:11]
    lists = (cl["centroids"], [d.double() for d in cl["density"]], cl["im2cluster"])
    cl_q = [c.double() for c in lists[0]]
    full = R.proto_nce_loss(q, index, cl_q, lists[1], lists[2], 3, torch.Generator().manual_seed(2))
    parts = [P.proto_nce_loss(q[a:b], index, cl_q, lists[1], lists[2], 3,
                              torch.Generator().manual_seed(2), offset=a, impl="torch") * (b - a) / 11
             for a, b in ((0, 4), (4, 11))]
    torch.testing.assert_close(parts[0] + parts[1], full)


def _blobs(seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = 5 * torch.randn(4, 6, generator=g)
    y = torch.arange(120) % 4
    return centers[y] + 0.3 * torch.randn(120, 6, generator=g), y


@pytest.mark.parametrize("backend", ["auto", "sklearn"])
def test_clustering_matches_reference_up_to_relabelling(backend):
    x, y = _blobs()
    got = P.pcl_clustering(x, [4], temperature=0.2, backend=backend)
    want = R.pcl_clustering(x, [4], temperature=0.2)
    lab, ref = got["im2cluster"][0], want["im2cluster"][0]
    assert lab.dtype == torch.int64 and lab.shape == (120,)
    # the same partition: a one-to-one map from the reference's clusters to ours
    perm = torch.tensor([int(lab[ref == c][0]) for c in range(4)])
    assert torch.equal(perm[ref], lab) and perm.unique().numel() == 4
    torch.testing.assert_close(got["centroids"][0][perm], want["centroids"][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["density"][0][perm], want["density"][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["centroids"][0].norm(dim=1), torch.ones(4))


def test_clustering_bad_inputs():
    x, _ = _blobs()
    with pytest.raises(ValueError, match="num_clusters"):
        P.pcl_clustering(x[:3], [5])
    with pytest.raises(ValueError, match="backend"):
        P.pcl_clustering(x, [2], backend="faiss-gpu")
