"""Triton kernels of the Sinkhorn passes (see :mod:`deepclust.ops.sinkhorn_knopp`).

A score tile is read from a B x K matrix or recomputed from ``z`` and the prototypes with
``tl.dot``; the column pass writes per-chunk (max, sum of exp) partials that torch combines in a
fixed order, the row pass keeps ``a`` or writes the codes. No atomics.
"""
from __future__ import annotations

import triton
import triton.language as tl

_NEG = tl.constexpr(-1.0e30)  # finite "minus infinity" for running maxima


@triton.jit
def _score_tile(S, Z, P, rows, cols, mask_r, mask_c, D, stride_sb, stride_sk, stride_zb,
                stride_zd, stride_pk, stride_pd, inv_scale, FROM_EMB: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                DOT_PREC: tl.constexpr):
    """fp32 tile of scores * inv_scale (rows x cols); masked entries are garbage (finite)."""
    if FROM_EMB:
        acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < D
            a = tl.load(Z + rows[:, None] * stride_zb + offs_d[None, :] * stride_zd,
                        mask=mask_r[:, None] & mask_d[None, :], other=0.0)
            b = tl.load(P + cols[None, :] * stride_pk + offs_d[:, None] * stride_pd,
                        mask=mask_d[:, None] & mask_c[None, :], other=0.0)
            if DOT_PREC == "upcast":  # bf16 in the CPU interpreter, whose bf16 dot is wrong
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc, input_precision=DOT_PREC)
        x = acc * inv_scale
    else:
        x = tl.load(S + rows[:, None] * stride_sb + cols[None, :] * stride_sk,
                    mask=mask_r[:, None] & mask_c[None, :], other=0.0).to(tl.float32) * inv_scale
    return x


@triton.jit
def _sk_col_pass_kernel(S, Z, P, LA, PM, PS, B, K, D, rows_per_prog, stride_sb, stride_sk,
                        stride_zb, stride_zd, stride_pk, stride_pd, inv_eps,
                        USE_LA: tl.constexpr, FROM_EMB: tl.constexpr, BLOCK_B: tl.constexpr,
                        BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr):
    """Partial column logsumexp of S + a over one chunk of rows: (max, sum exp(. - max))."""
    pid_c = tl.program_id(0)
    pid_k = tl.program_id(1)
    cols = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_c = cols < K
    row0 = pid_c.to(tl.int64) * rows_per_prog
    m = tl.full((BLOCK_K,), _NEG, dtype=tl.float32)
    s = tl.zeros((BLOCK_K,), dtype=tl.float32)
    for r in range(0, rows_per_prog, BLOCK_B):
        rows = row0 + r + tl.arange(0, BLOCK_B)
        mask_r = rows < B
        x = _score_tile(S, Z, P, rows, cols, mask_r, mask_c, D, stride_sb, stride_sk,
                        stride_zb, stride_zd, stride_pk, stride_pd, inv_eps, FROM_EMB,
                        BLOCK_B, BLOCK_K, BLOCK_D, DOT_PREC)
        if USE_LA:
            la = tl.load(LA + rows, mask=mask_r, other=0.0)
            x = x + la[:, None]
        x = tl.where(mask_r[:, None] & mask_c[None, :], x, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[None, :]), axis=0)
        m = m_new
    out = pid_c.to(tl.int64) * K + cols
    tl.store(PM + out, m, mask=mask_c)
    tl.store(PS + out, s, mask=mask_c)


@triton.jit
def _shifted_tile(S, Z, P, LB, rows, mask_r, k0, K, D, stride_sb, stride_sk, stride_zb,
                  stride_zd, stride_pk, stride_pd, inv_eps, FROM_EMB: tl.constexpr,
                  BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                  DOT_PREC: tl.constexpr):
    """Columns ``k0 ...`` of ``S / eps + b`` (-inf outside the matrix), their indices and mask."""
    cols = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
    mask_c = cols < K
    x = _score_tile(S, Z, P, rows, cols, mask_r, mask_c, D, stride_sb, stride_sk,
                    stride_zb, stride_zd, stride_pk, stride_pd, inv_eps, FROM_EMB,
                    BLOCK_B, BLOCK_K, BLOCK_D, DOT_PREC)
    lb = tl.load(LB + cols, mask=mask_c, other=0.0)
    return cols, mask_c, tl.where(mask_r[:, None] & mask_c[None, :], x + lb[None, :], float("-inf"))


@triton.jit
def _sk_row_pass_kernel(S, Z, P, LB, LA, OUT, B, K, D, stride_sb, stride_sk, stride_zb,
                        stride_zd, stride_pk, stride_pd, inv_eps, WRITE: tl.constexpr,
                        FROM_EMB: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr,
                        BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr):
    """a_i = -logsumexp_j(S_ij + b_j); with WRITE, also OUT = exp(S + b + a) (rows sum to 1)."""
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    mask_r = rows < B
    m = tl.full((BLOCK_B,), _NEG, dtype=tl.float32)
    s = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        _, _, x = _shifted_tile(S, Z, P, LB, rows, mask_r, k0, K, D, stride_sb, stride_sk,
                                stride_zb, stride_zd, stride_pk, stride_pd, inv_eps, FROM_EMB,
                                BLOCK_B, BLOCK_K, BLOCK_D, DOT_PREC)
        m_new = tl.maximum(m, tl.max(x, axis=1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
        m = m_new
    lse = tl.where(mask_r, m + tl.log(tl.where(mask_r, s, 1.0)), 0.0)
    if WRITE:
        for k0 in range(0, K, BLOCK_K):
            cols, mask_c, x = _shifted_tile(S, Z, P, LB, rows, mask_r, k0, K, D, stride_sb,
                                            stride_sk, stride_zb, stride_zd, stride_pk, stride_pd,
                                            inv_eps, FROM_EMB, BLOCK_B, BLOCK_K, BLOCK_D, DOT_PREC)
            q = tl.exp(x - lse[:, None])  # exp(-inf) = 0 outside the matrix
            tl.store(OUT + rows[:, None] * K + cols[None, :], q,
                     mask=mask_r[:, None] & mask_c[None, :])
    else:
        tl.store(LA + rows, -lse, mask=mask_r)
