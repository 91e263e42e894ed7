"""Eager reference of DEC's clustering layer (Xie et al., "Unsupervised Deep Embedding for
Clustering Analysis", ICML 2016), written as PyAGC's ``DECClusterHead`` computes it.

Faithful on purpose: ``q`` is formed with ``pow`` and normalised, the loss takes ``q.log()``, so
far-away points can underflow ``q`` to 0 and give ``-inf``/NaN exactly as the original does. The
fused twins in :mod:`deepclust.ops.dec` compute ``log q`` stably instead.

Every function computes in float32 (float64 stays float64) and casts its result back to the
dtype of ``z``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._common import (
    check_dec_loss_args, check_positive, check_tensor, check_z_centers, compute_dtype,
)

__all__ = ["soft_assign", "target_distribution", "dec_loss", "hard_assign"]


def _sq_dist(z: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """``||z_i - mu_j||^2`` as ``||z||^2 + ||mu||^2 - 2 z mu^T``, clamped at 0 (N x K)."""
    zz = (z * z).sum(dim=1, keepdim=True)
    mm = (centers * centers).sum(dim=1).unsqueeze(0)
    return (zz + mm - 2.0 * z @ centers.t()).clamp_min(0.0)


def _soft_assign(z: torch.Tensor, centers: torch.Tensor, alpha: float) -> torch.Tensor:
    dist = _sq_dist(z, centers)
    num = (1.0 + dist / alpha).pow(-(alpha + 1.0) / 2.0)
    return num / num.sum(dim=1, keepdim=True)


def _target_distribution(q: torch.Tensor) -> torch.Tensor:
    weight = q**2 / q.sum(dim=0, keepdim=True)
    return (weight / weight.sum(dim=1, keepdim=True)).detach()


def soft_assign(z: torch.Tensor, centers: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    r"""Student's t soft assignment of DEC.

    .. math::
        q_{ij} = \frac{(1 + \|z_i - \mu_j\|^2/\alpha)^{-(\alpha+1)/2}}
                      {\sum_{j'} (1 + \|z_i - \mu_{j'}\|^2/\alpha)^{-(\alpha+1)/2}}

    Args:
        z: embeddings, shape ``(N, d)``, floating point.
        centers: cluster centres ``mu``, shape ``(K, d)``, same device as ``z``.
        alpha: degrees of freedom of the Student's t kernel, ``> 0`` (default 1).

    Returns:
        ``q`` of shape ``(N, K)`` in the dtype of ``z``; rows sum to 1. Differentiable in ``z``
        and ``centers``.

    Reference: Xie, Girshick, Farhadi, "Unsupervised Deep Embedding for Clustering Analysis",
    ICML 2016, eq. (1).
    """
    check_z_centers(z, centers)
    alpha = check_positive(alpha, "alpha")
    ct = compute_dtype(z)
    return _soft_assign(z.to(ct), centers.to(ct), alpha).to(z.dtype)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    r"""DEC's auxiliary target distribution, a sharpened and frequency-normalised ``q``.

    .. math::
        f_j = \sum_i q_{ij}, \qquad
        p_{ij} = \frac{q_{ij}^2 / f_j}{\sum_{j'} q_{ij'}^2 / f_{j'}}

    Args:
        q: soft assignment, shape ``(N, K)``, floating point (rows are expected to sum to 1).

    Returns:
        ``p`` of shape ``(N, K)`` in the dtype of ``q``, detached (no gradient flows through
        the target).

    Reference: Xie et al., ICML 2016, eq. (3).
    """
    check_tensor(q, "q", ndim=2)
    ct = compute_dtype(q)
    return _target_distribution(q.detach().to(ct)).to(q.dtype)


def dec_loss(
    z: torch.Tensor,
    centers: torch.Tensor,
    alpha: float = 1.0,
    target: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    r"""DEC clustering loss ``KL(P || Q)`` averaged over the batch.

    .. math::
        L = \frac{1}{N} \sum_{i,j} p_{ij} \left(\log p_{ij} - \log q_{ij}\right)

    computed as ``F.kl_div(q.log(), p, reduction="batchmean")`` like PyAGC's
    ``DECClusterHead.forward``.

    Args:
        z: embeddings, shape ``(N, d)``.
        centers: cluster centres, shape ``(K, d)``.
        alpha: Student's t degrees of freedom, ``> 0`` (default 1).
        target: optional cached target ``P`` of shape ``(N, K)``, treated as a constant. With
            ``None`` (default) ``P`` is computed from this batch's ``Q`` by
            :func:`target_distribution` and detached.

    Returns:
        A scalar in the dtype of ``z``, differentiable in ``z`` and ``centers`` (``P`` held
        constant).

    Reference: Xie et al., ICML 2016, eq. (2).
    """
    alpha = check_dec_loss_args(z, centers, alpha, target)
    ct = compute_dtype(z)
    q = _soft_assign(z.to(ct), centers.to(ct), alpha)
    p = _target_distribution(q) if target is None else target.detach().to(ct)
    return F.kl_div(q.log(), p, reduction="batchmean").to(z.dtype)


def hard_assign(z: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    r"""Hard cluster labels: ``argmin_j ||z_i - mu_j||^2`` (PyAGC's ``cluster(z, soft=False)``).

    Args:
        z: embeddings, shape ``(N, d)``.
        centers: cluster centres, shape ``(K, d)``.

    Returns:
        ``int64`` labels of shape ``(N,)``; ties go to the lowest index.

    Reference: Xie et al., ICML 2016 (cluster assignment and the convergence criterion).
    """
    check_z_centers(z, centers)
    ct = compute_dtype(z)
    with torch.no_grad():
        return _sq_dist(z.detach().to(ct), centers.detach().to(ct)).argmin(dim=1)
