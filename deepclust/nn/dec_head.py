"""DEC's clustering layer as a module: learnable centres, Student's t soft assignment, cached
target distribution and the ``KL(P || Q)`` loss, all through :mod:`deepclust.ops`."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .._common import check_int, check_positive, check_tensor

__all__ = ["DECClusterHead"]


class DECClusterHead(nn.Module):
    r"""Clustering layer of "Unsupervised Deep Embedding for Clustering Analysis"
    (Xie et al., ICML 2016), with the API of PyAGC's ``DECClusterHead``.

    The soft assignment of sample :math:`i` to cluster :math:`j` is Student's t kernel

    .. math::
        q_{ij} = \frac{(1 + \|z_i - \mu_j\|^2/\alpha)^{-(\alpha+1)/2}}
                      {\sum_{j'} (1 + \|z_i - \mu_{j'}\|^2/\alpha)^{-(\alpha+1)/2}},

    the target :math:`p_{ij} \propto q_{ij}^2 / \sum_i q_{ij}` (rows normalised, held
    constant) and the loss :math:`\mathrm{KL}(P\|Q)` averaged over the batch. The math runs in
    :func:`deepclust.ops.dec_loss`, :func:`~deepclust.ops.soft_assign`,
    :func:`~deepclust.ops.target_distribution` and :func:`~deepclust.ops.hard_assign`.

    Target caching. Without ``index`` the layer behaves like PyAGC: the target is recomputed
    when ``update_target`` is true, when no target is cached, or when the row count differs
    from the cached one, and reused otherwise. With ``index`` (the sample ids of the rows) the
    cached target is kept per sample, so shuffled mini-batches reuse the rows that belong to
    their own samples (PyAGC would reuse the previous batch's rows whenever the batch size
    matches). :meth:`update_target` refreshes the per-sample target from the whole data set, as
    the DEC paper does. The caches are non-persistent buffers: they follow ``.to()`` but are not
    part of ``state_dict`` (which holds ``cluster_centers`` only, as in PyAGC).

    Args:
        n_clusters: number of clusters ``K``.
        n_features: embedding dimension ``d``.
        alpha: degrees of freedom of the Student's t kernel (default 1).
        impl: op path, ``"auto"``, ``"triton"`` or ``"torch"`` (default ``"auto"``).

    Attributes:
        cluster_centers: learnable centres, ``(K, d)``, Xavier-uniform initialised.

    Example:
        >>> head = DECClusterHead(10, 32)
        >>> head.reset_cluster_centers(kmeans(z, 10).centers)
        >>> loss = head(z_batch, update_target=False, index=batch_ids)
    """

    def __init__(self, n_clusters: int, n_features: int, alpha: float = 1.0, *, impl: str = "auto"):
        super().__init__()
        self.n_clusters = check_int(n_clusters, "n_clusters", minimum=1)
        self.n_features = check_int(n_features, "n_features", minimum=1)
        self.alpha = check_positive(alpha, "alpha")
        self.impl = impl
        self.cluster_centers = nn.Parameter(torch.empty(self.n_clusters, self.n_features))
        self.reset_cluster_centers()
        # Batch-keyed cache (PyAGC's behaviour) and per-sample cache with its validity mask.
        self.register_buffer("_cached_target", None, persistent=False)
        self.register_buffer("_target_bank", torch.empty(0, self.n_clusters), persistent=False)
        self.register_buffer("_target_valid", torch.empty(0, dtype=torch.bool), persistent=False)

    def extra_repr(self) -> str:
        return f"n_clusters={self.n_clusters}, n_features={self.n_features}, alpha={self.alpha}, impl={self.impl!r}"

    # ------------------------------------------------------------------ centres
    def reset_cluster_centers(self, cluster_centers: Optional[Tensor] = None) -> None:
        """Set the cluster centres.

        Args:
            cluster_centers: ``(n_clusters, n_features)`` tensor to copy in, or ``None`` for a
                Xavier-uniform initialisation.

        Raises:
            ValueError: ``cluster_centers`` has the wrong shape.
        """
        if cluster_centers is None:
            nn.init.xavier_uniform_(self.cluster_centers)
            return
        check_tensor(cluster_centers, "cluster_centers", ndim=None)
        if tuple(cluster_centers.shape) != (self.n_clusters, self.n_features):
            raise ValueError(
                f"cluster_centers must have shape ({self.n_clusters}, {self.n_features}), "
                f"got {tuple(cluster_centers.shape)}"
            )
        with torch.no_grad():
            self.cluster_centers.copy_(cluster_centers)

    # ------------------------------------------------------------------ targets
    @torch.no_grad()
    def _batch_target(self, z: Tensor) -> Tensor:
        from ..ops import soft_assign, target_distribution

        q = soft_assign(z.detach(), self.cluster_centers.detach(), self.alpha, impl=self.impl)
        return target_distribution(q, impl=self.impl)

    def _check_index(self, index: Tensor, n: int) -> Tensor:
        check_tensor(index, "index", ndim=1, dtypes=(torch.int64, torch.int32))
        if index.shape[0] != n:
            raise ValueError(f"index must have one id per row of z ({n}), got {index.shape[0]}")
        if index.device != self.cluster_centers.device:
            index = index.to(self.cluster_centers.device)
        if bool((index < 0).any()):
            raise ValueError("index must hold non-negative sample ids")
        return index.long()

    def _grow(self, size: int) -> None:
        old = self._target_bank.shape[0]
        if size <= old:
            return
        new = max(size, 2 * old)
        dev = self.cluster_centers.device
        bank = torch.zeros(new, self.n_clusters, dtype=torch.float32, device=dev)
        valid = torch.zeros(new, dtype=torch.bool, device=dev)
        bank[:old] = self._target_bank
        valid[:old] = self._target_valid
        self._target_bank, self._target_valid = bank, valid

    @torch.no_grad()
    def _store(self, index: Tensor, p: Tensor) -> None:
        self._grow(int(index.max()) + 1)
        self._target_bank[index] = p.to(self._target_bank.dtype)
        self._target_valid[index] = True

    @torch.no_grad()
    def update_target(self, z_all: Tensor, index: Optional[Tensor] = None) -> Tensor:
        """Recompute the target ``P`` from many rows at once (the whole data set in DEC) and
        cache it.

        The frequencies ``f_j = sum_i q_ij`` run over all rows of ``z_all``. The rows are stored
        under their sample ids (``index``, default ``0..N-1``), to be gathered by
        ``forward(z, update_target=False, index=ids)``; without ``index`` the result is also the
        batch-keyed cache used by ``forward`` without ``index``.

        Args:
            z_all: embeddings, ``(N, d)``.
            index: sample ids of the rows, ``int64`` ``(N,)``, or ``None`` for ``0..N-1``.

        Returns:
            The new target ``P``, ``(N, K)``, detached.
        """
        check_tensor(z_all, "z_all", ndim=2)
        p = self._batch_target(z_all)
        if index is None:
            self._cached_target = p
            self._target_bank = p.to(torch.float32).clone()
            self._target_valid = torch.ones(p.shape[0], dtype=torch.bool, device=p.device)
        else:
            self._store(self._check_index(index, z_all.shape[0]), p)
        return p

    def clear_target(self) -> None:
        """Forget every cached target."""
        self._cached_target = None
        self._target_bank = self._target_bank.new_empty(0, self.n_clusters)
        self._target_valid = self._target_valid.new_empty(0)

    # ------------------------------------------------------------------ loss
    def forward(self, z: Tensor, update_target: bool = True, index: Optional[Tensor] = None) -> Tensor:
        """DEC loss ``KL(P || Q)`` (batch mean) of the embeddings ``z``.

        Args:
            z: embeddings, ``(N, d)``.
            update_target: recompute ``P`` from this batch (and cache it) when true; reuse the
                cached one when false (default true).
            index: optional sample ids of the rows, ``int64`` ``(N,)``. With ids the cache is
                per sample: ``update_target=True`` stores this batch's ``P`` under the ids,
                ``update_target=False`` gathers the cached rows of these ids (rows never cached
                are computed from this batch). Without ids the cache is PyAGC's single matrix,
                recomputed when the row count changes.

        Returns:
            A scalar loss, differentiable in ``z`` and ``cluster_centers``.
        """
        from ..ops import dec_loss

        check_tensor(z, "z", ndim=2)
        if index is None:
            cached = self._cached_target
            if update_target or cached is None or cached.shape[0] != z.shape[0]:
                p = self._batch_target(z)
                self._cached_target = p
            else:
                p = cached
        else:
            index = self._check_index(index, z.shape[0])
            if update_target:
                p = self._batch_target(z)
                self._store(index, p)
            else:
                self._grow(int(index.max()) + 1)
                valid = self._target_valid[index]
                p = self._target_bank[index]
                if not bool(valid.all()):
                    p = torch.where(valid[:, None], p, self._batch_target(z).to(p.dtype))
        return dec_loss(z, self.cluster_centers, self.alpha, target=p, impl=self.impl)

    # ------------------------------------------------------------------ assignments
    @torch.no_grad()
    def cluster(self, z: Tensor, soft: bool = False) -> Tensor:
        """Cluster assignments of ``z``.

        Args:
            z: embeddings, ``(N, d)``.
            soft: return the soft assignment ``Q`` (``(N, K)``) instead of hard labels.

        Returns:
            ``int64`` labels ``(N,)`` (argmin of the squared distance), or ``Q`` ``(N, K)``.
        """
        from ..ops import hard_assign, soft_assign

        if soft:
            return soft_assign(z, self.cluster_centers, self.alpha, impl=self.impl)
        return hard_assign(z, self.cluster_centers, impl=self.impl)

    def predict(self, z: Tensor, soft: bool = False) -> Tensor:
        """Alias of :meth:`cluster`."""
        return self.cluster(z, soft=soft)
