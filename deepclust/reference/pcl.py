"""Eager references of PCL (Li et al., ICLR 2021, "Prototypical Contrastive Learning of
Unsupervised Representations"): MoCo's InfoNCE, the k-means concentration ``phi`` and ProtoNCE.

Differences from the released code, all deliberate:

* negatives prototypes are sampled with ``torch.randperm`` (optionally seeded by a
  ``torch.Generator``); the release calls ``random.sample`` on a set, which Python 3.11 rejects;
  when fewer than ``r`` other prototypes exist all of them are used (the release would fail);
* the prototype ids are ``range(K)`` with ``K = centroids.shape[0]`` (the release uses
  ``im2cluster.max() + 1``, which differs only when the last clusters are empty);
* k-means is a plain Lloyd iteration here (or scikit-learn's) instead of faiss, without
  faiss' sub-sampling to at most 1000 points per centroid.

These are the ground truth of :mod:`deepclust.nn.pcl`, which the models use.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .._common import check_int, check_positive, check_tensor

__all__ = [
    "info_nce_logits",
    "info_nce_loss",
    "cluster_concentration",
    "sample_negative_prototypes",
    "proto_nce_loss",
    "pcl_clustering",
]


def _cdt(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def info_nce_logits(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float = 0.07
) -> Tuple[torch.Tensor, torch.Tensor]:
    """MoCo logits ``[q_i . k_i, q_i . queue_j] / tau`` (N x (1 + r)) and the labels (all 0).

    Args:
        q: queries (N x d), normally L2-normalised.
        k: positive keys (N x d), normally L2-normalised (treated as given: no detach here).
        queue: negative keys (r x d), one key per row.
        tau: temperature > 0.

    Returns:
        ``(logits, labels)``: logits in fp32 (fp64 for fp64 input), labels int64 zeros (N,).
    """
    check_tensor(q, "q", ndim=2)
    check_tensor(k, "k", ndim=2)
    check_tensor(queue, "queue", ndim=2)
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape {tuple(q.shape)}, got {tuple(k.shape)}")
    if queue.shape[1] != q.shape[1]:
        raise ValueError(f"queue must be (r x {q.shape[1]}), got {tuple(queue.shape)}")
    tau = check_positive(tau, "tau")
    cdt = _cdt(q)
    qc = q.to(cdt)
    l_pos = (qc * k.to(cdt)).sum(1, keepdim=True)
    l_neg = qc @ queue.to(cdt).t()
    logits = torch.cat([l_pos, l_neg], dim=1) / tau
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return logits, labels


def info_nce_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    r"""MoCo InfoNCE: cross-entropy of ``[q.k_pos, q.queue^T] / tau`` with the positive at 0.

    .. math::
        L = -\frac1N \sum_i \log \frac{e^{q_i\cdot k_i/\tau}}
            {e^{q_i\cdot k_i/\tau} + \sum_j e^{q_i\cdot u_j/\tau}}

    Args:
        q: queries (N x d); k: positive keys (N x d); queue: negatives (r x d), one per row.
        tau: temperature (default 0.07, MoCo's; PCL uses 0.2 for its MoCo v2 setting).

    Returns:
        The scalar mean loss in ``q.dtype``.
    """
    logits, labels = info_nce_logits(q, k, queue, tau)
    return F.cross_entropy(logits, labels).to(q.dtype)


def cluster_concentration(
    x: torch.Tensor,
    centroids: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    r"""PCL's concentration estimate ``phi`` of every cluster (the per-prototype temperature).

    For cluster ``k`` with members ``Z_k`` (``n_k = |Z_k|``):

    .. math::
        \phi_k = \frac{\operatorname{mean}_{z\in Z_k} \lVert z - c_k\rVert_2}{\log(n_k + 10)}

    Clusters with at most one member (also empty ones) get the largest ``phi``; ``phi`` is then
    clipped to its 10th..90th percentile (linear interpolation, as ``numpy.percentile``) and
    scaled so that ``mean(phi) = temperature``. If every ``phi`` is 0 (all clusters singletons),
    all become ``temperature`` (the release would divide by zero).

    Args:
        x: the clustered features (N x d).
        centroids: the k-means centres (K x d), *before* any normalisation.
        labels: int64 cluster of each row of ``x`` (N,), in ``[0, K)``.
        temperature: the target mean of ``phi`` (PCL's ``T``), > 0.

    Returns:
        ``phi`` (K,) in ``x.dtype`` (computed in fp32, fp64 for fp64 input).
    """
    check_tensor(x, "x", ndim=2)
    check_tensor(centroids, "centroids", ndim=2)
    check_tensor(labels, "labels", ndim=1, dtypes=(torch.int64, torch.int32))
    temperature = check_positive(temperature, "temperature")
    if centroids.shape[1] != x.shape[1]:
        raise ValueError(f"centroids must be (K x {x.shape[1]}), got {tuple(centroids.shape)}")
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}")
    K = centroids.shape[0]
    labels = labels.long()
    if bool(((labels < 0) | (labels >= K)).any()):
        raise ValueError(f"labels must lie in [0, {K})")
    cdt = _cdt(x)
    xc, cc = x.to(cdt), centroids.to(cdt)
    dist = (xc - cc[labels]).pow(2).sum(1).sqrt()  # faiss returns squared L2; PCL takes sqrt
    count = torch.bincount(labels, minlength=K).to(cdt)
    total = torch.zeros(K, dtype=cdt, device=x.device).index_add_(0, labels, dist)
    many = count > 1
    phi = torch.where(many, total / count.clamp_min(1) / torch.log(count + 10), torch.zeros_like(total))
    phi = torch.where(many, phi, phi.max())
    lo, hi = torch.quantile(phi, torch.tensor([0.1, 0.9], dtype=cdt, device=phi.device))
    phi = phi.clamp(lo, hi)
    mean = phi.mean()
    if float(mean) > 0:
        phi = temperature * phi / mean
    else:
        phi = torch.full_like(phi, temperature)
    return phi.to(x.dtype)


def sample_negative_prototypes(
    pos_ids: torch.Tensor, num_prototypes: int, r: int, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Ids of up to ``r`` prototypes drawn uniformly without replacement from those not in
    ``pos_ids`` (int64, on ``pos_ids``' device). Sampling runs on the generator's device (CPU
    when ``generator`` is None)."""
    r = check_int(r, "r", minimum=0)
    is_pos = torch.zeros(num_prototypes, dtype=torch.bool, device=pos_ids.device)
    is_pos[pos_ids] = True
    candidates = torch.nonzero(~is_pos, as_tuple=False).flatten()
    n = candidates.numel()
    if r >= n:
        return candidates
    gdev = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(n, generator=generator, device=gdev)[:r].to(candidates.device)
    return candidates[perm]


def proto_nce_loss(
    q: torch.Tensor,
    index: torch.Tensor,
    centroids_list: Sequence[torch.Tensor],
    density_list: Sequence[torch.Tensor],
    labels_list: Sequence[torch.Tensor],
    r: int = 16000,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    r"""PCL's ProtoNCE term, averaged over the clusterings.

    For each clustering ``m`` (centroids ``C`` (K x d), L2-normalised; concentrations ``phi``
    (K,); sample-to-cluster ``labels`` over the whole data set): the positives are
    ``pos = labels[index]`` (one prototype per row of ``q``, repeats allowed), the negatives
    ``r`` prototypes sampled without replacement from the others (all of them when fewer), and

    .. math::
        L_m = \frac1N\sum_i -\log\frac{\exp(q_i\cdot c_{pos_i}/\phi_{pos_i})}
              {\sum_{j\in pos\,\cup\,neg} \exp(q_i\cdot c_j/\phi_j)}, \qquad
        L = \frac1M \sum_m L_m ,

    i.e. ``F.cross_entropy(q @ C[sel]^T / phi[sel], arange(N))`` with ``sel = cat(pos, neg)``:
    the target of row ``i`` is column ``i``.

    Args:
        q: queries (N x d), L2-normalised.
        index: int64 data-set indices of the batch (N,).
        centroids_list, density_list, labels_list: one entry per clustering.
        r: number of negative prototypes (default 16000).
        generator: optional ``torch.Generator`` for the negative sampling.

    Returns:
        The scalar loss in ``q.dtype``.
    """
    check_tensor(q, "q", ndim=2)
    check_tensor(index, "index", ndim=1, dtypes=(torch.int64, torch.int32))
    if index.shape[0] != q.shape[0]:
        raise ValueError(f"index must have shape ({q.shape[0]},), got {tuple(index.shape)}")
    if not (len(centroids_list) == len(density_list) == len(labels_list)) or not centroids_list:
        raise ValueError("centroids_list, density_list and labels_list must be non-empty and of one length")
    cdt = _cdt(q)
    total = 0.0
    for m, (cent, phi, lab) in enumerate(zip(centroids_list, density_list, labels_list)):
        check_tensor(cent, f"centroids_list[{m}]", ndim=2)
        check_tensor(phi, f"density_list[{m}]", ndim=1)
        if phi.shape[0] != cent.shape[0]:
            raise ValueError(f"density_list[{m}] must have shape ({cent.shape[0]},), got {tuple(phi.shape)}")
        pos = lab[index.long()].long()
        neg = sample_negative_prototypes(pos, cent.shape[0], r, generator)
        sel = torch.cat([pos, neg])
        target = torch.arange(q.shape[0], device=q.device)
        logits = q.to(cdt) @ cent[sel].to(cdt).t() / phi[sel].to(cdt)
        total = total + F.cross_entropy(logits, target)
    return (total / len(centroids_list)).to(q.dtype)


def _lloyd(x: torch.Tensor, n_clusters: int, seed: int, n_init: int, max_iter: int):
    """Plain k-means: ``n_init`` restarts from distinct rows drawn by a seeded generator,
    Lloyd steps until the labels stop changing; the restart of least inertia wins. A cluster
    left empty keeps its centre."""
    gen = torch.Generator().manual_seed(int(seed))
    best = None
    for _ in range(n_init):
        centers = x[torch.randperm(x.shape[0], generator=gen)[:n_clusters].to(x.device)]
        labels = None
        for _ in range(max_iter):
            new = torch.cdist(x, centers).argmin(1)
            if labels is not None and torch.equal(new, labels):
                break
            labels = new
            for c in range(n_clusters):
                if bool((labels == c).any()):
                    centers[c] = x[labels == c].mean(0)
        labels = torch.cdist(x, centers).argmin(1)
        inertia = float((x - centers[labels]).pow(2).sum())
        if best is None or inertia < best[0]:
            best = (inertia, centers, labels)
    return best[1], best[2]


def _kmeans(x: torch.Tensor, n_clusters: int, seed: int, n_init: int = 10, max_iter: int = 300,
            backend: str = "auto"):
    """k-means centres and labels: :func:`_lloyd`, or scikit-learn with ``backend="sklearn"``."""
    if backend != "sklearn":
        return _lloyd(x, n_clusters, seed, n_init, max_iter)
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters, n_init=n_init, max_iter=max_iter, tol=1e-4, random_state=seed).fit(
        x.detach().double().cpu().numpy()
    )
    return (torch.as_tensor(km.cluster_centers_).to(x), torch.as_tensor(km.labels_).long().to(x.device))


@torch.no_grad()
def pcl_clustering(
    features: torch.Tensor, num_clusters: Sequence[int], temperature: float = 0.2, seed: int = 0,
    n_init: int = 10, max_iter: int = 300, backend: str = "auto",
) -> Dict[str, List[torch.Tensor]]:
    """PCL's clustering step (``run_kmeans``): for each requested number of clusters, k-means
    (seed ``seed + m`` for the ``m``-th), the concentrations :func:`cluster_concentration`
    and the L2-normalised centroids.

    Args:
        features: momentum-encoder features of the whole data set (N x d).
        num_clusters: the numbers of clusters, e.g. ``[25000, 50000, 100000]`` in the paper.
        temperature: the mean of the concentrations (PCL's ``T``, default 0.2).
        seed: k-means seed of the first clustering.
        n_init, max_iter: k-means restarts and iterations (the release: faiss, 5 and 20).
        backend: ``"auto"`` (plain Lloyd iterations from random rows, seeded) or
            ``"sklearn"``.

    Returns:
        ``{"im2cluster": [...], "centroids": [...], "density": [...]}``: int64 labels (N,),
        normalised centroids (K x d) and concentrations (K,), float32, one per clustering.
    """
    check_tensor(features, "features", ndim=2)
    x = features.detach().float()
    out: Dict[str, List[torch.Tensor]] = {"im2cluster": [], "centroids": [], "density": []}
    for m, k in enumerate(num_clusters):
        k = check_int(k, f"num_clusters[{m}]", minimum=1)
        if k > x.shape[0]:
            raise ValueError(f"num_clusters[{m}]={k} exceeds the number of samples {x.shape[0]}")
        centers, labels = _kmeans(x, k, seed + m, n_init, max_iter, backend)
        out["density"].append(cluster_concentration(x, centers, labels, temperature))
        out["centroids"].append(F.normalize(centers, dim=1))
        out["im2cluster"].append(labels)
    return out
