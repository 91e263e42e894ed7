"""Triton kernels of the prototype cross-entropy: the per-row loss with an online logsumexp over
prototype tiles, and the two recomputing backward kernels (dx, and dprototypes per row split)."""
from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - no triton on this platform
    triton = None

if triton is not None:

    @triton.jit
    def _logits_tile(X, P, INVT, rn64, mask_n, rk64, mask_k, D, sxn, sxd, spk, spd,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                     PREC: tl.constexpr, UPCAST: tl.constexpr):
        """logits[rn, rk] = (x[rn] . p[rk]) / T[rk] in fp32, reduced over d in BLOCK_D steps."""
        s = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            rd = d0 + tl.arange(0, BLOCK_D)
            mask_d = rd < D
            rd64 = rd.to(tl.int64)
            xt = tl.load(X + rn64[:, None] * sxn + rd64[None, :] * sxd,
                         mask=mask_n[:, None] & mask_d[None, :], other=0.0)
            pt = tl.load(P + rk64[None, :] * spk + rd64[:, None] * spd,
                         mask=mask_k[None, :] & mask_d[:, None], other=0.0)
            if UPCAST:  # the CPU interpreter mis-computes bf16 tl.dot (exact products in fp32)
                xt = xt.to(tl.float32)
                pt = pt.to(tl.float32)
            s = tl.dot(xt, pt, s, input_precision=PREC)
        invt = tl.load(INVT + rk64, mask=mask_k, other=0.0)
        return s * invt[None, :]

    @triton.jit
    def _grad_tile(X, P, T, TSUM, LSE, INVT, rn64, mask_n, rk64, mask_k, D, sxn, sxd, spk, spd,
                   stn, stk, SOFT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   BLOCK_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
        """dL/dlogits scaled to dL/d(x.p) per unit row gradient: (tsum * softmax - t) / T.
        The logits are recomputed with the forward's tiles, so they are its logits bit for bit."""
        s = _logits_tile(X, P, INVT, rn64, mask_n, rk64, mask_k, D, sxn, sxd, spk, spd,
                         BLOCK_N, BLOCK_K, BLOCK_D, PREC, UPCAST)
        lse = tl.load(LSE + rn64, mask=mask_n, other=0.0)
        invt = tl.load(INVT + rk64, mask=mask_k, other=0.0)
        prob = tl.exp(s - lse[:, None])
        prob = tl.where(mask_n[:, None] & mask_k[None, :], prob, 0.0)
        if SOFT:
            t = tl.load(T + rn64[:, None] * stn + rk64[None, :] * stk,
                        mask=mask_n[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
            tsum = tl.load(TSUM + rn64, mask=mask_n, other=0.0)
            g = tsum[:, None] * prob - t
        else:
            tgt = tl.load(T + rn64, mask=mask_n, other=-1)
            g = prob - tl.where(rk64[None, :] == tgt[:, None], 1.0, 0.0)
        return g * invt[None, :]

    @triton.jit
    def _dot_operand(g, OUT_DTYPE: tl.constexpr, UPCAST: tl.constexpr):
        """g rounded to the input dtype, as tl.dot takes it (fp32 under UPCAST, same rounding)."""
        g = g.to(OUT_DTYPE)
        if UPCAST:
            g = g.to(tl.float32)
        return g

    @triton.jit
    def _fwd_kernel(X, P, T, INVT, ROWS, LSE, N, K, D, sxn, sxd, spk, spd, stn, stk,
                    SOFT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    BLOCK_D: tl.constexpr, PREC: tl.constexpr, UPCAST: tl.constexpr):
        """Per row: CE = rowsum(t) * logsumexp(logits) - t . logits, and the logsumexp."""
        pid = tl.program_id(0)
        rn64 = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = rn64 < N
        m_i = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_N,), dtype=tl.float32)
        tdot = tl.zeros((BLOCK_N,), dtype=tl.float32)
        tsum = tl.zeros((BLOCK_N,), dtype=tl.float32)
        if not SOFT:
            tgt = tl.load(T + rn64, mask=mask_n, other=-1)
        for k0 in range(0, K, BLOCK_K):
            rk64 = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            mask_k = rk64 < K
            s = _logits_tile(X, P, INVT, rn64, mask_n, rk64, mask_k, D, sxn, sxd, spk, spd,
                             BLOCK_N, BLOCK_K, BLOCK_D, PREC, UPCAST)
            s_valid = tl.where(mask_k[None, :], s, 0.0)
            s = tl.where(mask_k[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
            m_i = m_new
            if SOFT:
                t = tl.load(T + rn64[:, None] * stn + rk64[None, :] * stk,
                            mask=mask_n[:, None] & mask_k[None, :], other=0.0).to(tl.float32)
                tsum += tl.sum(t, axis=1)
                tdot += tl.sum(t * s_valid, axis=1)
            else:
                tdot += tl.sum(tl.where(rk64[None, :] == tgt[:, None], s_valid, 0.0), axis=1)
        lse = m_i + tl.log(l_i)
        if SOFT:
            row = tsum * lse - tdot
        else:
            row = lse - tdot
        tl.store(ROWS + rn64, row, mask=mask_n)
        tl.store(LSE + rn64, lse, mask=mask_n)

    @triton.jit
    def _bwd_dx_kernel(X, P, T, INVT, LSE, TSUM, GROW, DX, N, K, D,
                       sxn, sxd, spk, spd, stn, stk, sdn, sdd,
                       SOFT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr, PREC: tl.constexpr,
                       UPCAST: tl.constexpr):
        """dx[rows, cols] = G[rows, :] @ P[:, cols], G recomputed tile by tile over K."""
        pid_n = tl.program_id(0)
        pid_d = tl.program_id(1)
        rn64 = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = rn64 < N
        ro64 = pid_d.to(tl.int64) * BLOCK_DO + tl.arange(0, BLOCK_DO)
        mask_o = ro64 < D
        acc = tl.zeros((BLOCK_N, BLOCK_DO), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            rk64 = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
            mask_k = rk64 < K
            g = _grad_tile(X, P, T, TSUM, LSE, INVT, rn64, mask_n, rk64, mask_k, D, sxn, sxd, spk,
                           spd, stn, stk, SOFT, BLOCK_N, BLOCK_K, BLOCK_D, PREC, UPCAST)
            g = _dot_operand(g, P.dtype.element_ty, UPCAST)
            po = tl.load(P + rk64[:, None] * spk + ro64[None, :] * spd,
                         mask=mask_k[:, None] & mask_o[None, :], other=0.0)
            if UPCAST:
                po = po.to(tl.float32)
            acc = tl.dot(g, po, acc, input_precision=PREC)
        # the row gradient scales the result, not g: 1/N would push fp16 g tiles to subnormals
        grow = tl.load(GROW + rn64, mask=mask_n, other=0.0)
        acc = acc * grow[:, None]
        tl.store(DX + rn64[:, None] * sdn + ro64[None, :] * sdd, acc.to(DX.dtype.element_ty),
                 mask=mask_n[:, None] & mask_o[None, :])

    @triton.jit
    def _bwd_dp_kernel(X, P, T, INVT, LSE, TSUM, GROW, DP, N, K, D, ROWS_PER_SPLIT,
                       sxn, sxd, spk, spd, stn, stk,
                       SOFT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       BLOCK_D: tl.constexpr, BLOCK_DO: tl.constexpr, PREC: tl.constexpr,
                       UPCAST: tl.constexpr):
        """dP over one split of the rows, G[split]^T @ X[split], stored (no atomics) into the
        split's own fp32 slice DP[split] of a (splits, K, D) buffer that the host sums."""
        pid_k = tl.program_id(0)
        pid_d = tl.program_id(1)
        pid_s = tl.program_id(2)
        rk64 = pid_k.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = rk64 < K
        ro64 = pid_d.to(tl.int64) * BLOCK_DO + tl.arange(0, BLOCK_DO)
        mask_o = ro64 < D
        n_start = pid_s.to(tl.int64) * ROWS_PER_SPLIT
        acc = tl.zeros((BLOCK_K, BLOCK_DO), dtype=tl.float32)
        for n0 in range(0, ROWS_PER_SPLIT, BLOCK_N):
            rn64 = n_start + n0 + tl.arange(0, BLOCK_N)
            mask_n = rn64 < N
            g = _grad_tile(X, P, T, TSUM, LSE, INVT, rn64, mask_n, rk64, mask_k, D, sxn, sxd, spk,
                           spd, stn, stk, SOFT, BLOCK_N, BLOCK_K, BLOCK_D, PREC, UPCAST)
            grow = tl.load(GROW + rn64, mask=mask_n, other=0.0)
            g = _dot_operand(g * grow[:, None], X.dtype.element_ty, UPCAST)
            xo = tl.load(X + rn64[:, None] * sxn + ro64[None, :] * sxd,
                         mask=mask_n[:, None] & mask_o[None, :], other=0.0)
            if UPCAST:
                xo = xo.to(tl.float32)
            acc = tl.dot(tl.trans(g), xo, acc, input_precision=PREC)
        split = DP + pid_s.to(tl.int64) * K * D
        tl.store(split + rk64[:, None] * D + ro64[None, :], acc,
                 mask=mask_k[:, None] & mask_o[None, :])
