"""Eager reference of SwAV's Sinkhorn-Knopp codes.

Faithful to SPEC.md (SwAV section) and to Caron et al., "Unsupervised Learning of Visual
Features by Contrasting Cluster Assignments", NeurIPS 2020. The only departure from the
published ``distributed_sinkhorn`` is that the global (all-reduced) maximum of ``scores / eps`` is
subtracted before the exponential. Every step of the algorithm divides by a sum, so a global
factor ``exp(-max)`` cancels exactly: the result is mathematically identical, and the
exponential can no longer overflow (it still underflows to 0 for entries more than ~87 below
the maximum in fp32; a sample whose whole row underflows then gives NaN, as the published code
would; the fused op in :mod:`deepclust.ops.sinkhorn_knopp` works in the log domain and has no
such limit). The module is not named ``sinkhorn``: a submodule of that name would shadow the
function :func:`deepclust.reference.sinkhorn` once imported.
"""
from __future__ import annotations

import torch

from .._common import (
    all_reduce_max,
    all_reduce_sum,
    check_same_device,
    check_sinkhorn_args,
    check_tensor,
    compute_dtype,
    world_size,
)

__all__ = ["sinkhorn", "sinkhorn_from_embeddings"]


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, n_iters: int = 3, group=None) -> torch.Tensor:
    """Sinkhorn-Knopp equipartition codes of prototype scores (SwAV).

    With ``out = scores / eps`` (B x K), ``Q = exp(out - max(out))^T`` (K x B), ``Q /= sum(Q)``,
    then ``n_iters`` times: ``Q /= row sums``, ``Q /= K``, ``Q /= column sums``,
    ``Q /= B_total``; finally ``Q *= B_total`` and the codes are ``Q^T``. ``B_total = B x
    world_size``; the maximum, the total and the per-prototype (row) sums are all-reduced over
    ``group``; the per-sample (column) sums are local. Subtracting the global maximum is exact
    (every step is invariant to a global scale of ``Q``).

    Args:
        scores: prototype scores (B x K), usually ``z @ prototypes.T`` with unit-norm rows.
        eps: entropy weight (> 0), default 0.05.
        n_iters: Sinkhorn iterations (>= 1), default 3.
        group: process group for the all-reduces; ``None`` is the default group when
            ``torch.distributed`` is initialised, else a single process.

    Returns:
        Codes (B x K), float32 (float64 for float64 input), each row summing to 1, no gradient.
    """
    check_tensor(scores, "scores", ndim=2)
    eps, n_iters = check_sinkhorn_args(eps, n_iters)
    out = scores.detach().to(compute_dtype(scores)) / eps
    B, K = out.shape
    b_total = B * world_size(group)
    gmax = all_reduce_max(out.max(), group)
    Q = torch.exp(out - gmax).t()  # K x B
    Q /= all_reduce_sum(Q.sum(), group)
    for _ in range(n_iters):
        Q /= all_reduce_sum(Q.sum(dim=1, keepdim=True), group)
        Q /= K
        Q /= Q.sum(dim=0, keepdim=True)
        Q /= b_total
    Q *= b_total
    return Q.t()


@torch.no_grad()
def sinkhorn_from_embeddings(z: torch.Tensor, prototypes: torch.Tensor, eps: float = 0.05,
                             n_iters: int = 3, group=None) -> torch.Tensor:
    """:func:`sinkhorn` of ``z @ prototypes.T``.

    Args:
        z: embeddings (B x d).
        prototypes: prototypes (K x d), same dtype as ``z``.
        eps, n_iters, group: as in :func:`sinkhorn`.

    Returns:
        Codes (B x K), float32 (float64 for float64 input), rows summing to 1.
    """
    check_tensor(z, "z", ndim=2)
    check_tensor(prototypes, "prototypes", ndim=2)
    check_same_device(z=z, prototypes=prototypes)
    if z.shape[1] != prototypes.shape[1]:
        raise ValueError(f"prototypes must have {z.shape[1]} columns like z, got {tuple(prototypes.shape)}")
    ct = compute_dtype(z)
    scores = z.detach().to(ct) @ prototypes.detach().to(ct).t()
    return sinkhorn(scores, eps=eps, n_iters=n_iters, group=group)
