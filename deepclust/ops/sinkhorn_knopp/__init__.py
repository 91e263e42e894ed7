"""Fused Sinkhorn-Knopp codes (SwAV).

Sinkhorn never rewrites the B x K matrix. The codes are ``P_ij = exp(S_ij + a_i + b_j)`` with
``S = scores / eps`` and log scaling vectors ``a`` (B, per sample) and ``b`` (K, per prototype);
the global normalisations of the published algorithm are scalars that cancel. Each half
iteration is one read of the scores:

* column pass: ``b_j = -logsumexp_i(S_ij + a_i)``; a grid of (row chunk, K tile) programs each
  keeps an online (max, sum of exp) per column over its rows and writes the partials; the host
  combines them (a few K-vectors, a fixed-order torch reduction) and all-reduces the max and the
  sum across processes;
* row pass: ``a_i = -logsumexp_j(S_ij + b_j)``, one program per block of rows, online over K
  tiles (rows are local: no communication);
* the last row pass also writes the codes ``exp(S_ij + b_j + a_i)`` (rows sum to 1, float32).

Everything is in the log domain, so no exponential overflows or underflows a whole row,
whatever ``eps`` and the input dtype. Reads of the B x K input per call: ``2 n_iters + 1``,
plus one float32 write. ``sinkhorn_from_embeddings`` recomputes each score tile with ``tl.dot``
from ``z`` (B x d) and the prototypes (K x d) on every pass and never stores the scores. No
kernel accumulates across programs (no atomics): equal inputs give bitwise equal codes.

Modules: ``_kernels`` (Triton), ``_launch`` (the config function :func:`_sinkhorn_config`, also
importable from here, and the launcher), ``_eager`` (the same passes in torch, over row
chunks). The package is not named ``sinkhorn``: a submodule of that name would shadow the
function :func:`deepclust.ops.sinkhorn` once imported.
"""
from __future__ import annotations

import torch

from ..._common import (
    check_same_device, check_sinkhorn_args, check_tensor, compute_dtype, get_group,
)
from .._plumbing import register_fp32_autocast, resolve_impl
from ._eager import Source, sinkhorn_eager
from . import _launch
from ._launch import sinkhorn_triton

__all__ = ["sinkhorn", "sinkhorn_from_embeddings"]

# The one configuration function of the kernels, also importable from this package.
_sinkhorn_config = _launch._sinkhorn_config


def _run(src: Source, eps: float, n_iters: int, impl: str, group=None) -> torch.Tensor:
    if impl == "triton":
        return sinkhorn_triton(src, eps, n_iters, group)
    return sinkhorn_eager(src, eps, n_iters, group)


# ============================================================================ torch.library ops
# No backward ops: the codes are targets, computed without gradient.
@torch.library.custom_op("deepclust::sinkhorn_scores", mutates_args=())
def _sinkhorn_scores_op(scores: torch.Tensor, eps: float, n_iters: int,
                        impl: str) -> torch.Tensor:
    return _run(Source(scores=scores), eps, n_iters, impl)


@_sinkhorn_scores_op.register_fake
def _(scores, eps, n_iters, impl):
    return scores.new_empty(scores.shape, dtype=compute_dtype(scores))


@torch.library.custom_op("deepclust::sinkhorn_embeddings", mutates_args=())
def _sinkhorn_embeddings_op(z: torch.Tensor, prototypes: torch.Tensor, eps: float,
                            n_iters: int, impl: str) -> torch.Tensor:
    # cast here, not before the call: under autocast both arrive in fp32 (fp32 parameters
    # stay exact next to bf16 activations)
    return _run(Source(z=z, prototypes=prototypes.to(z.dtype)), eps, n_iters, impl)


@_sinkhorn_embeddings_op.register_fake
def _(z, prototypes, eps, n_iters, impl):
    return z.new_empty((z.shape[0], prototypes.shape[0]), dtype=compute_dtype(z))


register_fp32_autocast("sinkhorn_scores", "sinkhorn_embeddings")


# Over a process group Sinkhorn is not a custom op: the column passes all-reduce between
# kernel launches (collectives are no custom-op body), so the distributed run stays eager.
@torch.compiler.disable
def _distributed(src: Source, eps: float, n_iters: int, impl: str, group) -> torch.Tensor:
    return _run(src, eps, n_iters, impl, group)


# ============================================================================ public functions
@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, n_iters: int = 3, group=None, *,
             impl: str = "auto") -> torch.Tensor:
    """Sinkhorn-Knopp equipartition codes of prototype scores (SwAV), fused.

    Computes the codes of :func:`deepclust.reference.sinkhorn`: with ``S = scores / eps``
    (B x K) and ``n_iters`` alternations of the prototype normalisation (``sum_i P_ij = B_total
    / K``, all-reduced over ``group``) and the sample normalisation (``sum_j P_ij = 1``), the
    result is ``P_ij = exp(S_ij + a_i + b_j)`` with rows summing to 1. The scaling vectors are
    kept in the log domain, so any ``eps`` and fp16/bf16 scores stay finite (the published
    code overflows fp16 above ``scores ~ 0.55`` at ``eps = 0.05``).

    Args:
        scores: prototype scores (B x K), float32/float16/bfloat16 (float64 on the torch path).
        eps: entropy weight (> 0), default 0.05.
        n_iters: Sinkhorn iterations (>= 1), default 3.
        group: process group; ``None`` is the default group when ``torch.distributed`` is
            initialised. ``B_total = B x world_size``; the per-prototype sums are all-reduced
            between passes (a K-vector each), so every process gets the codes of its rows in
            the concatenated batch.
        impl: ``"auto"`` (Triton on CUDA, else torch), ``"triton"`` or ``"torch"``.

    Returns:
        Codes (B x K), float32 (float64 for float64 input on the torch path), no gradient.

    Caron et al., "Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments", NeurIPS 2020.
    """
    check_tensor(scores, "scores", ndim=2)
    eps, n_iters = check_sinkhorn_args(eps, n_iters)
    scores = scores.detach()
    path = resolve_impl(impl, scores, name="scores")
    if get_group(group) is not None:
        return _distributed(Source(scores=scores), eps, n_iters, path, group)
    return _sinkhorn_scores_op(scores, eps, n_iters, path)


@torch.no_grad()
def sinkhorn_from_embeddings(z: torch.Tensor, prototypes: torch.Tensor, eps: float = 0.05,
                             n_iters: int = 3, group=None, *, impl: str = "auto") -> torch.Tensor:
    """:func:`sinkhorn` of ``z @ prototypes.T`` without storing the B x K scores.

    Each pass recomputes its score tiles from ``z`` and ``prototypes`` (``tl.dot`` on the
    Triton path; row chunks on the torch path).

    Args:
        z: embeddings (B x d).
        prototypes: (K x d); cast to ``z``'s dtype.
        eps, n_iters, group, impl: as in :func:`sinkhorn`.

    Returns:
        Codes (B x K), float32 (float64 for float64 input on the torch path), rows sum to 1.
    """
    check_tensor(z, "z", ndim=2)
    check_tensor(prototypes, "prototypes", ndim=2)
    check_same_device(z=z, prototypes=prototypes)
    if z.shape[1] != prototypes.shape[1]:
        raise ValueError(f"prototypes must have {z.shape[1]} columns like z, got {tuple(prototypes.shape)}")
    eps, n_iters = check_sinkhorn_args(eps, n_iters)
    z, prototypes = z.detach(), prototypes.detach()
    path = resolve_impl(impl, z, name="z")
    if get_group(group) is not None:
        src = Source(z=z, prototypes=prototypes.to(z.dtype))
        return _distributed(src, eps, n_iters, path, group)
    return _sinkhorn_embeddings_op(z, prototypes, eps, n_iters, path)
