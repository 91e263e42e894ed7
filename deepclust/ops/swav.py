"""Fused Sinkhorn-Knopp codes and SwAV's swapped-prediction loss.

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
from ``z`` (B x d) and the prototypes (K x d) on every pass and never stores the scores.

The loss kernel reads each crop's scores once: per row an online logsumexp of ``x = out / tau``
over K tiles together with ``sum_k t_k x_k`` and ``sum_k t_k``, where the target ``t`` is the
weighted sum of the assignment crops' codes; the backward kernel writes
``(softmax(x) sum_k t_k - t) / tau`` times the incoming gradient. No B x K temporary is made
besides the codes and the gradient.

No kernel accumulates across programs (no atomics): every cross-program sum is a buffer of
partials reduced by torch in a fixed order, so equal inputs give bitwise equal outputs. Tiles
come from :func:`_sinkhorn_config` and :func:`_swav_ce_config`, pure functions of the shapes,
dtype and target that the compile gate (``bench/gpu_compile.py``) checks for register spills.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch

from .._common import all_reduce_max, all_reduce_sum, check_same_device, check_tensor, get_group, world_size

from ._plumbing import HAS_TRITON, kernel_target, next_pow2, resolve_impl
from .._common import check_sinkhorn_args, check_swav_args

if HAS_TRITON:
    import triton
    import triton.language as tl
else:  # pragma: no cover - the torch path needs no triton
    triton = None

__all__ = ["sinkhorn", "sinkhorn_from_embeddings", "swav_loss"]

# ============================================================================ Triton kernels
if HAS_TRITON:
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
            cols = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            mask_c = cols < K
            x = _score_tile(S, Z, P, rows, cols, mask_r, mask_c, D, stride_sb, stride_sk,
                            stride_zb, stride_zd, stride_pk, stride_pd, inv_eps, FROM_EMB,
                            BLOCK_B, BLOCK_K, BLOCK_D, DOT_PREC)
            lb = tl.load(LB + cols, mask=mask_c, other=0.0)
            x = tl.where(mask_r[:, None] & mask_c[None, :], x + lb[None, :], float("-inf"))
            m_new = tl.maximum(m, tl.max(x, axis=1))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
            m = m_new
        lse = tl.where(mask_r, m + tl.log(tl.where(mask_r, s, 1.0)), 0.0)
        if WRITE:
            for k0 in range(0, K, BLOCK_K):
                cols = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
                mask_c = cols < K
                x = _score_tile(S, Z, P, rows, cols, mask_r, mask_c, D, stride_sb, stride_sk,
                                stride_zb, stride_zd, stride_pk, stride_pd, inv_eps, FROM_EMB,
                                BLOCK_B, BLOCK_K, BLOCK_D, DOT_PREC)
                lb = tl.load(LB + cols, mask=mask_c, other=0.0)
                mask = mask_r[:, None] & mask_c[None, :]
                q = tl.exp(tl.where(mask, x + lb[None, :] - lse[:, None], float("-inf")))
                tl.store(OUT + rows[:, None] * K + cols[None, :], q, mask=mask)
        else:
            tl.store(LA + rows, -lse, mask=mask_r)

    @triton.jit
    def _scores_and_targets(X, Q, W, v, rows, cols, mask, B, K, A, stride_xv, stride_xb,
                            stride_xk, inv_tau, BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr):
        """One (rows x cols) tile of crop v: x = X / tau and the soft target t = sum_a W[v, a] Q[a]."""
        x = tl.load(X + v * stride_xv + rows[:, None] * stride_xb + cols[None, :] * stride_xk,
                    mask=mask, other=0.0).to(tl.float32) * inv_tau
        t = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
        for a in range(0, A):
            w = tl.load(W + v * A + a)
            q = tl.load(Q + (rows[:, None] + a * B) * K + cols[None, :], mask=mask, other=0.0)
            t += w * q
        return x, t

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
            cols = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            mask_c = cols < K
            mask = mask_r[:, None] & mask_c[None, :]
            x, t = _scores_and_targets(X, Q, W, v, rows, cols, mask, B, K, A, stride_xv,
                                       stride_xb, stride_xk, inv_tau, BLOCK_B, BLOCK_K)
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
            cols = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            mask_c = cols < K
            mask = mask_r[:, None] & mask_c[None, :]
            x, t = _scores_and_targets(X, Q, W, v, rows, cols, mask, B, K, A, stride_xv,
                                       stride_xb, stride_xk, inv_tau, BLOCK_B, BLOCK_K)
            dx = g * (tl.exp(x - lse[:, None]) * ts[:, None] - t)
            tl.store(DX + v * B * K + rows[:, None] * K + cols[None, :],
                     dx.to(DX.dtype.element_ty), mask=mask)


# ============================================================================ launchers
def _empty(shape, **kw) -> torch.Tensor:
    """Allocation of every kernel output (the tests swap in a NaN fill)."""
    return torch.empty(shape, **kw)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


class _SinkhornConfig(NamedTuple):
    """Launch configuration of the two Sinkhorn passes (see :func:`_sinkhorn_config`)."""
    block_b: int  # rows per tile
    block_k: int  # prototypes per tile
    block_d: int  # feature chunk of a recomputed score tile (16 when reading scores)
    num_warps: int
    num_stages: int
    dot_precision: str  # "ieee" (fp32), "tf32" (16-bit: native dot) or "upcast" (work-around)
    rows_per_prog: int  # column pass: rows of one program's chunk (a multiple of block_b)
    n_chunks: int  # column pass: row chunks, i.e. (max, sum) partials per column


# Programs of one column pass: enough to fill a GPU; the same in the interpreter, whose runs
# then combine as many partials as the GPU's. Fixed (not per SM count) so that the order of the
# column reduction, hence every bit of the codes, depends on the shapes alone.
_COL_PASS_PROGRAMS = 1024


def _sinkhorn_config(B: int, K: int, D: int, dtype: torch.dtype, target: str) -> _SinkhornConfig:
    """Tiles of the Sinkhorn passes: a pure function of (B, K, d, dtype, target).

    ``D = 0`` reads a B x K score matrix: 32 x 64 tiles, 4 warps (16 elements a thread; the
    write pass holds a score tile, its pointers and the codes' pointers). ``D > 0`` recomputes
    every score tile with ``tl.dot``: 64 x 64 tiles on 8 warps. fp32 products are exact
    ("ieee": an FMA dot, whose operands sit in registers), over d in chunks of 16 with 3
    stages; fp16/bf16 use the native tensor-core dot with fp32 accumulation, d in chunks of
    32, 2 stages, 4 warps for tiles narrower than 64 prototypes (tiles read off the compile
    gate, ``bench/gpu_compile.py``). ``target`` is
    ``kernel_target(device)``; the one difference it makes is the interpreter work-around:
    bf16 dots are upcast to fp32 ("upcast") because Triton's interpreter computes bf16
    ``tl.dot`` wrongly. Every block is a power of two >= 16 (``tl.dot``'s minimum).
    """
    block_k = max(16, min(64, next_pow2(K)))
    if D and dtype == torch.float32:  # FMA dot: operands in registers, narrow d chunks
        block_b, block_d, warps, stages = 64, 16, 8, 3
    elif D:  # tensor-core dot
        block_b, block_d, stages = 64, max(16, min(32, next_pow2(D))), 2
        warps = 8 if block_k == 64 else 4
    else:
        block_b, block_d, warps, stages = 32, 16, 4, 2
    if dtype == torch.float32:
        prec = "ieee"
    elif dtype == torch.bfloat16 and D and target == "interpreter":
        prec = "upcast"
    else:
        prec = "tf32"  # 16-bit operands: input_precision is moot, the dot is native
    n_ktiles = _cdiv(K, block_k)
    n_rblocks = _cdiv(B, block_b)
    n_chunks = max(1, min(n_rblocks, _cdiv(_COL_PASS_PROGRAMS, n_ktiles)))
    rows_per_prog = _cdiv(n_rblocks, n_chunks) * block_b
    return _SinkhornConfig(block_b, block_k, block_d, warps, stages, prec, rows_per_prog,
                           _cdiv(B, rows_per_prog))


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


class _Source:
    """Where the scores come from: a B x K tensor, or z (B x d) @ prototypes (K x d)^T."""

    def __init__(self, scores=None, z=None, prototypes=None):
        self.scores, self.z, self.p = scores, z, prototypes
        if scores is not None:
            self.B, self.K = scores.shape
            self.D = 0
            self.device = scores.device
        else:
            self.B, self.D = z.shape
            self.K = prototypes.shape[0]
            self.device = z.device

    # ---- Triton launch arguments
    def kernel_args(self):
        if self.scores is not None:
            s = self.scores
            return (s, s, s), (s.stride(0), s.stride(1), 0, 0, 0, 0), False
        z, p = self.z, self.p
        return (z, z, p), (0, 0, z.stride(0), z.stride(1), p.stride(0), p.stride(1)), True

    @property
    def dtype(self):
        return (self.scores if self.scores is not None else self.z).dtype

    # ---- torch path: float32/float64 chunk of scores (rows i0:i1)
    def chunk(self, i0, i1, ct):
        if self.scores is not None:
            return self.scores[i0:i1].to(ct, copy=True)
        return self.z[i0:i1].to(ct) @ self.p.to(ct).t()


def _combine_partials(pm: torch.Tensor, ps: torch.Tensor, group) -> torch.Tensor:
    """Log column scaling b = -logsumexp from per-chunk (max, sum) partials, across processes."""
    m = pm.max(dim=0).values
    s = (ps * torch.exp(pm - m)).sum(dim=0)
    if get_group(group) is not None:
        mg = all_reduce_max(m, group)
        s = all_reduce_sum(s * torch.exp(m - mg), group)
        m = mg
    return -(m + torch.log(s))


def _sinkhorn_triton(src: _Source, eps: float, n_iters: int, group=None) -> torch.Tensor:
    B, K, D, dev = src.B, src.K, src.D, src.device
    cfg = _sinkhorn_config(B, K, D, src.dtype, kernel_target(dev))
    ptrs, strides, from_emb = src.kernel_args()
    n_ktiles = triton.cdiv(K, cfg.block_k)
    n_rblocks = triton.cdiv(B, cfg.block_b)
    tiles = dict(FROM_EMB=from_emb, BLOCK_B=cfg.block_b, BLOCK_K=cfg.block_k,
                 BLOCK_D=cfg.block_d, DOT_PREC=cfg.dot_precision, num_warps=cfg.num_warps,
                 num_stages=cfg.num_stages)
    f32 = dict(device=dev, dtype=torch.float32)
    pm = _empty((cfg.n_chunks, K), **f32)
    ps = _empty((cfg.n_chunks, K), **f32)
    la = torch.zeros(B, **f32)
    out = _empty((B, K), **f32)
    inv_eps = 1.0 / eps
    for it in range(n_iters):
        _sk_col_pass_kernel[(cfg.n_chunks, n_ktiles)](
            *ptrs, la, pm, ps, B, K, max(D, 1), cfg.rows_per_prog, *strides, inv_eps,
            USE_LA=it > 0, **tiles)
        lb = _combine_partials(pm, ps, group)  # a fixed-order reduction: deterministic
        _sk_row_pass_kernel[(n_rblocks,)](
            *ptrs, lb, la, out, B, K, max(D, 1), *strides, inv_eps, WRITE=it == n_iters - 1,
            **tiles)
    return out


# The linear-domain torch path is taken when every row and column of exp((S - max S) / eps)
# keeps at least this much mass; below it, mass may have underflowed and the log domain is used.
_SAFE_MASS = 1e-20


def _sinkhorn_torch(src: _Source, eps: float, n_iters: int, group=None,
                    chunk_rows: int = 8192) -> torch.Tensor:
    """Codes in eager torch: the linear-domain scaling-vector form when nothing underflows,
    else the log-domain passes of the kernels (float64 stays float64)."""
    out = _sinkhorn_torch_linear(src, eps, n_iters, group, chunk_rows)
    return out if out is not None else _sinkhorn_torch_log(src, eps, n_iters, group, chunk_rows)


def _sinkhorn_torch_linear(src: _Source, eps: float, n_iters: int, group=None,
                           chunk_rows: int = 8192) -> Optional[torch.Tensor]:
    """``E = exp((S - max S) / eps)`` once, kept in the output buffer, then the scaling vectors
    ``c`` (prototypes) and ``a`` (samples) by two mat-vecs per iteration; the codes are
    ``E_bk c_k / sum_k' E_bk' c_k'``. Returns None (on every rank alike) when a row or a column
    of ``E`` has less than ``_SAFE_MASS``: then the log-domain path is exact where this is not."""
    ct = torch.float64 if (src.scores if src.scores is not None else src.z).dtype == torch.float64 \
        else torch.float32
    B, K = src.B, src.K
    out = torch.empty(B, K, dtype=ct, device=src.device)
    m = torch.full((), float("-inf"), dtype=ct, device=src.device)
    for i0 in range(0, B, chunk_rows):
        i1 = min(B, i0 + chunk_rows)
        out[i0:i1] = src.chunk(i0, i1, ct)
        m = torch.maximum(m, out[i0:i1].max())
    m = all_reduce_max(m, group)
    e = out.sub_(m).div_(eps).exp_()
    cols = all_reduce_sum(e.sum(0), group)
    unsafe = ((e.sum(1).min() < _SAFE_MASS) | (cols.min() < _SAFE_MASS)).to(ct)
    if all_reduce_max(unsafe, group).item() > 0:
        return None
    b_total = B * world_size(group)
    a = None
    for it in range(n_iters):
        c = 1.0 / (K * (cols if it == 0 else all_reduce_sum(torch.mv(e.t(), a), group)))
        if it < n_iters - 1:
            a = 1.0 / (b_total * torch.mv(e, c))
    r = torch.mv(e, c)
    return e.mul_(c).div_(r[:, None])


def _sinkhorn_torch_log(src: _Source, eps: float, n_iters: int, group=None,
                        chunk_rows: int = 8192) -> torch.Tensor:
    """The same log-domain passes as the kernels, in eager torch, chunk by chunk of rows."""
    ct = torch.float64 if (src.scores if src.scores is not None else src.z).dtype == torch.float64 \
        else torch.float32
    B, K = src.B, src.K
    bounds = [(i, min(B, i + chunk_rows)) for i in range(0, B, chunk_rows)]
    la = torch.zeros(B, dtype=ct, device=src.device)
    out = torch.empty(B, K, dtype=ct, device=src.device)
    for it in range(n_iters):
        pm = torch.empty(len(bounds), K, dtype=ct, device=src.device)
        ps = torch.empty_like(pm)
        for c, (i0, i1) in enumerate(bounds):
            x = src.chunk(i0, i1, ct).div_(eps).add_(la[i0:i1, None])
            pm[c] = x.max(dim=0).values
            ps[c] = x.sub_(pm[c]).exp_().sum(dim=0)
        lb = _combine_partials(pm, ps, group)
        for i0, i1 in bounds:
            x = src.chunk(i0, i1, ct).div_(eps).add_(lb)
            if it == n_iters - 1:
                out[i0:i1] = torch.softmax(x, dim=1)
            else:
                la[i0:i1] = -torch.logsumexp(x, dim=1)
    return out


def _swav_ce_forward_triton(x, codes, weights, inv_tau):
    V, B, K = x.shape
    A = codes.shape[0]
    cfg = _swav_ce_config(K, x.dtype, kernel_target(x.device))
    f32 = dict(device=x.device, dtype=torch.float32)
    row_loss = _empty((V, B), **f32)
    lse = _empty((V, B), **f32)
    tsum = _empty((V, B), **f32)
    _swav_ce_fwd_kernel[(triton.cdiv(B, cfg.block_b), V)](
        x, codes, weights, row_loss, lse, tsum, B, K, A, x.stride(0), x.stride(1), x.stride(2),
        inv_tau, BLOCK_B=cfg.block_b, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)
    return row_loss.sum(), lse, tsum  # per-row losses summed by torch: deterministic


def _swav_ce_backward_triton(g, x, codes, weights, lse, tsum, inv_tau):
    V, B, K = x.shape
    A = codes.shape[0]
    cfg = _swav_ce_config(K, x.dtype, kernel_target(x.device))
    dx = _empty((V, B, K), device=x.device, dtype=x.dtype)
    _swav_ce_bwd_kernel[(triton.cdiv(B, cfg.block_b), V)](
        g, x, codes, weights, lse, tsum, dx, B, K, A, x.stride(0), x.stride(1), x.stride(2),
        inv_tau, BLOCK_B=cfg.block_b, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages)
    return dx


# ============================================================================ torch.library ops
@torch.library.custom_op("deepclust::sinkhorn_scores", mutates_args=())
def _sinkhorn_scores_op(scores: torch.Tensor, eps: float, n_iters: int) -> torch.Tensor:
    return _sinkhorn_triton(_Source(scores=scores), eps, n_iters)


@_sinkhorn_scores_op.register_fake
def _(scores, eps, n_iters):
    return scores.new_empty(scores.shape, dtype=torch.float32)


@torch.library.custom_op("deepclust::sinkhorn_embeddings", mutates_args=())
def _sinkhorn_embeddings_op(z: torch.Tensor, prototypes: torch.Tensor, eps: float,
                            n_iters: int) -> torch.Tensor:
    return _sinkhorn_triton(_Source(z=z, prototypes=prototypes), eps, n_iters)


@_sinkhorn_embeddings_op.register_fake
def _(z, prototypes, eps, n_iters):
    return z.new_empty((z.shape[0], prototypes.shape[0]), dtype=torch.float32)


@torch.library.custom_op("deepclust::swav_ce", mutates_args=())
def _swav_ce_op(x: torch.Tensor, codes: torch.Tensor, weights: torch.Tensor,
                inv_tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _swav_ce_forward_triton(x, codes, weights, inv_tau)


@_swav_ce_op.register_fake
def _(x, codes, weights, inv_tau):
    V, B, _ = x.shape
    return (x.new_empty((), dtype=torch.float32), x.new_empty((V, B), dtype=torch.float32),
            x.new_empty((V, B), dtype=torch.float32))


@torch.library.custom_op("deepclust::swav_ce_backward", mutates_args=())
def _swav_ce_backward_op(g: torch.Tensor, x: torch.Tensor, codes: torch.Tensor,
                         weights: torch.Tensor, lse: torch.Tensor, tsum: torch.Tensor,
                         inv_tau: float) -> torch.Tensor:
    return _swav_ce_backward_triton(g.contiguous(), x, codes, weights, lse, tsum, inv_tau)


@_swav_ce_backward_op.register_fake
def _(g, x, codes, weights, lse, tsum, inv_tau):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _swav_ce_setup_context(ctx, inputs, output):
    x, codes, weights, inv_tau = inputs
    _, lse, tsum = output
    ctx.save_for_backward(x, codes, weights, lse, tsum)
    ctx.inv_tau = inv_tau
    ctx.mark_non_differentiable(lse, tsum)


def _swav_ce_backward(ctx, g_loss, g_lse, g_tsum):
    x, codes, weights, lse, tsum = ctx.saved_tensors
    dx = _swav_ce_backward_op(g_loss, x, codes, weights, lse, tsum, ctx.inv_tau)
    return dx, None, None, None


_swav_ce_op.register_autograd(_swav_ce_backward, setup_context=_swav_ce_setup_context)


# ============================================================================ public functions
def _check_triton_dtype(t: torch.Tensor, name: str, impl: str) -> None:
    if impl == "triton" and t.dtype == torch.float64:
        raise TypeError(f"{name}: impl='triton' takes float32/float16/bfloat16, got float64 "
                        "(use impl='torch')")


def _pick(impl: str, t: torch.Tensor, name: str) -> str:
    path = resolve_impl(impl, t)
    if impl == "auto" and t.dtype == torch.float64:
        return "torch"
    _check_triton_dtype(t, name, path)
    return path


@torch.compiler.disable
def _distributed_triton(src, eps, n_iters, group):
    return _sinkhorn_triton(src, eps, n_iters, group)


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
    path = _pick(impl, scores, "scores")
    src = _Source(scores=scores)
    if path == "torch":
        return _sinkhorn_torch(src, eps, n_iters, group)
    if get_group(group) is not None:
        return _distributed_triton(src, eps, n_iters, group)
    return _sinkhorn_scores_op(scores, eps, n_iters)


@torch.no_grad()
def sinkhorn_from_embeddings(z: torch.Tensor, prototypes: torch.Tensor, eps: float = 0.05,
                             n_iters: int = 3, group=None, *, impl: str = "auto") -> torch.Tensor:
    """:func:`sinkhorn` of ``z @ prototypes.T`` without storing the B x K scores.

    Each pass recomputes its score tiles from ``z`` and ``prototypes`` (``tl.dot`` on the
    Triton path; row chunks of 8192 on the torch path).

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
    z = z.detach()
    prototypes = prototypes.detach().to(z.dtype)
    path = _pick(impl, z, "z")
    src = _Source(z=z, prototypes=prototypes)
    if path == "torch":
        return _sinkhorn_torch(src, eps, n_iters, group)
    if get_group(group) is not None:
        return _distributed_triton(src, eps, n_iters, group)
    return _sinkhorn_embeddings_op(z, prototypes, eps, n_iters)


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
        The scalar loss in the scores' dtype (accumulated in float32), differentiable with
        respect to the crop scores.
    """
    crops, assign, queues, tau, eps, n_iters = check_swav_args(
        crop_scores, crops_for_assign, tau, eps, n_iters, queue_scores)
    V = len(crops)
    B, K = crops[0].shape
    dtype = crops[0].dtype
    path = _pick(impl, crops[0], "crop_scores")
    with torch.no_grad():
        codes = []
        for a, c in enumerate(assign):
            out = crops[c].detach()
            if queues[a] is not None:
                out = torch.cat([queues[a].detach().to(out.dtype), out])
            codes.append(sinkhorn(out, eps=eps, n_iters=n_iters, group=group, impl=path)[-B:])
    A = len(assign)
    if path == "torch":
        ct = torch.float64 if dtype == torch.float64 else torch.float32
        loss = crops[0].new_zeros((), dtype=ct)
        for a, c in enumerate(assign):
            q = codes[a]
            for v in range(V):
                if v != c:
                    logp = torch.log_softmax(crops[v].to(ct) / tau, dim=1)
                    loss = loss - (q * logp).sum() / B
        return (loss / (A * (V - 1))).to(dtype)
    x = crop_scores if isinstance(crop_scores, torch.Tensor) else torch.stack(crops)
    q = torch.stack(codes)  # A x B x K float32
    w = torch.zeros(V, A, dtype=torch.float32)
    for a, c in enumerate(assign):
        w[:, a] = 1.0 / (A * (V - 1) * B)
        w[c, a] = 0.0
    w = w.to(x.device)
    loss, _, _ = _swav_ce_op(x, q, w, 1.0 / tau)
    return loss.to(dtype)
