"""Eager references of graph-autoencoder reconstruction: negative sampling and the
inner-product reconstruction loss of GAE (Kipf & Welling, 2016) as DAEGC (Wang et al., IJCAI
2019) uses it. Same names and signatures as :mod:`deepclust.ops.recon`."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._common import check_edge_index, check_same_device, check_tensor, sampler_args

__all__ = ["negative_sampling", "recon_loss"]

# Largest node count for which N * (N - 1) fits in int64.
_MAX_NODES = 3037000499


def _edge_gaps(edge_index: torch.Tensor, num_nodes: int):
    """Sorted ``keys[e] - e`` of the unique non-self-loop edges, and the number of non-edges.

    Ordered pairs ``(u, v)``, ``u != v``, are ranked by ``u * (N - 1) + v'`` with
    ``v' = v - (v > u)``; ``keys[e] - e`` counts the non-edges ranked before edge ``e``.
    """
    u, v = edge_index[0], edge_index[1]
    keep = u != v
    u, v = u[keep], v[keep]
    keys = torch.unique(u * max(num_nodes - 1, 1) + v - (v > u).long())  # sorted
    gaps = keys - torch.arange(keys.numel(), device=keys.device)
    non_edges = num_nodes * (num_nodes - 1) - keys.numel() if num_nodes >= 2 else 0
    return gaps, non_edges


def negative_sampling(
    edge_index: torch.Tensor,
    num_nodes: Optional[int] = None,
    num_neg_samples: Optional[int] = None,
    *,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    r"""Draw node pairs that are not edges, i.i.d. and uniformly.

    Each sample is uniform over the ordered pairs :math:`(u, v)` with :math:`u \ne v` and
    :math:`(u, v)` not a column of ``edge_index`` (draws are with replacement, like PyG's
    ``negative_sampling`` but with an exact count and no rejection loop). The pairs are ranked
    by the key :math:`u (N-1) + v'` with :math:`v' = v - [v > u]`; if ``keys`` are the sorted
    unique edge keys, the :math:`k`-th non-edge has key :math:`k + \#\{e : keys_e - e \le k\}`,
    so a uniform :math:`k \in [0, N(N-1) - |E|)` and one binary search give an exact draw at any
    density, including almost complete graphs.

    Args:
        edge_index: ``(2, E)`` int64 (or int32) edges ``(source, target)``; duplicates and
            self-loops are allowed (self-loops are never sampled anyway).
        num_nodes: ``N``; default ``edge_index.max() + 1``.
        num_neg_samples: number of pairs to draw; default ``E``.
        generator: optional ``torch.Generator`` for reproducible draws.

    Returns:
        ``(2, num_neg_samples)`` int64 tensor on the device of ``edge_index``.

    Raises:
        TypeError/ValueError: malformed ``edge_index``, indices outside ``[0, N)``, bad counts.
        ValueError: no non-edge pair exists (complete graph, or ``N < 2``) while samples are
            requested.
    """
    edge_index, n, s = sampler_args(edge_index, num_nodes, num_neg_samples)
    if s == 0:
        return edge_index.new_empty((2, 0))
    gaps, non_edges = _edge_gaps(edge_index, n)
    if non_edges <= 0:
        raise ValueError(
            f"no negative pair exists: every ordered pair (u, v), u != v, of the {n} nodes is an "
            "edge (complete graph)"
        )
    gen_device = generator.device if generator is not None else edge_index.device
    k = torch.randint(0, non_edges, (s,), generator=generator, device=gen_device).to(edge_index.device)
    key = k + torch.searchsorted(gaps, k, right=True)
    u = torch.div(key, n - 1, rounding_mode="floor")
    vp = key - u * (n - 1)
    v = vp + (vp >= u).long()
    return torch.stack([u, v])


def recon_loss(
    z: torch.Tensor,
    pos_edge_index: torch.Tensor,
    neg_edge_index: Optional[torch.Tensor] = None,
    *,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    r"""Inner-product reconstruction loss with negative sampling (GAE; DAEGC's :math:`L_r`).

    With scores :math:`s_{uv} = z_u \cdot z_v` and :math:`\sigma` the logistic function,

    .. math::
        L = -\frac{1}{|E^+|}\sum_{(u,v) \in E^+} \log \sigma(s_{uv})
            - \frac{1}{|E^-|}\sum_{(u,v) \in E^-} \log (1 - \sigma(s_{uv}))
          = \operatorname{mean}_{E^+} \operatorname{softplus}(-s)
            + \operatorname{mean}_{E^-} \operatorname{softplus}(s).

    The softplus form is exact at every score (PyAGC's ``-log(sigmoid(s) + 1e-15)`` agrees with
    it for :math:`|s| \lesssim 30` and saturates at 34.54 with zero gradient beyond).
    Kipf & Welling, "Variational Graph Auto-Encoders" (2016); Wang et al., "Attributed Graph
    Clustering: A Deep Attentional Embedding Approach" (IJCAI 2019).

    Args:
        z: ``(N, d)`` node embeddings (float; computed in fp32, float64 stays float64).
        pos_edge_index: ``(2, E+)`` edges to reconstruct (at least one).
        neg_edge_index: ``(2, E-)`` non-edges; default ``E+`` pairs drawn with
            :func:`negative_sampling` (``num_nodes = N``).
        generator: ``torch.Generator`` for the negative draws.

    Returns:
        0-d tensor in the dtype of ``z``.
    """
    check_tensor(z, "z", ndim=2)
    n = z.shape[0]
    pos = check_edge_index(pos_edge_index, "pos_edge_index", n, nonempty=True)
    if neg_edge_index is None:
        neg = negative_sampling(pos, n, pos.shape[1], generator=generator)
    else:
        neg = check_edge_index(neg_edge_index, "neg_edge_index", n, nonempty=True)
    check_same_device(z=z, pos_edge_index=pos, neg_edge_index=neg)
    zc = z if z.dtype == torch.float64 else z.float()
    s_pos = (zc[pos[0]] * zc[pos[1]]).sum(-1)
    s_neg = (zc[neg[0]] * zc[neg[1]]).sum(-1)
    loss = F.softplus(-s_pos).mean() + F.softplus(s_neg).mean()
    return loss.to(z.dtype)
