"""Fused DEC ops: Student's t soft assignment, target distribution, KL loss, hard assignment.

The Triton path never materialises the ``N x K`` matrices on the loss path: distances come from
``tl.dot`` tiles (``||z||^2 + ||mu||^2 - 2 z mu^T``, clamped at 0, the feature dimension swept
in chunks), each row block sweeps the ``K`` tiles with an online logsumexp, and the loss kernels
form the gradients of ``z`` and ``centers`` in the forward pass (``P`` is a constant), so the
backward only scales them.

Every reduction across programs is deterministic (no atomics): a row-major kernel owns its rows
(loss, row statistics, ``dL/dz``), a column-major kernel owns a tile of centres over one slice
of the rows and writes its partial column sums ``f`` or partial ``dL/dcenters``; torch sums the
partials in a fixed order. Extra memory is ``O(N + K d)``: two fp32 row statistics (``2 N``),
the partial column sums (``S x K``) and the partial centre gradient (``S x K x d``, fp32), with
the number of row slices ``S`` capped so that ``S x K x d <= max(K d, 2^24)`` elements (64 MB).

``log q`` is computed as ``s - logsumexp(s)`` with ``s = -(alpha+1)/2 * log1p(d/alpha)``, so far
away points give finite losses and gradients where the reference's ``q.log()`` underflows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from .._common import check_positive, check_tensor

from ._plumbing import HAS_TRITON, kernel_target, next_pow2, num_programs, resolve_impl
from .._common import check_dec_loss_args, check_z_centers

__all__ = ["soft_assign", "target_distribution", "dec_loss", "hard_assign"]

# Precision of the fp32 tl.dot tiles: "tf32x3" is close to fp32 and much faster than "ieee" on
# tensor-core GPUs. All dots take fp32 tiles (16-bit inputs are upcast on load, which is exact).
_DOT_PRECISION = "tf32x3"
# Tests set this to fill every kernel output with NaN before the kernel writes it.
_POISON_OUTPUTS = False
# Cap, in fp32 elements, of the per-slice partial buffers of the column-major kernels.
_PARTIAL_ELEMS = 1 << 24
# Rows per chunk of the torch path, as a budget of chunk x K elements.
_TORCH_CHUNK_ELEMS = 1 << 24

if HAS_TRITON:
    import triton
    import triton.language as tl

    # ------------------------------------------------------------------------- Triton kernels
    @triton.jit
    def _log1p(x):
        # accurate log(1 + x) from log: log(u) * x / (u - 1) with u = 1 + x (Goldberg)
        u = 1.0 + x
        den = tl.where(u == 1.0, 1.0, u - 1.0)
        return tl.where(u == 1.0, x, tl.log(u) * (x / den))

    @triton.jit
    def _sqdist_tile(
        z_ptr, mu_ptr, rows, rmask, cols, cmask, D,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
        PREC: tl.constexpr,
    ):
        """Squared distances of a row tile to a centre tile, the features swept BLOCK_D wide."""
        acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        zz = tl.zeros([BLOCK_N], dtype=tl.float32)
        mm = tl.zeros([BLOCK_K], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            dmask = offs_d < D
            zt = tl.load(z_ptr + rows[:, None] * D + offs_d[None, :],
                         mask=rmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
            mt = tl.load(mu_ptr + cols[:, None] * D + offs_d[None, :],
                         mask=cmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
            acc += tl.dot(zt, tl.trans(mt), input_precision=PREC)
            zz += tl.sum(zt * zt, axis=1)
            mm += tl.sum(mt * mt, axis=1)
        return tl.maximum(zz[:, None] + mm[None, :] - 2.0 * acc, 0.0)

    @triton.jit
    def _grad_tile(
        dist, rows, rmask, cols, cmask, lse, rstat, log_s, tgt_ptr, f_ptr, K,
        coef, inv_alpha, grad_scale, HAS_TARGET: tl.constexpr,
    ):
        """dL/d(dist) and the loss terms of one tile. ``rstat``: the row sums of the cached
        target, or 1 / sum_j q_ij^2 / f_j for the batch target (whose log is ``-log_s``)."""
        valid = rmask[:, None] & cmask[None, :]
        x = dist * inv_alpha
        logq = tl.where(valid, coef * _log1p(x) - lse[:, None], float("-inf"))
        q = tl.exp(logq)
        logq = tl.where(valid, logq, 0.0)  # padding: finite, its terms are masked
        w = 1.0 / (1.0 + x)
        if HAS_TARGET:
            p = tl.load(tgt_ptr + rows[:, None] * K + cols[None, :],
                        mask=valid, other=0.0).to(tl.float32)
            safe_p = tl.where(p > 0.0, p, 1.0)
            term = tl.where(p > 0.0, p * (tl.log(safe_p) - logq), 0.0)
            g = grad_scale * w * (p - rstat[:, None] * q)
        else:
            fj = tl.load(f_ptr + cols, mask=cmask, other=1.0)
            safe_f = tl.where(fj > 0.0, fj, 1.0)
            p = tl.where(q > 0.0, q * (q / safe_f[None, :]), 0.0) * rstat[:, None]
            term = tl.where(p > 0.0, p * (logq - tl.log(safe_f)[None, :] - log_s[:, None]), 0.0)
            g = grad_scale * w * (p - q)
        return tl.where(valid, g, 0.0), tl.where(valid, term, 0.0)

    @triton.jit(do_not_specialize=["nprog"])
    def _dec_rows_kernel(
        z_ptr, mu_ptr, lse_ptr, q_ptr,
        N, K, D, coef, inv_alpha, nprog,
        WRITE_Q: tl.constexpr,  # False: row logsumexp only; True: also write q
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
        PREC: tl.constexpr,
    ):
        pid = tl.program_id(0)
        num_rb = tl.cdiv(N, BLOCK_N)
        for rb in range(pid, num_rb, nprog):
            rows = (rb * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
            rmask = rows < N
            m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
            l = tl.zeros([BLOCK_N], dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                cols = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
                cmask = cols < K
                dist = _sqdist_tile(z_ptr, mu_ptr, rows, rmask, cols, cmask, D,
                                    BLOCK_N, BLOCK_K, BLOCK_D, PREC)
                s = tl.where(cmask[None, :], coef * _log1p(dist * inv_alpha), float("-inf"))
                m_new = tl.maximum(m, tl.max(s, axis=1))
                l = l * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
                m = m_new
            lse = m + tl.log(l)
            tl.store(lse_ptr + rows, lse, mask=rmask)
            if WRITE_Q:
                for k0 in range(0, K, BLOCK_K):
                    cols = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
                    cmask = cols < K
                    dist = _sqdist_tile(z_ptr, mu_ptr, rows, rmask, cols, cmask, D,
                                        BLOCK_N, BLOCK_K, BLOCK_D, PREC)
                    valid = rmask[:, None] & cmask[None, :]
                    q = tl.exp(coef * _log1p(dist * inv_alpha) - lse[:, None])
                    tl.store(q_ptr + rows[:, None] * K + cols[None, :],
                             q.to(q_ptr.dtype.element_ty), mask=valid)

    @triton.jit(do_not_specialize=["nprog"])
    def _dec_loss_kernel(
        z_ptr, mu_ptr, tgt_ptr, lse_ptr, f_ptr, rstat_ptr, dz_ptr, loss_ptr,
        N, K, D, coef, inv_alpha, grad_scale, nprog,
        HAS_TARGET: tl.constexpr, NEED_DZ: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_G: tl.constexpr, PREC: tl.constexpr,
    ):
        """Row-major: the loss, the row statistics and dL/dz of features [dg*BLOCK_G, +BLOCK_G)
        (axis 1 of the grid), each program owning whole row blocks."""
        pid = tl.program_id(0)
        dg = tl.program_id(1)
        offs_g = dg * BLOCK_G + tl.arange(0, BLOCK_G)
        gmask = offs_g < D
        num_rb = tl.cdiv(N, BLOCK_N)
        n_store = tl.where(dg == 0, N, 0)  # the row statistics are stored once
        loss_rows = tl.zeros([BLOCK_N], dtype=tl.float32)
        for rb in range(pid, num_rb, nprog):
            rows = (rb * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
            rmask = rows < N
            smask = rows < n_store
            # ---- sweep A: the row statistics of P
            if HAS_TARGET:
                m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
                l = tl.zeros([BLOCK_N], dtype=tl.float32)
                # sum_j p_ij, tile-wise then reduced once: Triton 3.6 asserts on a row sum of a
                # loaded tile accumulated in the loop when the sum has more than one use
                p_acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
                for k0 in range(0, K, BLOCK_K):
                    cols = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
                    cmask = cols < K
                    dist = _sqdist_tile(z_ptr, mu_ptr, rows, rmask, cols, cmask, D,
                                        BLOCK_N, BLOCK_K, BLOCK_D, PREC)
                    s = tl.where(cmask[None, :], coef * _log1p(dist * inv_alpha), float("-inf"))
                    m_new = tl.maximum(m, tl.max(s, axis=1))
                    l = l * tl.exp(m - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
                    m = m_new
                    p = tl.load(tgt_ptr + rows[:, None] * K + cols[None, :],
                                mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
                    p_acc += p
                lse = m + tl.log(l)
                rstat = tl.sum(p_acc, axis=1)
                log_s = rstat  # unused with a cached target
                tl.store(lse_ptr + rows, lse, mask=smask)
            else:
                lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
                ssum = tl.zeros([BLOCK_N], dtype=tl.float32)  # sum_j q_ij^2 / f_j
                for k0 in range(0, K, BLOCK_K):
                    cols = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
                    cmask = cols < K
                    dist = _sqdist_tile(z_ptr, mu_ptr, rows, rmask, cols, cmask, D,
                                        BLOCK_N, BLOCK_K, BLOCK_D, PREC)
                    q = tl.exp(tl.where(cmask[None, :],
                                        coef * _log1p(dist * inv_alpha) - lse[:, None],
                                        float("-inf")))
                    fj = tl.load(f_ptr + cols, mask=cmask, other=1.0)
                    fj = tl.where(fj > 0.0, fj, 1.0)
                    ssum += tl.sum(tl.where(q > 0.0, q * (q / fj[None, :]), 0.0), axis=1)
                ssum = tl.where(rmask, ssum, 1.0)
                log_s = tl.log(ssum)
                rstat = 1.0 / ssum
            tl.store(rstat_ptr + rows, rstat, mask=smask)
            # ---- sweep B: loss and dL/dz = 2 (z_i sum_j g_ij - sum_j g_ij mu_j)
            gsum = tl.zeros([BLOCK_N], dtype=tl.float32)
            dz_acc = tl.zeros([BLOCK_N, BLOCK_G], dtype=tl.float32)
            for k0 in range(0, K, BLOCK_K):
                cols = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
                cmask = cols < K
                dist = _sqdist_tile(z_ptr, mu_ptr, rows, rmask, cols, cmask, D,
                                    BLOCK_N, BLOCK_K, BLOCK_D, PREC)
                g, term = _grad_tile(dist, rows, rmask, cols, cmask, lse, rstat, log_s,
                                     tgt_ptr, f_ptr, K, coef, inv_alpha, grad_scale, HAS_TARGET)
                loss_rows += tl.sum(term, axis=1)
                if NEED_DZ:
                    gsum += tl.sum(g, axis=1)
                    mt = tl.load(mu_ptr + cols[:, None] * D + offs_g[None, :],
                                 mask=cmask[:, None] & gmask[None, :], other=0.0).to(tl.float32)
                    dz_acc += tl.dot(g, mt, input_precision=PREC)
            if NEED_DZ:
                zmask = rmask[:, None] & gmask[None, :]
                zt = tl.load(z_ptr + rows[:, None] * D + offs_g[None, :],
                             mask=zmask, other=0.0).to(tl.float32)
                dz = 2.0 * (zt * gsum[:, None] - dz_acc)
                tl.store(dz_ptr + rows[:, None] * D + offs_g[None, :],
                         dz.to(dz_ptr.dtype.element_ty), mask=zmask)
        tl.store(loss_ptr + dg * nprog + pid, tl.sum(loss_rows, axis=0))

    @triton.jit
    def _dec_cols_kernel(
        z_ptr, mu_ptr, tgt_ptr, lse_ptr, f_ptr, rstat_ptr, out_ptr,
        N, K, D, coef, inv_alpha, grad_scale, rows_per_slice,
        CENTRE_GRAD: tl.constexpr,  # False: partial column sums of q; True: partial dL/dcenters
        HAS_TARGET: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_G: tl.constexpr, PREC: tl.constexpr,
    ):
        """Column-major: centre tile ``program_id(0)`` over the rows of slice ``program_id(1)``
        (features [dg*BLOCK_G, +BLOCK_G) with dg = ``program_id(2)``); writes the slice's partial
        ``f`` (S x K) or partial dL/dcenters = 2 (mu_j sum_i g_ij - sum_i g_ij z_i) (S x K x D)."""
        cols = (tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
        cmask = cols < K
        sl = tl.program_id(1)
        offs_g = tl.program_id(2) * BLOCK_G + tl.arange(0, BLOCK_G)
        gmask = offs_g < D
        r0 = sl * rows_per_slice
        r1 = tl.minimum(N, r0 + rows_per_slice)
        colsum = tl.zeros([BLOCK_K], dtype=tl.float32)
        acc = tl.zeros([BLOCK_K, BLOCK_G], dtype=tl.float32)
        for n0 in range(r0, r1, BLOCK_N):
            rows = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
            rmask = rows < r1
            dist = _sqdist_tile(z_ptr, mu_ptr, rows, rmask, cols, cmask, D,
                                BLOCK_N, BLOCK_K, BLOCK_D, PREC)
            lse = tl.load(lse_ptr + rows, mask=rmask, other=0.0)
            if CENTRE_GRAD:
                rstat = tl.load(rstat_ptr + rows, mask=rmask, other=1.0)
                g, _ = _grad_tile(dist, rows, rmask, cols, cmask, lse, rstat, rstat,
                                  tgt_ptr, f_ptr, K, coef, inv_alpha, grad_scale, HAS_TARGET)
                colsum += tl.sum(g, axis=0)
                zt = tl.load(z_ptr + rows[:, None] * D + offs_g[None, :],
                             mask=rmask[:, None] & gmask[None, :], other=0.0).to(tl.float32)
                acc += tl.dot(tl.trans(g), zt, input_precision=PREC)
            else:
                valid = rmask[:, None] & cmask[None, :]
                s = coef * _log1p(dist * inv_alpha)
                colsum += tl.sum(tl.exp(tl.where(valid, s - lse[:, None], float("-inf"))), axis=0)
        if CENTRE_GRAD:
            omask = cmask[:, None] & gmask[None, :]
            mt = tl.load(mu_ptr + cols[:, None] * D + offs_g[None, :],
                         mask=omask, other=0.0).to(tl.float32)
            tl.store(out_ptr + (sl * K + cols[:, None]) * D + offs_g[None, :],
                     2.0 * (colsum[:, None] * mt - acc), mask=omask)
        else:
            tl.store(out_ptr + sl * K + cols, colsum, mask=cmask)

    @triton.jit(do_not_specialize=["nprog"])
    def _hard_assign_kernel(
        z_ptr, mu_ptr, out_ptr, N, K, D, nprog,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
        PREC: tl.constexpr,
    ):
        pid = tl.program_id(0)
        num_rb = tl.cdiv(N, BLOCK_N)
        for rb in range(pid, num_rb, nprog):
            rows = (rb * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
            rmask = rows < N
            best = tl.full([BLOCK_N], float("inf"), dtype=tl.float32)
            best_idx = tl.zeros([BLOCK_N], dtype=tl.int32)
            for k0 in range(0, K, BLOCK_K):
                cols = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
                cmask = cols < K
                dist = _sqdist_tile(z_ptr, mu_ptr, rows, rmask, cols, cmask, D,
                                    BLOCK_N, BLOCK_K, BLOCK_D, PREC)
                dist = tl.where(cmask[None, :], dist, float("inf"))
                tile_min = tl.min(dist, axis=1)
                tile_arg = tl.argmin(dist, axis=1).to(tl.int32) + k0
                upd = tile_min < best
                best = tl.where(upd, tile_min, best)
                best_idx = tl.where(upd, tile_arg, best_idx)
            tl.store(out_ptr + rows, best_idx.to(tl.int64), mask=rmask)

    @triton.jit
    def _colsum_kernel(q_ptr, f_ptr, N, K, rows_per_slice,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """Partial column sums of q: centre tile ``program_id(0)``, row slice ``program_id(1)``."""
        cols = (tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)).to(tl.int64)
        cmask = cols < K
        sl = tl.program_id(1)
        r0 = sl * rows_per_slice
        r1 = tl.minimum(N, r0 + rows_per_slice)
        acc = tl.zeros([BLOCK_K], dtype=tl.float32)
        for n0 in range(r0, r1, BLOCK_N):
            rows = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
            q = tl.load(q_ptr + rows[:, None] * K + cols[None, :],
                        mask=(rows[:, None] < r1) & cmask[None, :], other=0.0).to(tl.float32)
            acc += tl.sum(q, axis=0)
        tl.store(f_ptr + sl * K + cols, acc, mask=cmask)

    @triton.jit
    def _target_kernel(q_ptr, f_ptr, p_ptr, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = (tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
        rmask = rows < N
        ssum = tl.zeros([BLOCK_N], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            cols = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
            cmask = cols < K
            q = tl.load(q_ptr + rows[:, None] * K + cols[None, :],
                        mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            fj = tl.load(f_ptr + cols, mask=cmask, other=1.0)
            fj = tl.where(fj > 0.0, fj, 1.0)
            ssum += tl.sum(tl.where(q > 0.0, q * (q / fj[None, :]), 0.0), axis=1)
        inv = 1.0 / tl.where(rmask, ssum, 1.0)
        for k0 in range(0, K, BLOCK_K):
            cols = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
            cmask = cols < K
            valid = rmask[:, None] & cmask[None, :]
            q = tl.load(q_ptr + rows[:, None] * K + cols[None, :],
                        mask=valid, other=0.0).to(tl.float32)
            fj = tl.load(f_ptr + cols, mask=cmask, other=1.0)
            fj = tl.where(fj > 0.0, fj, 1.0)
            p = tl.where(q > 0.0, q * (q / fj[None, :]), 0.0) * inv[:, None]
            tl.store(p_ptr + rows[:, None] * K + cols[None, :],
                     p.to(p_ptr.dtype.element_ty), mask=valid)


# ----------------------------------------------------------------------------- launchers
@dataclass(frozen=True)
class _Config:
    """Tiles, warps and stages of the DEC kernels for one (K, d, dtype, target)."""

    block_n: int  # rows per tile of the distance-only kernels (rows, columns, hard assignment)
    block_k: int  # centres per tile of the same
    block_d: int  # feature chunk of their distance dots (the features are swept in chunks)
    num_warps: int
    grad_block_n: int  # rows per tile of the gradient kernels (loss + dL/dz, dL/dcenters)
    grad_block_k: int  # centres per tile of the same
    grad_block_d: int  # feature chunk of their distance dots
    block_g: int  # feature chunk of a gradient accumulator: a grid axis sweeps d by it
    block_g_cached: int  # the same with a cached target (whose tiles take registers)
    grad_warps: int
    num_stages: int
    q_block_n: int  # tiles of the kernels on a given q (target distribution)
    q_block_k: int
    prec: str  # input_precision of every fp32 tl.dot


def _config(K: int, d: int, dtype: torch.dtype, target: str) -> _Config:
    """The tiles of every DEC kernel; the same for the GPU and the interpreter.

    fp32 ``tf32x3`` dots split both operands into two tf32 halves in registers, so the tiles
    stay small: the distance dots sweep the features 16-32 wide, a gradient accumulator
    (``32 x block_g``) is at most 128 wide (64 with a cached target; wider features take more
    programs, each recomputing the distances), and the larger tiles get 8 warps. No software
    pipelining (``num_stages=1``): the feature loops are short and prefetch buffers cost
    registers. All inputs are upcast to fp32 on load (exact for fp16/bf16), so the dtype does
    not change the tiles. ``bench/gpu_compile.py`` finds no register spill in these on sm_80
    and sm_90 with Triton 3.6 and 3.9 (ptxas spills a few bytes in 4-warp gradient tiles and in
    32 x 128 ones with a cached target on sm_80, hence the choices below).
    """
    del dtype, target  # one configuration for every dtype, GPU and interpreter alike
    d_pad = max(16, next_pow2(d))
    k_pad = max(16, next_pow2(K))
    block_k = min(k_pad, 64)
    block_d = min(d_pad, 16 if block_k == 64 else 32)
    return _Config(
        block_n=64, block_k=block_k, block_d=block_d,
        num_warps=8 if (64 + block_k) * block_d >= 2048 else 4,
        grad_block_n=32, grad_block_k=32, grad_block_d=min(d_pad, 32),
        block_g=min(d_pad, 128), block_g_cached=min(d_pad, 64), grad_warps=8,
        num_stages=1, q_block_n=32, q_block_k=min(k_pad, 64), prec=_DOT_PRECISION,
    )


def _new_output(shape, dtype, device):
    if _POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _slices(num_rb: int, other_programs: int, slice_elems: int, device) -> Tuple[int, int]:
    """(row slices S, row blocks per slice) of a column-major kernel: enough programs to fill
    the GPU, at most ``max(1, _PARTIAL_ELEMS // slice_elems)`` partial buffers."""
    want = max(1, num_programs(num_rb * other_programs, device) // other_programs)
    s = max(1, min(num_rb, want, _PARTIAL_ELEMS // max(slice_elems, 1)))
    per = triton.cdiv(num_rb, s)
    return triton.cdiv(num_rb, per), per


def _launch_rows(z: Tensor, mu: Tensor, alpha: float, write_q: bool, out_dtype=None):
    n, d = z.shape
    k = mu.shape[0]
    cfg = _config(k, d, z.dtype, kernel_target(z.device))
    nprog = num_programs(triton.cdiv(n, cfg.block_n), z.device)
    lse = _new_output((n,), torch.float32, z.device)
    q = _new_output((n, k), out_dtype, z.device) if write_q else lse
    _dec_rows_kernel[(nprog,)](
        z, mu, lse, q, n, k, d, -(alpha + 1.0) / 2.0, 1.0 / alpha, nprog,
        WRITE_Q=write_q, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d,
        PREC=cfg.prec, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return lse, q


def _dec_loss_triton(z, mu, target, alpha, need_dz, need_dmu):
    z = z.contiguous()
    mu = mu.contiguous()
    n, d = z.shape
    k = mu.shape[0]
    dev = z.device
    cfg = _config(k, d, z.dtype, kernel_target(dev))
    coef, inv_alpha = -(alpha + 1.0) / 2.0, 1.0 / alpha
    grad_scale = (alpha + 1.0) / (2.0 * alpha * n)
    if target is None:
        lse = _launch_rows(z, mu, alpha, write_q=False)[0]
        num_rb = triton.cdiv(n, cfg.block_n)
        kt = triton.cdiv(k, cfg.block_k)
        s, per = _slices(num_rb, kt, k, dev)
        f_part = _new_output((s, k), torch.float32, dev)
        _dec_cols_kernel[(kt, s, 1)](
            z, mu, lse, lse, lse, lse, f_part, n, k, d, coef, inv_alpha, 0.0,
            per * cfg.block_n, CENTRE_GRAD=False, HAS_TARGET=False,
            BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d, BLOCK_G=16,
            PREC=cfg.prec, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        f = f_part.sum(0)
        tgt = f  # unused pointer
    else:
        tgt = target.contiguous()
        lse = _new_output((n,), torch.float32, dev)
        f = lse  # unused pointer
    rstat = _new_output((n,), torch.float32, dev)
    block_g = cfg.block_g if target is None else cfg.block_g_cached
    grad_tiles = dict(BLOCK_N=cfg.grad_block_n, BLOCK_K=cfg.grad_block_k,
                      BLOCK_D=cfg.grad_block_d, BLOCK_G=block_g, PREC=cfg.prec,
                      num_warps=cfg.grad_warps, num_stages=cfg.num_stages)
    dg = triton.cdiv(d, block_g) if need_dz else 1
    dz = _new_output((n, d), z.dtype, dev) if need_dz else z.new_empty(0, d)
    num_rb = triton.cdiv(n, cfg.grad_block_n)
    nprog = max(1, num_programs(num_rb * dg, dev) // dg)
    loss_part = _new_output((dg, nprog), torch.float32, dev)
    _dec_loss_kernel[(nprog, dg)](
        z, mu, tgt, lse, f, rstat, dz, loss_part,
        n, k, d, coef, inv_alpha, grad_scale, nprog,
        HAS_TARGET=target is not None, NEED_DZ=need_dz, **grad_tiles,
    )
    loss = (loss_part[0].sum() / n).to(z.dtype)
    if need_dmu:
        kt = triton.cdiv(k, cfg.grad_block_k)
        dg = triton.cdiv(d, block_g)
        s, per = _slices(num_rb, kt * dg, k * d, dev)
        dmu_part = _new_output((s, k, d), torch.float32, dev)
        _dec_cols_kernel[(kt, s, dg)](
            z, mu, tgt, lse, f, rstat, dmu_part, n, k, d, coef, inv_alpha, grad_scale,
            per * cfg.grad_block_n, CENTRE_GRAD=True, HAS_TARGET=target is not None,
            **grad_tiles,
        )
        dmu = dmu_part.sum(0).to(mu.dtype)
    else:
        dmu = mu.new_empty(0, d)
    return loss, dz, dmu


def _hard_assign_triton(z: Tensor, mu: Tensor) -> Tensor:
    z = z.contiguous()
    mu = mu.contiguous()
    n, d = z.shape
    k = mu.shape[0]
    cfg = _config(k, d, z.dtype, kernel_target(z.device))
    nprog = num_programs(triton.cdiv(n, cfg.block_n), z.device)
    out = torch.full((n,), -1, dtype=torch.int64, device=z.device)
    _hard_assign_kernel[(nprog,)](
        z, mu, out, n, k, d, nprog,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_D=cfg.block_d, PREC=cfg.prec,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return out


def _target_distribution_triton(q: Tensor) -> Tensor:
    q = q.contiguous()
    n, k = q.shape
    cfg = _config(k, 1, q.dtype, kernel_target(q.device))
    bn, bk = cfg.q_block_n, cfg.q_block_k
    num_rb, kt = triton.cdiv(n, bn), triton.cdiv(k, bk)
    s, per = _slices(num_rb, kt, k, q.device)
    f_part = _new_output((s, k), torch.float32, q.device)
    _colsum_kernel[(kt, s)](q, f_part, n, k, per * bn, BLOCK_N=bn, BLOCK_K=bk,
                            num_warps=4, num_stages=1)
    f = f_part.sum(0)
    p = _new_output((n, k), q.dtype, q.device)
    _target_kernel[(num_rb,)](q, f, p, n, k, BLOCK_N=bn, BLOCK_K=bk, num_warps=4, num_stages=1)
    return p


# ----------------------------------------------------------------------------- torch path
def _ct(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _sqdist(zc: Tensor, zz: Tensor, mu: Tensor, mm: Tensor) -> Tensor:
    return torch.addmm(mm[None, :], zc, mu.t(), alpha=-2.0).add_(zz[:, None]).clamp_min_(0.0)


def _chunks(n: int, k: int):
    step = max(1, _TORCH_CHUNK_ELEMS // max(k, 1))
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def _log_q(zc, zz, mu, mm, alpha):
    """``log q`` of a row chunk and ``u = 1 + d / alpha`` (N x K each)."""
    u = _sqdist(zc, zz, mu, mm).div_(alpha).add_(1.0)
    s = torch.log(u).mul_(-(alpha + 1.0) / 2.0)
    return torch.log_softmax(s, dim=1), u


def _dec_loss_torch(z, mu, target, alpha, need_dz, need_dmu):
    ct = _ct(z, mu)
    zf, mf = z.detach().to(ct), mu.detach().to(ct)
    n, d = zf.shape
    k = mf.shape[0]
    zz, mm = (zf * zf).sum(1), (mf * mf).sum(1)
    chunks = _chunks(n, k)
    # One chunk: keep pass 1's tiles for pass 2 (bounded by _TORCH_CHUNK_ELEMS elements).
    keep = len(chunks) == 1
    kept = None
    if target is None:
        f = torch.zeros(k, dtype=ct, device=z.device)
        for a, b in chunks:
            logq, u = _log_q(zf[a:b], zz[a:b], mf, mm, alpha)
            q = logq.exp()
            f += q.sum(0)
            if keep:
                kept = (logq, u, q)
        # A column whose mass underflowed has q = 0 in every row: its p is 0 (the limit).
        f_safe = torch.where(f > 0, f, torch.ones_like(f))
        log_f = f_safe.log()
    # dL/dd_ij = (alpha+1)/(2 alpha N) (p_ij - r_i q_ij) / u_ij; the 2 of d(d_ij)/dz is folded in
    scale = (alpha + 1.0) / (alpha * n)
    loss = torch.zeros((), dtype=ct, device=z.device)
    dz = torch.empty(n, d, dtype=ct, device=z.device) if need_dz and not keep else None
    dmu = torch.zeros(k, d, dtype=ct, device=z.device) if need_dmu else None
    for a, b in chunks:
        zc = zf[a:b]
        if kept is not None:
            logq, u, q = kept
        else:
            logq, u = _log_q(zc, zz[a:b], mf, mm, alpha)
            q = logq.exp()
        if target is None:
            # p in the linear domain: every row's largest q is >= 1/K, so its q^2/f cannot
            # underflow, and the smaller entries that do are p = 0 in the limit.
            p = (q * q).div_(f_safe)
            rs = p.sum(1, keepdim=True)
            p.div_(rs)
            # sum p (log p - log q) with log p = 2 log q - log f - log rs and rows of p summing
            # to 1: sum p log q - sum_j (sum_i p_ij) log f_j - sum_i log rs_i
            loss += torch.vdot(p.reshape(-1), logq.reshape(-1)) - p.sum(0) @ log_f - rs.log().sum()
            g = p.sub_(q)
        else:
            p = target[a:b].detach().to(ct)
            loss += torch.special.xlogy(p, p).sum() - torch.vdot(p.reshape(-1), logq.reshape(-1))
            g = p - p.sum(1, keepdim=True) * q
        g.div_(u).mul_(scale)
        if need_dz:
            gz = torch.addmm(zc * g.sum(1, keepdim=True), g, mf, alpha=-1.0)
            if keep:
                dz = gz
            else:
                dz[a:b] = gz
        if need_dmu:
            dmu += torch.addmm(g.sum(0)[:, None] * mf, g.t(), zc, alpha=-1.0)
    loss = (loss / n).to(z.dtype)
    dz = dz.to(z.dtype) if need_dz else z.new_empty(0, d)
    dmu = dmu.to(mu.dtype) if need_dmu else mu.new_empty(0, d)
    return loss, dz, dmu


def _soft_assign_torch(z: Tensor, mu: Tensor, alpha: float) -> Tensor:
    ct = _ct(z, mu)
    zf, mf = z.to(ct), mu.to(ct)
    dist = torch.addmm((zf * zf).sum(1)[:, None] + (mf * mf).sum(1)[None, :], zf, mf.t(),
                       alpha=-2.0).clamp_min(0.0)
    s = torch.log1p(dist / alpha) * (-(alpha + 1.0) / 2.0)
    return torch.softmax(s, dim=1).to(z.dtype)


def _target_distribution_torch(q: Tensor) -> Tensor:
    qf = q.detach().to(_ct(q))
    f = qf.sum(0, keepdim=True)
    t = torch.where(qf > 0, qf * (qf / torch.where(f > 0, f, 1.0)), 0.0)
    return (t / t.sum(1, keepdim=True)).to(q.dtype)


def _hard_assign_torch(z: Tensor, mu: Tensor) -> Tensor:
    ct = _ct(z, mu)
    zf, mf = z.detach().to(ct), mu.detach().to(ct)
    zz, mm = (zf * zf).sum(1), (mf * mf).sum(1)
    out = torch.empty(zf.shape[0], dtype=torch.int64, device=z.device)
    for a, b in _chunks(zf.shape[0], mf.shape[0]):
        out[a:b] = _sqdist(zf[a:b], zz[a:b], mf, mm).argmin(1)
    return out


# ----------------------------------------------------------------------------- autograd
@torch.library.custom_op("deepclust::dec_loss", mutates_args=())
def _dec_loss_op(
    z: Tensor,
    centers: Tensor,
    target: Optional[Tensor],
    alpha: float,
    impl: str,
    need_dz: bool,
    need_dmu: bool,
) -> Tuple[Tensor, Tensor, Tensor]:
    """KL(P||Q) and its gradients w.r.t. z and centers (P constant), formed in one go."""
    fn = _dec_loss_triton if impl == "triton" else _dec_loss_torch
    return fn(z, centers, target, alpha, need_dz, need_dmu)


@_dec_loss_op.register_fake
def _(z, centers, target, alpha, impl, need_dz, need_dmu):
    n, d = z.shape
    k = centers.shape[0]
    return (
        z.new_empty(()),
        z.new_empty(n if need_dz else 0, d),
        centers.new_empty(k if need_dmu else 0, d),
    )


def _dec_loss_setup(ctx, inputs, output):
    _, dz, dmu = output
    ctx.need_dz, ctx.need_dmu = inputs[5], inputs[6]
    ctx.mark_non_differentiable(dz, dmu)
    ctx.save_for_backward(dz, dmu)


def _dec_loss_backward(ctx, grad_loss, _grad_dz, _grad_dmu):
    dz, dmu = ctx.saved_tensors
    gz = dz * grad_loss.to(dz.dtype) if ctx.need_dz else None
    gmu = dmu * grad_loss.to(dmu.dtype) if ctx.need_dmu else None
    return gz, gmu, None, None, None, None, None


_dec_loss_op.register_autograd(_dec_loss_backward, setup_context=_dec_loss_setup)


class _SoftAssignTriton(torch.autograd.Function):
    """Triton forward (writes Q); closed-form torch backward through the Student's t kernel."""

    @staticmethod
    def forward(ctx, z, centers, alpha):
        q = _launch_rows(z.contiguous(), centers.contiguous(), alpha, write_q=True,
                         out_dtype=z.dtype)[1]
        ctx.save_for_backward(z, centers, q)
        ctx.alpha = alpha
        return q

    @staticmethod
    def backward(ctx, grad_q):
        z, mu, q = ctx.saved_tensors
        alpha = ctx.alpha
        ct = _ct(z, mu)
        zf, mf, qf, gq = z.to(ct), mu.to(ct), q.to(ct), grad_q.to(ct)
        dist = _sqdist(zf, (zf * zf).sum(1), mf, (mf * mf).sum(1))
        # dL/ds = q (g - <g, q>); ds/dd = -(alpha+1)/(2 alpha) / (1 + d/alpha)
        g = qf * (gq - (gq * qf).sum(1, keepdim=True))
        g = g * (-(alpha + 1.0) / (2.0 * alpha) / (1.0 + dist / alpha))
        gz = gmu = None
        if ctx.needs_input_grad[0]:
            gz = (2.0 * (zf * g.sum(1, keepdim=True) - g @ mf)).to(z.dtype)
        if ctx.needs_input_grad[1]:
            gmu = (2.0 * (g.sum(0)[:, None] * mf - g.t() @ zf)).to(mu.dtype)
        return gz, gmu, None


# ----------------------------------------------------------------------------- public API
def _resolve(impl: str, *tensors: Tensor) -> str:
    path = resolve_impl(impl, *tensors)
    if path == "triton" and any(t.dtype == torch.float64 for t in tensors):
        if impl == "auto":
            return "torch"
        raise TypeError("impl='triton' takes float32/float16/bfloat16 tensors, got float64 "
                        "(use impl='torch' for float64)")
    return path


def soft_assign(
    z: Tensor, centers: Tensor, alpha: float = 1.0, *, impl: str = "auto"
) -> Tensor:
    r"""Student's t soft assignment of DEC, computed stably as a softmax.

    .. math::
        q_{ij} = \operatorname{softmax}_j\Big(-\tfrac{\alpha+1}{2}
                 \log\big(1 + \|z_i - \mu_j\|^2 / \alpha\big)\Big)

    which equals the normalised kernel
    :math:`(1 + \|z_i-\mu_j\|^2/\alpha)^{-(\alpha+1)/2} / \sum_{j'}(\cdot)` without
    underflowing for far-away points.

    Args:
        z: embeddings ``(N, d)``, float32/float16/bfloat16 (float64 on the torch path).
        centers: cluster centres ``(K, d)`` on the device of ``z``.
        alpha: Student's t degrees of freedom, ``> 0`` (default 1).
        impl: ``"auto"`` (Triton on CUDA, else torch), ``"triton"`` or ``"torch"``.

    Returns:
        ``q`` of shape ``(N, K)`` in the dtype of ``z``, differentiable in ``z`` and ``centers``.

    Reference: Xie, Girshick, Farhadi, "Unsupervised Deep Embedding for Clustering Analysis",
    ICML 2016, eq. (1).
    """
    check_z_centers(z, centers)
    alpha = check_positive(alpha, "alpha")
    if _resolve(impl, z, centers) == "triton":
        return _SoftAssignTriton.apply(z, centers, alpha)
    return _soft_assign_torch(z, centers, alpha)


def target_distribution(q: Tensor, *, impl: str = "auto") -> Tensor:
    r"""DEC's target distribution, detached.

    .. math::
        f_j = \sum_i q_{ij}, \qquad
        p_{ij} = \frac{q_{ij}^2 / f_j}{\sum_{j'} q_{ij'}^2 / f_{j'}}

    A column with ``f_j = 0`` (all its ``q`` underflowed) contributes ``p_{ij} = 0``, the limit.

    Args:
        q: soft assignment ``(N, K)``.
        impl: ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns:
        ``p`` of shape ``(N, K)`` in the dtype of ``q``, without gradient.

    Reference: Xie et al., ICML 2016, eq. (3).
    """
    check_tensor(q, "q", ndim=2)
    with torch.no_grad():
        if _resolve(impl, q) == "triton":
            return _target_distribution_triton(q.detach())
        return _target_distribution_torch(q)


def dec_loss(
    z: Tensor,
    centers: Tensor,
    alpha: float = 1.0,
    target: Optional[Tensor] = None,
    *,
    impl: str = "auto",
) -> Tensor:
    r"""DEC clustering loss ``KL(P || Q)`` with batch mean, fused.

    .. math::
        L = \frac{1}{N}\sum_{i,j} p_{ij}\,(\log p_{ij} - \log q_{ij}),\qquad
        \log q_{ij} = s_{ij} - \operatorname{logsumexp}_{j'} s_{ij'},\quad
        s_{ij} = -\tfrac{\alpha+1}{2}\log\big(1 + \|z_i-\mu_j\|^2/\alpha\big)

    ``P`` is a constant. Its gradient, formed in the forward pass, is
    :math:`\partial L/\partial d_{ij} = \frac{\alpha+1}{2\alpha N}\,
    \frac{p_{ij} - r_i q_{ij}}{1 + d_{ij}/\alpha}` with :math:`r_i = \sum_j p_{ij}` and
    :math:`d_{ij} = \|z_i-\mu_j\|^2`. With ``target=None`` the Triton path first finds the
    row logsumexp and the column sums ``f``; then one pass over the rows gives the loss and the
    gradient of ``z``, and one over the centres the gradient of ``centers``. Neither writes
    ``Q`` or ``P`` to memory, and the result is bitwise reproducible (no atomics).

    Args:
        z: embeddings ``(N, d)``, float32/float16/bfloat16 (float64 on the torch path).
        centers: cluster centres ``(K, d)`` on the device of ``z``.
        alpha: Student's t degrees of freedom, ``> 0`` (default 1).
        target: optional cached target ``P`` of shape ``(N, K)`` (a constant); ``None``
            (default) computes ``P`` from this batch's ``Q``.
        impl: ``"auto"`` (Triton on CUDA, else torch), ``"triton"`` or ``"torch"``.

    Returns:
        A scalar in the dtype of ``z``, differentiable in ``z`` and ``centers``.

    Reference: Xie et al., ICML 2016, eqs. (1)-(3); PyAGC's ``DECClusterHead``.
    """
    alpha = check_dec_loss_args(z, centers, alpha, target)
    if target is not None:
        target = target.detach()
    path = _resolve(impl, z, centers)
    grad = torch.is_grad_enabled()
    need_dz = grad and z.requires_grad
    need_dmu = grad and centers.requires_grad
    loss, _, _ = _dec_loss_op(z, centers, target, alpha, path, need_dz, need_dmu)
    return loss


def hard_assign(z: Tensor, centers: Tensor, *, impl: str = "auto") -> Tensor:
    r"""Hard labels ``argmin_j ||z_i - mu_j||^2`` without an ``N x K`` matrix on the Triton path.

    Args:
        z: embeddings ``(N, d)``.
        centers: cluster centres ``(K, d)``.
        impl: ``"auto"``, ``"triton"`` or ``"torch"``.

    Returns:
        ``int64`` labels of shape ``(N,)``; ties go to the lowest index.

    Reference: Xie et al., ICML 2016.
    """
    check_z_centers(z, centers)
    with torch.no_grad():
        if _resolve(impl, z, centers) == "triton":
            return _hard_assign_triton(z.detach(), centers.detach())
        return _hard_assign_torch(z, centers)
