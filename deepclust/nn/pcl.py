"""PCL's pieces (Li et al., ICLR 2021) on the fused ops: MoCo's InfoNCE, the sampling of the
negative prototypes, ProtoNCE through :func:`deepclust.ops.prototype_cross_entropy` and the
clustering step through :func:`deepclust.cluster.kmeans`.

Their eager twins, which the tests hold them to, are in :mod:`deepclust.reference.pcl`.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .._common import check_int, check_positive, check_tensor, compute_dtype
from ..cluster import kmeans
from ..ops import prototype_cross_entropy

__all__ = ["info_nce_loss", "cluster_concentration", "sample_negative_prototypes",
           "proto_nce_loss", "pcl_clustering"]


def info_nce_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    r"""MoCo's InfoNCE with the positive key ``k_i`` against the ``queue``:

    .. math::
        L = \frac1N \sum_i \operatorname{softplus}\Big(
            \operatorname{logsumexp}_j \frac{q_i\cdot u_j}{\tau} - \frac{q_i\cdot k_i}{\tau}\Big),

    which is the cross-entropy of ``[q.k, q.queue^T] / tau`` with the positive at column 0,
    without concatenating the N x (1 + r) logits. Shapes: ``q``, ``k`` (N x d), ``queue``
    (r x d); computed in fp32 (fp64 for fp64 input), returned in ``q.dtype``.
    """
    for name, t in (("q", q), ("k", k), ("queue", queue)):
        check_tensor(t, name, ndim=2)
    if k.shape != q.shape or queue.shape[1] != q.shape[1]:
        raise ValueError(f"k must be {tuple(q.shape)} and queue (r x {q.shape[1]}), "
                         f"got {tuple(k.shape)} and {tuple(queue.shape)}")
    inv_tau = 1.0 / check_positive(tau, "tau")
    cdt = compute_dtype(q)
    qc = q.to(cdt)
    pos = torch.einsum("nd,nd->n", qc, k.to(cdt)) * inv_tau
    neg = torch.logsumexp(qc @ queue.to(cdt).t() * inv_tau, dim=1)
    return F.softplus(neg - pos).mean().to(q.dtype)


def cluster_concentration(x: torch.Tensor, centroids: torch.Tensor, labels: torch.Tensor,
                          temperature: float = 0.1) -> torch.Tensor:
    r"""PCL's concentration ``phi_k = mean_{z in Z_k} |z - c_k| / log(n_k + 10)`` of every
    cluster: clusters with at most one member take the largest value, then ``phi`` is clipped
    to its 10th..90th percentile and scaled to mean ``temperature`` (all equal to it when
    every ``phi`` is 0). ``x`` (N x d), ``centroids`` (K x d), ``labels`` int (N,) in
    ``[0, K)``; returns ``phi`` (K,) in ``x.dtype``."""
    check_tensor(labels, "labels", ndim=1, dtypes=(torch.int64, torch.int32))
    if labels.shape[0] != x.shape[0] or centroids.shape[1] != x.shape[1]:
        raise ValueError(f"labels must be ({x.shape[0]},) and centroids (K x {x.shape[1]})")
    temperature = check_positive(temperature, "temperature")
    cdt, n_clusters, labels = compute_dtype(x), centroids.shape[0], labels.long()
    if labels.numel() and not 0 <= int(labels.min()) <= int(labels.max()) < n_clusters:
        raise ValueError(f"labels must lie in [0, {n_clusters})")
    dist = torch.linalg.vector_norm(x.to(cdt) - centroids.to(cdt)[labels], dim=1)
    size = torch.bincount(labels, minlength=n_clusters)
    spread = torch.bincount(labels, weights=dist, minlength=n_clusters) / size.clamp_min(1)
    phi = (spread / torch.log(size.to(cdt) + 10)).masked_fill(size <= 1, 0.0)
    phi = phi.masked_fill(size <= 1, phi.max())
    phi = phi.clamp(*torch.quantile(phi, torch.tensor([0.1, 0.9], dtype=cdt, device=x.device)))
    scale = phi.mean()
    phi = phi * (temperature / scale) if float(scale) > 0 else torch.full_like(phi, temperature)
    return phi.to(x.dtype)


def sample_negative_prototypes(pos_ids: torch.Tensor, num_prototypes: int, r: int,
                               generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Up to ``r`` prototype ids drawn without replacement from those not in ``pos_ids`` (all
    of them when fewer exist), in the order of ``torch.randperm`` on the generator's device
    (the CPU without one); int64 on ``pos_ids``' device."""
    r = check_int(r, "r", minimum=0)
    free = torch.ones(num_prototypes, dtype=torch.bool, device=pos_ids.device)
    free[pos_ids] = False
    ids = free.nonzero().squeeze(1)
    if r < ids.numel():
        where = torch.device("cpu") if generator is None else generator.device
        ids = ids[torch.randperm(ids.numel(), generator=generator, device=where)[:r].to(ids.device)]
    return ids


def proto_nce_loss(q: torch.Tensor, index: torch.Tensor, centroids_list: Sequence[torch.Tensor],
                   density_list: Sequence[torch.Tensor], labels_list: Sequence[torch.Tensor],
                   r: int = 16000, generator: Optional[torch.Generator] = None, *,
                   offset: int = 0, impl: str = "auto") -> torch.Tensor:
    """ProtoNCE averaged over the clusterings, through the fused
    :func:`deepclust.ops.prototype_cross_entropy`: for each clustering the columns are the
    prototypes of the rows of ``index`` (``pos``) and then ``r`` sampled negatives, and row
    ``i`` of ``q`` has its positive at column ``offset + i``.

    ``index`` may hold more rows than ``q``: in a data-parallel step it is the global batch and
    ``q`` this rank's rows, which start at row ``offset`` of it. Returns a scalar in
    ``q.dtype`` (the mean over ``q``'s rows)."""
    if not centroids_list or not len(centroids_list) == len(density_list) == len(labels_list):
        raise ValueError("centroids_list, density_list and labels_list must be non-empty and of one length")
    target = torch.arange(offset, offset + q.shape[0], device=q.device)
    total = 0.0
    for cent, phi, lab in zip(centroids_list, density_list, labels_list):
        pos = lab[index.long()].long()
        cols = torch.cat([pos, sample_negative_prototypes(pos, cent.shape[0], r, generator)])
        total = total + prototype_cross_entropy(q, cent[cols].to(q.dtype), target, phi[cols], impl=impl)
    return total / len(centroids_list)


def _kmeans(x: torch.Tensor, n_clusters: int, seed: int, n_init: int, max_iter: int, backend: str):
    if backend == "sklearn":
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters, n_init=n_init, max_iter=max_iter, tol=1e-4, random_state=seed)
        km.fit(x.double().cpu().numpy())
        return torch.as_tensor(km.cluster_centers_).to(x), torch.as_tensor(km.labels_).to(x.device).long()
    res = kmeans(x, n_clusters, n_init=n_init, max_iter=max_iter, tol=1e-4, seed=seed)
    return res.centers.to(x), res.labels


@torch.no_grad()
def pcl_clustering(features: torch.Tensor, num_clusters: Sequence[int], temperature: float = 0.2,
                   seed: int = 0, n_init: int = 10, max_iter: int = 300,
                   backend: str = "auto") -> Dict[str, List[torch.Tensor]]:
    """PCL's clustering step: for the ``m``-th number of clusters, k-means with seed
    ``seed + m`` (:func:`deepclust.cluster.kmeans`, or scikit-learn's with
    ``backend="sklearn"``), the concentrations :func:`cluster_concentration` and the
    L2-normalised centroids.

    Returns:
        ``{"im2cluster": [...], "centroids": [...], "density": [...]}``: int64 labels (N,),
        normalised float32 centroids (K x d) and concentrations (K,), one per clustering.
    """
    check_tensor(features, "features", ndim=2)
    if backend not in ("auto", "sklearn"):
        raise ValueError(f"backend must be 'auto' or 'sklearn', got {backend!r}")
    x = features.detach().float()
    out: Dict[str, List[torch.Tensor]] = {"im2cluster": [], "centroids": [], "density": []}
    for m, k in enumerate(num_clusters):
        if check_int(k, f"num_clusters[{m}]", minimum=1) > x.shape[0]:
            raise ValueError(f"num_clusters[{m}]={k} exceeds the number of samples {x.shape[0]}")
        centers, labels = _kmeans(x, int(k), seed + m, n_init, max_iter, backend)
        out["im2cluster"].append(labels)
        out["centroids"].append(F.normalize(centers, dim=1))
        out["density"].append(cluster_concentration(x, centers, labels, temperature))
    return out
