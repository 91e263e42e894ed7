"""Triton kernels of the DEC ops (launched from :mod:`._launch`).

Distances come from ``tl.dot`` tiles (``||z||^2 + ||mu||^2 - 2 z mu^T``, clamped at 0, the
features swept in chunks); a row block sweeps the ``K`` tiles with an online logsumexp
(:func:`_row_lse`). Row-major kernels own their rows, column-major ones a tile of centres over
one slice of the rows and write partial sums: no atomics anywhere.
"""
import triton
import triton.language as tl


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
def _row_lse(
    z_ptr, mu_ptr, tgt_ptr, rows, rmask, K, D, coef, inv_alpha,
    SUM_TARGET: tl.constexpr,  # also sum the rows of the cached target
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr, PREC: tl.constexpr,
):
    """Online logsumexp over the centres of ``s = coef * log1p(dist / alpha)`` for one row
    block, and the row sums of the target with ``SUM_TARGET`` (zeros without)."""
    m = tl.full([BLOCK_N], float("-inf"), dtype=tl.float32)
    l = tl.zeros([BLOCK_N], dtype=tl.float32)
    # sum_j p_ij, tile-wise then reduced once: Triton 3.6 asserts on a row sum of a loaded tile
    # accumulated in the loop when the sum has more than one use
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
        if SUM_TARGET:
            p = tl.load(tgt_ptr + rows[:, None] * K + cols[None, :],
                        mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
            p_acc += p
    return m + tl.log(l), tl.sum(p_acc, axis=1)


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
        lse, _ = _row_lse(z_ptr, mu_ptr, lse_ptr, rows, rmask, K, D, coef, inv_alpha,
                          False, BLOCK_N, BLOCK_K, BLOCK_D, PREC)
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
            lse, rstat = _row_lse(z_ptr, mu_ptr, tgt_ptr, rows, rmask, K, D, coef, inv_alpha,
                                  True, BLOCK_N, BLOCK_K, BLOCK_D, PREC)
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

