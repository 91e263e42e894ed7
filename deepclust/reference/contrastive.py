"""Eager references of TCL's contrastive losses (Li et al., 2022, "Twin Contrastive Learning for
Online Clustering"): the instance-level loss over ``m`` stacked views and the cluster-level loss
with its entropy term.

Both build the full ``N x N`` logit matrix: they are the ground truth of
:mod:`deepclust.ops.contrastive`, which computes the same numbers without it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .._common import check_positive, check_views, compute_dtype, gather_views

__all__ = ["instance_contrastive_loss", "cluster_contrastive_loss"]


def _positive_logprob_loss(logits: torch.Tensor, m: int) -> torch.Tensor:
    """Masked row log-softmax of a square logit matrix, mean over the positive pairs.

    The diagonal is excluded from the softmax; the positives of row ``i`` are rows
    ``(i + k*B) mod mB`` for ``k = 1..m-1``.
    """
    n = logits.shape[0]
    b = n // m
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    logprob = F.log_softmax(logits.masked_fill(eye, float("-inf")), dim=1)
    rows = torch.arange(n, device=logits.device)
    shifts = torch.arange(1, m, device=logits.device) * b
    cols = (rows[:, None] + shifts[None, :]) % n  # (n, m-1)
    pos = logprob.gather(1, cols)
    return -pos.sum() / n / (m - 1)


def instance_contrastive_loss(
    z: torch.Tensor, n_views: int = 2, tau: float = 0.5, group=None
) -> torch.Tensor:
    r"""TCL's instance-level contrastive loss (NT-Xent over ``m`` views), eager reference.

    .. math::
        s_{ij} = \frac{z_i \cdot z_j}{\tau}, \qquad
        \log p_{ij} = s_{ij} - \log \sum_{l \ne i} e^{s_{il}}, \qquad
        L = -\frac{1}{mB\,(m-1)} \sum_{i=0}^{mB-1} \sum_{k=1}^{m-1}
            \log p_{i,\,(i + kB) \bmod mB}

    The views are stacked, ``z = [view 0; view 1; ...; view m-1]``, each of ``B`` rows, so row
    ``i`` and row ``(i + kB) mod mB`` are two views of one sample. ``z`` is **not** normalised
    here (TCL normalises in its projector). The diagonal is excluded from the softmax exactly
    (the published code writes ``-1e4`` there, which is the same wherever ``|s_ii| < ~1e4``).

    Distributed: with ``torch.distributed`` initialised (or ``group`` given) every rank passes
    its own stacked views, all of one size; the rows of all ranks are gathered with gradient and
    re-ordered so that view ``v`` of the global batch is the concatenation over ranks of each
    rank's view ``v``. Every rank returns the loss of one process on the concatenated batch, and
    the gradient each rank receives for its own rows is ``world_size`` times the gradient of that
    global loss (the all-gather's backward sums over ranks), so DDP's gradient averaging gives
    exactly the single-process gradient.

    Args:
        z: embeddings (m*B x d), fp32/fp16/bf16/fp64; computed in fp32 (fp64 stays fp64).
        n_views: number of views ``m >= 2``. Default 2.
        tau: temperature > 0. Default 0.5.
        group: process group; ``None`` is the default group when distributed, else one process.

    Returns:
        A scalar of ``z``'s dtype.

    Raises:
        TypeError/ValueError: ``z`` not a 2-D float tensor, row count not divisible by
            ``n_views``, ``n_views < 2`` or ``tau <= 0``.
    """
    m = check_views(z, "z", n_views)
    tau = check_positive(tau, "tau")
    zf = gather_views(z.to(compute_dtype(z)), m, group)
    logits = zf @ zf.t() / tau
    return _positive_logprob_loss(logits, m).to(z.dtype)


def cluster_contrastive_loss(
    c: torch.Tensor, n_views: int = 2, tau: float = 1.0, group=None
) -> torch.Tensor:
    r"""TCL's cluster-level contrastive loss plus its entropy term, eager reference.

    ``c`` holds soft cluster assignments of ``m`` stacked views (m*B x K). Each view's block
    ``c_v`` (B x K) is transposed to K x B (one row per cluster) and the blocks are stacked to
    ``y`` (m*K x B); the rows of ``y`` are L2-normalised, so the logits are cosine similarities
    over ``tau``, and the instance loss above is applied to ``y`` (the positives of cluster ``k``
    of one view are cluster ``k`` of the other views):

    .. math::
        L = L_{\text{inst}}\big(\hat y,\ m,\ \tau\big)
            + \sum_{v=0}^{m-1} \Big(\log K + \sum_k p^{(v)}_k \log p^{(v)}_k\Big),
        \qquad p^{(v)} = \frac{\mathbf 1^\top c_v}{\mathbf 1^\top c_v \mathbf 1}

    The entropy term (``log K`` minus the entropy of each view's cluster marginal) keeps the
    clusters from collapsing; ``0 log 0 = 0``. For ``m = 2`` this is the published loss; for
    ``m > 2`` the natural extension (every other view is a positive, one entropy term per view).

    Distributed: as :func:`instance_contrastive_loss` -- the rows of all ranks are gathered with
    gradient and re-ordered, the marginals are over the global batch, every rank returns the
    single-process loss on the concatenated batch and receives ``world_size`` times its
    gradient (DDP's averaging then gives the single-process gradient).

    Args:
        c: soft assignments (m*B x K), rows on the simplex; fp32/fp16/bf16/fp64.
        n_views: number of views ``m >= 2``. Default 2.
        tau: temperature > 0. Default 1.0.
        group: process group; ``None`` is the default group when distributed, else one process.

    Returns:
        A scalar of ``c``'s dtype.
    """
    m = check_views(c, "c", n_views)
    tau = check_positive(tau, "tau")
    cf = gather_views(c.to(compute_dtype(c)), m, group)
    k = cf.shape[1]
    b = cf.shape[0] // m
    views = cf.reshape(m, b, k)
    p = views.sum(1)  # (m, K)
    p = p / p.sum(1, keepdim=True)
    entropy = (math.log(k) + torch.xlogy(p, p).sum(1)).sum()
    y = views.transpose(1, 2).reshape(m * k, b)
    y = F.normalize(y, p=2, dim=1) / math.sqrt(tau)
    logits = y @ y.t()
    return (_positive_logprob_loss(logits, m) + entropy).to(c.dtype)
