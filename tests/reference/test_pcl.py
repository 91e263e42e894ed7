"""PCL references: InfoNCE, concentration phi, ProtoNCE and the clustering step."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deepclust.reference import cluster_concentration, info_nce_loss, proto_nce_loss
from deepclust.reference.pcl import info_nce_logits, pcl_clustering, sample_negative_prototypes


def test_info_nce_hand_value():
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    # logits [1, 0, -1] / 0.5 = [2, 0, -2]; loss = -log(e^2 / (e^2 + 1 + e^-2))
    want = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-2)))
    assert info_nce_loss(q, k, queue, tau=0.5).item() == pytest.approx(want, rel=1e-6)


def test_info_nce_matches_seed_formula():
    q = F.normalize(torch.randn(9, 7, dtype=torch.float64), dim=1)
    k = F.normalize(torch.randn(9, 7, dtype=torch.float64), dim=1)
    queue_dr = F.normalize(torch.randn(7, 33, dtype=torch.float64), dim=0)  # the seed's (dim, r)
    # the seed, literally
    l_pos = torch.einsum("nc,nc->n", [q, k]).unsqueeze(-1)
    l_neg = torch.einsum("nc,ck->nk", [q, queue_dr.clone().detach()])
    logits = torch.cat([l_pos, l_neg], dim=1) / 0.2
    labels = torch.zeros(logits.shape[0], dtype=torch.long)
    want = F.cross_entropy(logits, labels)
    got_logits, got_labels = info_nce_logits(q, k, queue_dr.t(), 0.2)
    torch.testing.assert_close(got_logits, logits)
    assert torch.equal(got_labels, labels)
    torch.testing.assert_close(info_nce_loss(q, k, queue_dr.t(), 0.2), want)


def test_info_nce_gradcheck():
    q = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    queue = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: info_nce_loss(a, b, c, 0.3), (q, k, queue))


def _seed_density(x, centroids, im2cluster, temperature):
    """The seed's run_kmeans concentration, literally (numpy)."""
    k = centroids.shape[0]
    D = ((x - centroids[im2cluster]) ** 2).sum(1)  # faiss IndexFlatL2 returns squared L2
    Dcluster = [[] for _ in range(k)]
    for im, i in enumerate(im2cluster):
        Dcluster[i].append(D[im])
    density = np.zeros(k)
    for i, dist in enumerate(Dcluster):
        if len(dist) > 1:
            density[i] = (np.asarray(dist) ** 0.5).mean() / np.log(len(dist) + 10)
    dmax = density.max()
    for i, dist in enumerate(Dcluster):
        if len(dist) <= 1:
            density[i] = dmax
    density = density.clip(np.percentile(density, 10), np.percentile(density, 90))
    return temperature * density / density.mean()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_concentration_matches_seed(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(61, 5, generator=g, dtype=torch.float64)
    centroids = torch.randn(9, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 7, (61,), generator=g)
    labels[0] = 7  # a singleton cluster; cluster 8 stays empty
    want = _seed_density(x.numpy(), centroids.numpy(), labels.numpy(), 0.2)
    got = cluster_concentration(x.to(dtype), centroids.to(dtype), labels, temperature=0.2)
    assert got.dtype == dtype
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-5 if dtype == torch.float32 else 1e-12)
    assert got.mean().item() == pytest.approx(0.2, rel=1e-5)


def test_concentration_hand_value():
    # two clusters of two points at distance 1 and 3 from their centres:
    # phi = [1, 3] / log(12); 10th..90th percentiles clip to [1.2, 2.8] / log 12; scaled to mean 1
    x = torch.tensor([[1.0, 0], [-1.0, 0], [10.0, 3], [10.0, -3]])
    c = torch.tensor([[0.0, 0], [10.0, 0]])
    got = cluster_concentration(x, c, torch.tensor([0, 0, 1, 1]), temperature=1.0)
    torch.testing.assert_close(got, torch.tensor([1.2, 2.8]) / 2.0)


def test_concentration_all_singletons_gives_temperature():
    x = torch.randn(4, 3)
    got = cluster_concentration(x, x.clone(), torch.arange(4), temperature=0.3)
    torch.testing.assert_close(got, torch.full((4,), 0.3))


def test_sample_negatives_excludes_positives():
    pos = torch.tensor([3, 3, 0, 7])
    g = torch.Generator().manual_seed(0)
    neg = sample_negative_prototypes(pos, 20, 5, g)
    assert neg.numel() == 5 and neg.unique().numel() == 5
    assert not bool(torch.isin(neg, pos).any())
    every = sample_negative_prototypes(pos, 20, 100, g)
    assert sorted(every.tolist()) == sorted(set(range(20)) - {0, 3, 7})


def _seed_proto_nce(q, index, clusters, negs):
    """The seed's ProtoNCE, literally (with given negative ids instead of random.sample)."""
    losses = []
    for (im2cluster, prototypes, density), neg_proto_id in zip(clusters, negs):
        pos_proto_id = im2cluster[index]
        pos_prototypes = prototypes[pos_proto_id]
        neg_prototypes = prototypes[neg_proto_id]
        proto_selected = torch.cat([pos_prototypes, neg_prototypes], dim=0)
        logits_proto = torch.mm(q, proto_selected.t())
        labels_proto = torch.linspace(0, q.size(0) - 1, steps=q.size(0)).long()
        temp_proto = density[torch.cat([pos_proto_id, torch.LongTensor(neg_proto_id)], dim=0)]
        logits_proto /= temp_proto
        losses.append(F.cross_entropy(logits_proto, labels_proto))
    return sum(losses) / len(losses)


def _clusters(n, d, ks, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k in ks:
        out.append((torch.randint(0, k, (n,), generator=g),
                    F.normalize(torch.randn(k, d, generator=g, dtype=dtype), dim=1),
                    0.05 + 0.3 * torch.rand(k, generator=g, dtype=dtype)))
    return out


def test_proto_nce_matches_seed():
    clusters = _clusters(50, 6, [12, 20])
    q = F.normalize(torch.randn(10, 6, dtype=torch.float64), dim=1)
    index = torch.randperm(50)[:10]
    got = proto_nce_loss(q, index, [c[1] for c in clusters], [c[2] for c in clusters],
                         [c[0] for c in clusters], r=4, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)  # replay the same negatives
    negs = [sample_negative_prototypes(c[0][index], c[1].shape[0], 4, g).tolist() for c in clusters]
    want = _seed_proto_nce(q, index, clusters, negs)
    torch.testing.assert_close(got, want)


def test_proto_nce_hand_value():
    # one clustering, 2 prototypes e1, e2 with phi = [0.5, 1]; q = e1, index -> cluster 0
    cent = torch.eye(2)
    q = torch.tensor([[1.0, 0.0]])
    loss = proto_nce_loss(q, torch.tensor([0]), [cent], [torch.tensor([0.5, 1.0])],
                          [torch.tensor([0, 1])], r=10)
    # logits [1/0.5, 0/1] = [2, 0]
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_proto_nce_gradcheck():
    clusters = _clusters(30, 5, [7])
    q = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    idx = torch.arange(6)

    def f(q):
        return proto_nce_loss(q, idx, [clusters[0][1]], [clusters[0][2]], [clusters[0][0]], r=3,
                              generator=torch.Generator().manual_seed(0))

    assert torch.autograd.gradcheck(f, (q,))


def test_pcl_clustering_outputs():
    g = torch.Generator().manual_seed(0)
    centers = 5 * torch.randn(4, 6, generator=g)
    y = torch.arange(120) % 4
    x = centers[y] + 0.3 * torch.randn(120, 6, generator=g)
    res = pcl_clustering(x, [4, 8], temperature=0.2)
    assert set(res) == {"im2cluster", "centroids", "density"}
    for k, lab, c, phi in zip([4, 8], res["im2cluster"], res["centroids"], res["density"]):
        assert lab.shape == (120,) and lab.dtype == torch.long and int(lab.max()) < k
        torch.testing.assert_close(c.norm(dim=1), torch.ones(k))
        assert phi.shape == (k,) and phi.mean().item() == pytest.approx(0.2, rel=1e-5)
    # well separated blobs: the 4-cluster labels match the truth up to a permutation
    lab = res["im2cluster"][0]
    assert all(lab[y == c].unique().numel() == 1 for c in range(4))
    assert lab.unique().numel() == 4


def test_bad_inputs():
    q = torch.randn(4, 3)
    with pytest.raises(ValueError, match="k"):
        info_nce_loss(q, torch.randn(5, 3), torch.randn(6, 3))
    with pytest.raises(ValueError, match="tau"):
        info_nce_loss(q, q, torch.randn(6, 3), tau=0.0)
    with pytest.raises(ValueError, match="labels"):
        cluster_concentration(q, torch.randn(2, 3), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match="temperature"):
        cluster_concentration(q, torch.randn(2, 3), torch.tensor([0, 1, 1, 0]), temperature=-1)
    with pytest.raises(ValueError, match="index"):
        proto_nce_loss(q, torch.arange(3), [torch.randn(2, 3)], [torch.ones(2)], [torch.zeros(9, dtype=torch.long)])
    with pytest.raises(ValueError, match="density_list"):
        proto_nce_loss(q, torch.arange(4), [torch.randn(2, 3)], [torch.ones(3)], [torch.zeros(9, dtype=torch.long)])
    with pytest.raises(ValueError, match="num_clusters"):
        pcl_clustering(q, [5])


def test_pcl_clustering_backends_agree_and_are_seeded():
    g = torch.Generator().manual_seed(2)
    centers = 6 * torch.randn(3, 4, generator=g)
    x = centers[torch.arange(90) % 3] + 0.5 * torch.randn(90, 4, generator=g)
    lloyd = pcl_clustering(x, [3], seed=7)
    again = pcl_clustering(x, [3], seed=7)
    assert all(torch.equal(a, b) for a, b in zip(lloyd["centroids"] + lloyd["im2cluster"],
                                                   again["centroids"] + again["im2cluster"]))
    skl = pcl_clustering(x, [3], seed=7, backend="sklearn")
    a, b = lloyd["im2cluster"][0], skl["im2cluster"][0]
    perm = torch.tensor([int(b[a == c][0]) for c in range(3)])
    assert torch.equal(perm[a], b)  # one partition, up to the cluster ids
    torch.testing.assert_close(skl["density"][0][perm], lloyd["density"][0])
