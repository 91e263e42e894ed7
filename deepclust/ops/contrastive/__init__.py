"""TCL's contrastive losses without the N x N logit matrix.

The only quadratic quantity of the loss is the masked log-sum-exp of every row of
``z z^T * scale`` (diagonal excluded). The Triton kernels (``_kernels``, launched by
``_launch``) stream column tiles with an online log-sum-exp and keep one fp32 LSE per row; the
backward recomputes the tiles. The torch path (``_eager``) does the same over row chunks. The
positive logits (``m-1`` per row) and the rest of the loss are O(N d) torch ops with ordinary
autograd.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..._common import (
    all_gather_no_grad,
    all_reduce_sum,
    check_positive,
    check_views,
    gather_views,
    get_group,
)
from .._plumbing import autocast_fp32, compute_dtype, register_fp32_autocast, resolve_impl
from . import _launch
from ._eager import _rows_bwd_torch, _rows_fwd_torch
from ._launch import _rows_bwd_triton, _rows_fwd_triton

_config = _launch._config  # the one tile choice, called here by the tests and the compile gate

__all__ = ["instance_contrastive_loss", "cluster_contrastive_loss"]


def _rows_fwd(q, k, b_local, b_global, offset, scale, pos_weight, impl):
    fn = _rows_fwd_triton if impl == "triton" else _rows_fwd_torch
    return fn(q, k, b_local, b_global, offset, scale, pos_weight)


def _rows_bwd(q, k, st_q, st_k, g_q, g_k, b_local, b_global, offset, scale, pos_weight, impl):
    fn = _rows_bwd_triton if impl == "triton" else _rows_bwd_torch
    return fn(q, k, st_q, st_k, g_q, g_k, b_local, b_global, offset, scale, pos_weight)


# ============================================================================= custom ops
@torch.library.custom_op("deepclust::contrastive_rows", mutates_args=())
def _contrastive_rows(
    z: torch.Tensor, n_views: int, scale: float, impl: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row loss terms ``logsumexp_{j != i} s_ij - mean_k s_{i,(i+kB) mod N}`` of the stacked
    views ``z`` (s = scale z z^T), and the row statistics (N x 2: max, log of the shifted sum)
    that the backward needs; fp32 (fp64 for fp64 input). The statistics carry no gradient."""
    n = z.shape[0]
    b = n // n_views
    return _rows_fwd(z, z, b, b, 0, scale, 1.0 / (n_views - 1), impl)


@_contrastive_rows.register_fake
def _(z, n_views, scale, impl):
    n = z.shape[0]
    cd = compute_dtype(z)
    return z.new_empty((n,), dtype=cd), z.new_empty((n, 2), dtype=cd)


@torch.library.custom_op("deepclust::contrastive_rows_backward", mutates_args=())
def _contrastive_rows_backward(
    z: torch.Tensor, stats: torch.Tensor, grad: torch.Tensor, n_views: int, scale: float, impl: str
) -> torch.Tensor:
    n = z.shape[0]
    b = n // n_views
    return _rows_bwd(z, z, stats, stats, grad, grad, b, b, 0, scale, 1.0 / (n_views - 1), impl)


@_contrastive_rows_backward.register_fake
def _(z, stats, grad, n_views, scale, impl):
    return torch.empty_like(z)


def _rows_setup_context(ctx, inputs, output):
    z, n_views, scale, impl = inputs
    ctx.save_for_backward(z, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.args = (n_views, scale, impl)


def _rows_backward(ctx, grad, _grad_stats):
    z, stats = ctx.saved_tensors
    dz = _contrastive_rows_backward(z, stats, grad.contiguous(), *ctx.args)
    return dz, None, None, None


_contrastive_rows.register_autograd(_rows_backward, setup_context=_rows_setup_context)
register_fp32_autocast("contrastive_rows")


# ============================================================================= distributed
def _global_order(full: torch.Tensor, m: int, world: int) -> torch.Tensor:
    """[rank 0 views; rank 1 views; ...] -> [view 0 of all ranks; view 1 of all ranks; ...]."""
    n = full.shape[0] // world
    return full.reshape(world, m, n // m, *full.shape[1:]).transpose(0, 1).reshape(full.shape)


# Deliberately not a custom op: its forward and backward run process-group collectives
# (all-gather, all-reduce) on a group object, which a torch.library schema cannot take.
class _DistributedContrastiveRows(torch.autograd.Function):
    """Per-row loss terms of the global batch (rows of all ranks, global order).

    Each rank computes the terms of its own rows against the gathered rows of all ranks and
    all-gathers them with their statistics. Backward: the gradients of every rank's objective
    are summed (as the backward of an all-gather with gradient would), and each rank computes
    the whole gradient of that sum with respect to its own rows, row and column contributions
    alike, from the gathered rows and statistics.
    """

    @staticmethod
    def forward(ctx, z, m, scale, impl, group):
        world = torch.distributed.get_world_size(group)
        rank = torch.distributed.get_rank(group)
        b_local = z.shape[0] // m
        offset = rank * b_local
        z_all = _global_order(all_gather_no_grad(z.contiguous(), group), m, world)
        loss, stats = _rows_fwd(z, z_all, b_local, b_local * world, offset, scale,
                                1.0 / (m - 1), impl)
        both = _global_order(all_gather_no_grad(torch.cat([loss[:, None], stats], 1), group),
                             m, world)
        ctx.save_for_backward(z, z_all, stats, both[:, 1:].contiguous())
        ctx.args = (m, scale, impl, group, b_local, world, offset)
        return both[:, 0].contiguous()

    @staticmethod
    def backward(ctx, grad):
        z, z_all, stats, stats_all = ctx.saved_tensors
        m, scale, impl, group, b_local, world, offset = ctx.args
        g_all = all_reduce_sum(grad.contiguous().to(stats_all.dtype), group)
        rows = torch.arange(z.shape[0], device=z.device)
        g_own = g_all[(rows // b_local) * b_local * world + offset + rows % b_local]
        dz = _rows_bwd(z, z_all, stats, stats_all, g_own, g_all, b_local, b_local * world,
                       offset, scale, 1.0 / (m - 1), impl)
        return dz, None, None, None, None


# ============================================================================= public functions
def _contrastive_term(z: torch.Tensor, m: int, scale: float, path: str, group) -> torch.Tensor:
    """-(1/(N(m-1))) sum of the positive log-probs of the stacked views z (global batch)."""
    if group is None:
        rows, _ = _contrastive_rows(z, m, scale, path)
    else:
        rows = _DistributedContrastiveRows.apply(z, m, scale, path, group)
    return rows.sum() / rows.shape[0]


def instance_contrastive_loss(
    z: torch.Tensor, n_views: int = 2, tau: float = 0.5, group=None, *, impl: str = "auto"
) -> torch.Tensor:
    r"""TCL's instance-level contrastive loss over ``m`` stacked views, without the N x N matrix.

    .. math::
        s_{ij} = \frac{z_i \cdot z_j}{\tau}, \qquad
        L = \frac{1}{mB\,(m-1)} \sum_{i=0}^{mB-1} \Big( (m-1)\,
            \log\!\sum_{l \ne i} e^{s_{il}} - \sum_{k=1}^{m-1} s_{i,\,(i+kB) \bmod mB} \Big)

    i.e. ``-mean`` of the positive log-probabilities of the diagonal-masked row log-softmax
    (Li et al., 2022, "Twin Contrastive Learning for Online Clustering"; NT-Xent for ``m = 2``).
    ``z = [view 0; ...; view m-1]``, each view ``B`` rows; ``z`` is not normalised here.

    Memory is O(N d): the Triton kernels (CUDA) stream column tiles with an online
    log-sum-exp (one fp32 LSE per row) and recompute the tiles in the backward, where
    ``dL/dz_i = (1/(tau N)) sum_j (P_ij + P_ji - 2 pos_ij/(m-1)) z_j``; the torch path does the
    same over row chunks (O(chunk x N) extra memory). Inputs fp32/fp16/bf16 (fp64 on the torch
    path), fp32 accumulation; the result has ``z``'s dtype. Under ``torch.autocast`` (on
    ``z``'s device) a 16-bit ``z`` is up-cast first: the result is the fp32 loss. Works under
    ``torch.compile`` (the row terms are the custom op ``deepclust::contrastive_rows``).

    Distributed (``torch.distributed`` initialised, or ``group`` given): every rank passes its
    own stacked views, all of one size. Each rank computes the log-sum-exp of its own rows
    against the gathered rows of all ranks; the result on every rank is the single-process loss
    on the concatenated batch (view ``v`` of it = view ``v`` of rank 0, of rank 1, ...), and the
    gradient each rank gets for its rows is ``world_size`` x the gradient of that loss, so DDP's
    averaging yields the single-process gradient (the convention of the reference, where every
    rank computes the whole loss and the all-gather's backward sums).

    Args:
        z: embeddings (m*B x d).
        n_views: number of views ``m >= 2``. Default 2.
        tau: temperature > 0. Default 0.5.
        group: process group; ``None`` is the default group when distributed, else one process.
        impl: ``"auto"`` (Triton on CUDA, else torch), ``"triton"`` or ``"torch"``.

    Returns:
        A scalar of ``z``'s dtype (fp32 under autocast).

    Raises:
        TypeError/ValueError: ``z`` not a 2-D float tensor, its row count not divisible by
            ``n_views``, ``n_views < 2``, ``tau <= 0``, fp64 with ``impl="triton"``.
    """
    m = check_views(z, "z", n_views)
    tau = check_positive(tau, "tau")
    z = autocast_fp32(z)
    path = resolve_impl(impl, z, name="z")
    return _contrastive_term(z, m, 1.0 / tau, path, get_group(group)).to(z.dtype)


def cluster_contrastive_loss(
    c: torch.Tensor, n_views: int = 2, tau: float = 1.0, group=None, *, impl: str = "auto"
) -> torch.Tensor:
    r"""TCL's cluster-level contrastive loss plus its entropy term, without the N x N matrix.

    Each view's block of ``c`` (B x K soft assignments) is transposed to K x B and the blocks
    are stacked to ``y`` (m*K x B); with ``y`` row-normalised the loss is

    .. math::
        L = L_{\text{inst}}\big(\hat y,\ m,\ \tau\big)
            + \sum_{v=0}^{m-1} \Big(\log K + \sum_k p^{(v)}_k \log p^{(v)}_k\Big),
        \qquad p^{(v)} = \frac{\mathbf 1^\top c_v}{\mathbf 1^\top c_v \mathbf 1}

    (logits ``cos / tau``, positives: the same cluster in the other views; ``0 log 0 = 0``).
    The published loss for ``m = 2``, the natural extension for ``m > 2``. The contrastive part
    runs through the same masked log-sum-exp as :func:`instance_contrastive_loss`; the
    normalisation and the entropy are torch ops. Distributed: the rows of all ranks are gathered
    with gradient (the loss depends on whole columns), every rank computes the global loss and
    gets ``world_size`` x its gradient, as in :func:`instance_contrastive_loss`. Under
    ``torch.autocast`` a 16-bit ``c`` is up-cast first (the result is the fp32 loss).

    Args:
        c: soft assignments (m*B x K), rows on the simplex.
        n_views: number of views ``m >= 2``. Default 2.
        tau: temperature > 0. Default 1.0.
        group: process group; ``None`` is the default group when distributed, else one process.
        impl: ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns:
        A scalar of ``c``'s dtype (fp32 under autocast).
    """
    m = check_views(c, "c", n_views)
    tau = check_positive(tau, "tau")
    c = autocast_fp32(c)
    path = resolve_impl(impl, c, name="c")
    cf = gather_views(c.to(compute_dtype(c)), m, get_group(group))
    k = cf.shape[1]
    views = cf.reshape(m, cf.shape[0] // m, k)
    p = views.sum(1)
    p = p / p.sum(1, keepdim=True)
    entropy = (math.log(k) + torch.xlogy(p, p).sum(1)).sum()
    y = F.normalize(views.transpose(1, 2).reshape(m * k, -1), p=2, dim=1)
    return (_contrastive_term(y, m, 1.0 / tau, path, None) + entropy).to(c.dtype)
