"""k-means on torch tensors (CPU or CUDA), or through faiss when it is installed.

The torch backend seeds with greedy k-means++ and runs Lloyd iterations whose assignment step
is :func:`deepclust.ops.hard_assign` (the fused argmin that never forms the N x K distance
matrix on the Triton path); centre sums use ``index_add_``.
"""
from __future__ import annotations

import importlib.util
import math
from typing import NamedTuple

import torch

from .._common import check_int, check_positive, check_tensor

from ..ops._plumbing import resolve_impl

__all__ = ["kmeans", "KMeansResult"]

BACKENDS = ("auto", "torch", "faiss")


class KMeansResult(NamedTuple):
    """The best k-means solution over the restarts.

    Attributes:
        centers: cluster centres, ``(K, d)``, dtype and device of the input.
        labels: index of the closest centre for every row, ``int64`` ``(N,)``.
        inertia: sum of squared distances of the rows to their centres.
    """

    centers: torch.Tensor
    labels: torch.Tensor
    inertia: float


def _has_faiss() -> bool:
    return importlib.util.find_spec("faiss") is not None


def _sq_dist_to(x: torch.Tensor, c: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
    """Squared distances of every row of ``x`` to every row of ``c`` (N x m, small m)."""
    cc = (c * c).sum(dim=1)
    return (xx[:, None] + cc[None, :] - 2.0 * x @ c.t()).clamp_min_(0.0)


def _kmeans_pp(x: torch.Tensor, xx: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; ``2 + ln k`` trials per centre as
    in scikit-learn)."""
    n = x.shape[0]
    n_trials = 2 + int(math.log(k))
    centers = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    first = torch.randint(n, (1,), generator=gen, device=x.device)
    centers[0] = x[first[0]]
    closest = _sq_dist_to(x, centers[:1], xx)[:, 0]
    for c in range(1, k):
        total = closest.sum()
        if total.item() <= 0:  # fewer distinct points than clusters: any point will do
            cand = torch.randint(n, (n_trials,), generator=gen, device=x.device)
        else:
            cand = torch.multinomial(closest / total, n_trials, replacement=True, generator=gen)
        d_cand = _sq_dist_to(x, x[cand], xx)  # N x trials
        pot = torch.minimum(closest[:, None], d_cand).sum(dim=0)
        best = int(pot.argmin())
        centers[c] = x[cand[best]]
        closest = torch.minimum(closest, d_cand[:, best])
    return centers


def _assign(x, centers, impl):
    from ..ops import hard_assign

    return hard_assign(x, centers, impl=impl)


def _point_dist(x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``||x_i - c_{l_i}||^2`` for every row."""
    return (x - centers[labels]).pow(2).sum(dim=1)


def _lloyd(x, centers, max_iter, tol_abs, impl):
    k = centers.shape[0]
    labels = None
    for _ in range(max_iter):
        new_labels = _assign(x, centers, impl)
        sums = torch.zeros_like(centers).index_add_(0, new_labels, x)
        counts = torch.bincount(new_labels, minlength=k)
        empty = counts == 0
        new_centers = sums / counts.clamp_min(1).to(x.dtype)[:, None]
        n_empty = int(empty.sum())
        if n_empty:
            # Re-seed empty clusters at the points farthest from their centres.
            far = _point_dist(x, centers, new_labels).topk(n_empty).indices
            new_centers[empty] = x[far]
        shift = (new_centers - centers).pow(2).sum()
        converged_labels = labels is not None and bool(torch.equal(new_labels, labels))
        centers, labels = new_centers, new_labels
        if converged_labels or float(shift) <= tol_abs:
            break
    labels = _assign(x, centers, impl)
    inertia = float(_point_dist(x, centers, labels).sum(dtype=torch.float64))
    return centers, labels, inertia


def _kmeans_torch(x, k, n_init, max_iter, tol, seed, impl):
    work = torch.float64 if (x.dtype == torch.float64 and resolve_impl(impl, x) == "torch") else torch.float32
    xw = x.detach().to(work).contiguous()
    xx = (xw * xw).sum(dim=1)
    tol_abs = tol * float(xw.var(dim=0, unbiased=False).mean()) if xw.shape[0] > 1 else 0.0
    gen = torch.Generator(device=xw.device)
    gen.manual_seed(int(seed))
    best = None
    for _ in range(n_init):
        init = _kmeans_pp(xw, xx, k, gen)
        res = _lloyd(xw, init, max_iter, tol_abs, impl)
        if best is None or res[2] < best[2]:
            best = res
    centers, labels, inertia = best
    return KMeansResult(centers.to(x.dtype), labels, inertia)


def _kmeans_faiss(x, k, n_init, max_iter, seed):
    import faiss
    import numpy as np

    xn = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
    n, d = xn.shape
    km = faiss.Kmeans(
        d, k, niter=max_iter, nredo=n_init, seed=int(seed), verbose=False,
        min_points_per_centroid=1, max_points_per_centroid=max(n, 1),  # train on every row
    )
    km.train(xn)
    dist, idx = km.index.search(xn, 1)
    centers = torch.from_numpy(np.array(km.centroids, dtype=np.float32)).to(x.device, x.dtype)
    labels = torch.from_numpy(idx[:, 0].astype(np.int64)).to(x.device)
    return KMeansResult(centers, labels, float(dist[:, 0].astype(np.float64).sum()))


def kmeans(
    x: torch.Tensor,
    n_clusters: int,
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    *,
    backend: str = "auto",
    impl: str = "auto",
) -> KMeansResult:
    r"""k-means clustering: minimise :math:`\sum_i \min_j \|x_i - \mu_j\|^2`.

    ``backend="torch"`` seeds each restart with greedy k-means++ (a seeded
    ``torch.Generator`` on the device of ``x``), then runs Lloyd iterations: assignment by
    :func:`deepclust.ops.hard_assign` (``impl`` selects its path), centre update by
    ``index_add_``; a cluster left empty is re-seeded at the point farthest from its centre.
    Iterations stop when the labels no longer change or the squared centre shift falls below
    ``tol`` x the mean per-feature variance of ``x`` (scikit-learn's criterion). The best of
    ``n_init`` restarts by inertia is returned. It computes in float32 (float64 on the torch
    path of float64 input).

    ``backend="faiss"`` calls ``faiss.Kmeans`` (``nredo=n_init``, ``niter=max_iter``, ``seed``,
    trained on every row; faiss ignores ``tol``) on a float32 CPU copy and returns tensors on
    the device of ``x``. ``"auto"`` takes faiss when it is installed, else torch.

    Args:
        x: data, ``(N, d)`` floating point, finite; CPU or CUDA.
        n_clusters: number of clusters ``K``, ``1 <= K <= N``.
        n_init: number of restarts (default 10).
        max_iter: maximum Lloyd iterations per restart (default 300).
        tol: relative tolerance of the centre shift (default 1e-4).
        seed: random seed (default 0); equal seeds give equal results on one device.
        backend: ``"auto"``, ``"torch"`` or ``"faiss"``.
        impl: path of the assignment op on the torch backend (``"auto"``, ``"triton"``,
            ``"torch"``).

    Returns:
        :class:`KMeansResult` ``(centers (K, d), labels (N,) int64, inertia float)``.

    Raises:
        TypeError: ``x`` is not a floating-point tensor, or an integer argument is not an int.
        ValueError: ``x`` is not 2-D, is empty or holds NaN/Inf; ``n_clusters`` is outside
            ``[1, N]``; a bad ``backend``/``impl``.
        ImportError: ``backend="faiss"`` without faiss installed.
    """
    check_tensor(x, "x", ndim=2, finite=True)
    k = check_int(n_clusters, "n_clusters", minimum=1)
    if k > x.shape[0]:
        raise ValueError(f"n_clusters ({k}) must be <= the number of samples ({x.shape[0]})")
    n_init = check_int(n_init, "n_init", minimum=1)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    if float(tol) < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    if tol:
        check_positive(tol, "tol")
    seed = check_int(seed, "seed", minimum=0)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    resolve_impl(impl, x)  # validates impl early
    if backend == "auto":
        backend = "faiss" if _has_faiss() else "torch"
    if backend == "faiss":
        if not _has_faiss():
            raise ImportError("backend='faiss' needs the faiss package (pip install faiss-cpu)")
        return _kmeans_faiss(x, k, n_init, max_iter, seed)
    with torch.no_grad():
        return _kmeans_torch(x, k, n_init, max_iter, float(tol), seed, impl)
