"""SwAV's swapped-prediction loss: fused Sinkhorn codes and a fused soft cross-entropy.

The codes come from :func:`deepclust.ops.sinkhorn_knopp.sinkhorn` (no gradient). The loss
kernel reads each crop's scores once: per row an online logsumexp of ``x = out / tau`` over K
tiles together with ``sum_k t_k x_k`` and ``sum_k t_k``, where the target ``t`` is the weighted
sum of the assignment crops' codes; the backward kernel writes ``(softmax(x) sum_k t_k - t) /
tau`` times the incoming gradient. No B x K temporary is made besides the codes and the
gradient. The per-row losses are summed by torch in a fixed order (no atomics), so equal inputs
give bitwise equal outputs. Tiles come from :func:`_swav_ce_config`, a pure function of the
shapes, dtype and target that the compile gate (``bench/gpu_compile.py``) checks for spills.
The eager path computes the same per-row formula over row chunks.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch

from .._common import check_swav_args
from ._plumbing import (
    HAS_TRITON,
    compute_dtype,
    kernel_target,
    new_output,
    next_pow2,
    register_fp32_autocast,
    resolve_impl,
    row_chunks,
)
from .sinkhorn_knopp import sinkhorn

if HAS_TRITON:
    import triton
    import triton.language as tl

__all__ = ["swav_loss"]

# ============================================================================ Triton kernels
if HAS_TRITON:
    _NEG = tl.constexpr(-1.0e30)  # finite "minus infinity" for running maxima

    @triton.jit
    def _scores_and_targets(X, Q, W, v, rows, mask_r, k0, B, K, A, stride_xv, stride_xb,
                            stride_xk, inv_tau, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
        """The tile of crop v at columns ``k0 ...``: its columns, mask, x = X / tau and the soft
        target t = sum_a W[v, a] Q[a]."""
        cols = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        mask = mask_r[:, None] & (cols < K)[None, :]
        x = tl.load(X + v * stride_xv + rows[:, None] * stride_xb + cols[None, :] * stride_xk,
                    mask=mask, other=0.0).to(tl.float32) * inv_tau
        t = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
        for a in range(0, A):
            w = tl.load(W + v * A + a)
            q = tl.load(Q + (rows[:, None] + a * B) * K + cols[None, :], mask=mask, other=0.0)
            t += w * q
        return cols, mask, x, t

    @triton.jit
    def _swav_ce_fwd_kernel(X, Q, W, ROWLOSS, LSE, TSUM, B, K, A, stride_xv, stride_xb,
                            stride_xk, inv_tau, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
        """Per row of crop v: lse of x = X/tau, t = sum_a W[v,a] Q[a], loss = lse*sum t - sum t*x."""
        pid = tl.program_id(0)
        v = tl.program_id(1).to(tl.int64)
        rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
        mask_r = rows < B
        m = tl.full((BLOCK_B,), _NEG, dtype=tl.float32)
        s = tl.zeros((BLOCK_B,), dtype=tl.float32)
        tx = tl.zeros((BLOCK_B,), dtype=tl.float32)
        ts = tl.zeros((BLOCK_B,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols, mask, x, t = _scores_and_targets(X, Q, W, v, rows, mask_r, k0, B, K, A,
                                                   stride_xv, stride_xb, stride_xk, inv_tau,
                                                   BLOCK_B, BLOCK_K)
            tx += tl.sum(t * x, axis=1)
            ts += tl.sum(t, axis=1)
            xm = tl.where(mask, x, float("-inf"))
            m_new = tl.maximum(m, tl.max(xm, axis=1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(xm - m_new[:, None]), axis=1)
            m = m_new
        lse = tl.where(mask_r, m + tl.log(tl.where(mask_r, s, 1.0)), 0.0)
        out = v * B + rows
        tl.store(ROWLOSS + out, lse * ts - tx, mask=mask_r)
        tl.store(LSE + out, lse, mask=mask_r)
        tl.store(TSUM + out, ts, mask=mask_r)

    @triton.jit
    def _swav_ce_bwd_kernel(G, X, Q, W, LSE, TSUM, DX, B, K, A, stride_xv, stride_xb, stride_xk,
                            inv_tau, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
        """DX = g / tau * (softmax(x) * sum t - t) for every crop v."""
        pid = tl.program_id(0)
        v = tl.program_id(1).to(tl.int64)
        rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
        mask_r = rows < B
        g = tl.load(G).to(tl.float32) * inv_tau
        lse = tl.load(LSE + v * B + rows, mask=mask_r, other=0.0)
        ts = tl.load(TSUM + v * B + rows, mask=mask_r, other=0.0)
        for k0 in range(0, K, BLOCK_K):
            cols, mask, x, t = _scores_and_targets(X, Q, W, v, rows, mask_r, k0, B, K, A,
                                                   stride_xv, stride_xb, stride_xk, inv_tau,
                                                   BLOCK_B, BLOCK_K)
            dx = g * (tl.exp(x - lse[:, None]) * ts[:, None] - t)
            tl.store(DX + v * B * K + rows[:, None] * K + cols[None, :],
                     dx.to(DX.dtype.element_ty), mask=mask)


# ============================================================================ launchers
class _SwavCEConfig(NamedTuple):
    """Launch configuration of the loss kernels (see :func:`_swav_ce_config`)."""
    block_b: int
    block_k: int
    num_warps: int
    num_stages: int


def _swav_ce_config(K: int, dtype: torch.dtype, target: str) -> _SwavCEConfig:
    """Tiles of the loss kernels: 16 rows x up to 128 prototypes on 4 warps (16 elements a
    thread of scores and targets), whatever the dtype; the interpreter runs the same."""
    return _SwavCEConfig(16, max(16, min(128, next_pow2(K))), 4, 2)


def _swav_ce_forward_triton(x, codes, weights, inv_tau):
    V, B, K = x.shape
    A = codes.shape[0]
    cfg = _swav_ce_config(K, x.dtype, kernel_target(x.device))
    row_loss = new_output((V, B), torch.float32, x.device)
    lse = new_output((V, B), torch.float32, x.device)
    tsum = new_output((V, B), torch.float32, x.device)
    _swav_ce_fwd_kernel[(triton.cdiv(B, cfg.block_b), V)](
        x, codes, weights, row_loss, lse, tsum, B, K, A, x.stride(0), x.stride(1), x.stride(2),
        inv_tau, BLOCK_B=cfg.block_b, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)
    return row_loss.sum(), lse, tsum  # per-row losses summed by torch: deterministic


def _swav_ce_backward_triton(g, x, codes, weights, lse, tsum, inv_tau):
    V, B, K = x.shape
    A = codes.shape[0]
    cfg = _swav_ce_config(K, x.dtype, kernel_target(x.device))
    dx = new_output((V, B, K), x.dtype, x.device)
    _swav_ce_bwd_kernel[(triton.cdiv(B, cfg.block_b), V)](
        g, x, codes, weights, lse, tsum, dx, B, K, A, x.stride(0), x.stride(1), x.stride(2),
        inv_tau, BLOCK_B=cfg.block_b, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)
    return dx


# ============================================================================ eager path
def _tile(x, codes, weights, v, i0, i1, inv_tau, ct):
    """Rows i0:i1 of crop v: ``x / tau`` and the target ``t = sum_a w[v, a] codes[a]`` in ct."""
    xs = x[v, i0:i1].to(ct) * inv_tau
    t = torch.tensordot(weights[v].to(ct), codes[:, i0:i1].to(ct), dims=1)
    return xs, t


def _swav_ce_forward_eager(x, codes, weights, inv_tau):
    """The kernels' per-row formula over row chunks (float64 stays float64)."""
    V, B, K = x.shape
    ct = compute_dtype(x)
    row_loss = torch.empty(V, B, dtype=ct, device=x.device)
    lse = torch.empty_like(row_loss)
    tsum = torch.empty_like(row_loss)
    for v in range(V):
        for i0, i1 in row_chunks(B, K):
            xs, t = _tile(x, codes, weights, v, i0, i1, inv_tau, ct)
            lse[v, i0:i1] = torch.logsumexp(xs, dim=1)
            tsum[v, i0:i1] = t.sum(dim=1)
            row_loss[v, i0:i1] = lse[v, i0:i1] * tsum[v, i0:i1] - (t * xs).sum(dim=1)
    return row_loss.sum(), lse, tsum


def _swav_ce_backward_eager(g, x, codes, weights, lse, tsum, inv_tau):
    V, B, K = x.shape
    ct = compute_dtype(x)
    gs = g.to(ct) * inv_tau
    dx = torch.empty((V, B, K), dtype=x.dtype, device=x.device)
    for v in range(V):
        for i0, i1 in row_chunks(B, K):
            xs, t = _tile(x, codes, weights, v, i0, i1, inv_tau, ct)
            p = torch.exp(xs - lse[v, i0:i1, None])
            dx[v, i0:i1] = (gs * (p * tsum[v, i0:i1, None] - t)).to(x.dtype)
    return dx


# ============================================================================ torch.library ops
@torch.library.custom_op("deepclust::swav_ce", mutates_args=())
def _swav_ce_op(x: torch.Tensor, codes: torch.Tensor, weights: torch.Tensor, inv_tau: float,
                impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss in x's dtype, row logsumexp, row target sums); the last two feed the backward."""
    codes, weights = codes.contiguous(), weights.contiguous()
    if impl == "triton":
        loss, lse, tsum = _swav_ce_forward_triton(x, codes, weights, inv_tau)
    else:
        loss, lse, tsum = _swav_ce_forward_eager(x, codes, weights, inv_tau)
    return loss.to(x.dtype), lse, tsum


@_swav_ce_op.register_fake
def _(x, codes, weights, inv_tau, impl):
    V, B, _ = x.shape
    ct = compute_dtype(x)
    return x.new_empty((), dtype=x.dtype), x.new_empty((V, B), dtype=ct), x.new_empty((V, B), dtype=ct)


@torch.library.custom_op("deepclust::swav_ce_backward", mutates_args=())
def _swav_ce_backward_op(g: torch.Tensor, x: torch.Tensor, codes: torch.Tensor,
                         weights: torch.Tensor, lse: torch.Tensor, tsum: torch.Tensor,
                         inv_tau: float, impl: str) -> torch.Tensor:
    codes, weights = codes.contiguous(), weights.contiguous()
    if impl == "triton":
        return _swav_ce_backward_triton(g.contiguous(), x, codes, weights, lse, tsum, inv_tau)
    return _swav_ce_backward_eager(g, x, codes, weights, lse, tsum, inv_tau)


@_swav_ce_backward_op.register_fake
def _(g, x, codes, weights, lse, tsum, inv_tau, impl):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _swav_ce_setup_context(ctx, inputs, output):
    x, codes, weights, inv_tau, impl = inputs
    _, lse, tsum = output
    ctx.save_for_backward(x, codes, weights, lse, tsum)
    ctx.inv_tau, ctx.impl = inv_tau, impl
    ctx.mark_non_differentiable(lse, tsum)


def _swav_ce_backward(ctx, g_loss, g_lse, g_tsum):
    x, codes, weights, lse, tsum = ctx.saved_tensors
    dx = _swav_ce_backward_op(g_loss, x, codes, weights, lse, tsum, ctx.inv_tau, ctx.impl)
    return dx, None, None, None, None


_swav_ce_op.register_autograd(_swav_ce_backward, setup_context=_swav_ce_setup_context)

# bf16/fp16 scores meet the fp32 codes, and the loss comes back in fp32
register_fp32_autocast("swav_ce")


# ============================================================================ public function
def swav_loss(crop_scores: Union[Sequence[torch.Tensor], torch.Tensor],
              crops_for_assign: Sequence[int] = (0, 1), tau: float = 0.1, eps: float = 0.05,
              n_iters: int = 3, group=None,
              queue_scores: Optional[Sequence[Optional[torch.Tensor]]] = None, *,
              impl: str = "auto") -> torch.Tensor:
    """SwAV swapped-prediction loss with fused Sinkhorn codes and a fused soft cross-entropy.

    ``loss = mean_{c in crops_for_assign} 1/(V-1) sum_{v != c} -mean_i sum_k q^c_ik
    log_softmax(out_v / tau)_ik`` with ``q^c = sinkhorn(out_c)`` (no gradient; with
    ``queue_scores[a]`` given, those rows are prepended before Sinkhorn and the last B rows of
    the codes kept). On the Triton path each crop's scores are read once forward and once
    backward; the gradient is ``(softmax(out_v / tau) sum_k t_k - t) / tau`` with ``t`` the
    weighted codes.

    Args:
        crop_scores: prototype scores of the V >= 2 crops: a list/tuple of (B x K) tensors
            (same B, K, dtype, device; stacked into one V x B x K tensor) or one (V x B x K)
            tensor (no copy).
        crops_for_assign: crops whose codes are targets, default ``(0, 1)``.
        tau: softmax temperature, default 0.1.
        eps, n_iters: Sinkhorn parameters, defaults 0.05 and 3.
        group: process group of the Sinkhorn all-reduces; the loss is the local mean (DDP's
            gradient averaging makes it the global one).
        queue_scores: optional list, one per assignment crop, of (L x K) queue scores or None.
        impl: ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns:
        The scalar loss in the scores' dtype (accumulated in float32; float32 under autocast),
        differentiable with respect to the crop scores.
    """
    crops, assign, queues, tau, eps, n_iters = check_swav_args(
        crop_scores, crops_for_assign, tau, eps, n_iters, queue_scores)
    V = len(crops)
    B = crops[0].shape[0]
    path = resolve_impl(impl, crops[0], name="crop_scores")
    with torch.no_grad():
        codes = []
        for a, c in enumerate(assign):
            out = crops[c].detach()
            if queues[a] is not None:
                out = torch.cat([queues[a].detach().to(out.dtype), out])
            codes.append(sinkhorn(out, eps=eps, n_iters=n_iters, group=group, impl=path)[-B:])
    A = len(assign)
    x = crop_scores if isinstance(crop_scores, torch.Tensor) else torch.stack(crops)
    q = torch.stack(codes)  # A x B x K, float32 (float64 on the float64 torch path)
    w = torch.zeros(V, A, dtype=q.dtype)
    for a, c in enumerate(assign):
        w[:, a] = 1.0 / (A * (V - 1) * B)
        w[c, a] = 0.0
    loss, _, _ = _swav_ce_op(x, q, w.to(x.device), 1.0 / tau, path)
    return loss
