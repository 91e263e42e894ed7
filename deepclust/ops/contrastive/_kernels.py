"""Triton kernels of the contrastive row terms: the masked log-sum-exp of every row of
``scale * q k^T`` (diagonal excluded) streamed over column tiles, and its recomputing backward."""
from __future__ import annotations

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton absent
    triton = None

if triton is not None:

    @triton.jit
    def _load_tile(X, idx, ok, stride, d_offs, D, UPCAST: tl.constexpr):
        """Rows ``idx`` (int64) of X, features ``d_offs``; zeros outside."""
        x = tl.load(X + idx[:, None] * stride + d_offs[None, :],
                    mask=ok[:, None] & (d_offs[None, :] < D), other=0.0)
        if UPCAST:
            x = x.to(tl.float32)
        return x

    @triton.jit
    def _logits(Q, K, rows, cols, row_ok, col_ok, D, stride_q, stride_k, scale,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """scale * q_rows . k_cols (fp32), the features streamed in BLOCK_D chunks: registers
        hold one chunk of each tile whatever d is."""
        offs_d = tl.arange(0, BLOCK_D)
        s = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        for d0 in range(0, D, BLOCK_D):
            qc = _load_tile(Q, rows, row_ok, stride_q, d0 + offs_d, D, UPCAST)
            kc = _load_tile(K, cols, col_ok, stride_k, d0 + offs_d, D, UPCAST)
            s = tl.dot(qc, tl.trans(kc), s, input_precision=PRECISION)
        return s * scale

    @triton.jit
    def _contrastive_fwd_kernel(
        Q, K, LOSS, STATS, n_rows, n_cols, D, stride_q, stride_k,
        b_local, b_global, offset, scale, pos_weight,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ):
        """One row block of q against every column tile of k (s_ij = scale q_i . k_j):
        online max M_i and sum exp(s_ij - M_i) over j != diag(i) -> STATS[i] = (M_i, log sum),
        and LOSS[i] = M_i + log sum - pos_weight * sum_{j positive} s_ij."""
        pid = tl.program_id(0)
        rows = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        # global index of each row = its own column in k, excluded from its softmax
        diag = (rows // b_local) * b_global + offset + rows % b_local
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        pos_i = tl.zeros([BLOCK_M], tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N).to(tl.int64)
            col_ok = cols < n_cols
            s = _logits(Q, K, rows, cols, row_ok, col_ok, D, stride_q, stride_k, scale,
                        BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, UPCAST)
            valid = col_ok[None, :] & (cols[None, :] != diag[:, None])
            # positives: the same sample in the other views (same index modulo B)
            is_pos = valid & ((cols % b_global)[None, :] == (diag % b_global)[:, None])
            pos_i += tl.sum(tl.where(is_pos, s, 0.0), 1)
            s = tl.where(valid, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            l_i = l_i * tl.exp(m_i - m_safe) + tl.sum(tl.exp(s - m_safe[:, None]), 1)
            m_i = m_new
        log_l = tl.log(l_i)
        tl.store(STATS + 2 * rows, m_i, mask=row_ok)
        tl.store(STATS + 2 * rows + 1, log_l, mask=row_ok)
        tl.store(LOSS + rows, m_i + log_l - pos_weight * pos_i, mask=row_ok)

    @triton.jit
    def _contrastive_bwd_kernel(
        Q, K, STATS_Q, STATS_K, G_Q, G_K, DQ, n_rows, n_cols, D, stride_q, stride_k, stride_dq,
        b_local, b_global, offset, scale, pos_weight,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        BLOCK_DO: tl.constexpr, PRECISION: tl.constexpr, PRECISION_GRAD: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        """Gradient of sum_i g_i LOSS_i with respect to the rows q (rows of k):
        dq_i = scale * sum_j (g_i P_ij + g_j P_ji - (g_i + g_j) pos_ij pos_weight) k_j, with
        P_ij = exp(s_ij - M_i - log sum_i) and P_ji = exp(s_ij - M_j - log sum_j) (the logits
        are symmetric): row and column contribution of row i at once, no atomics.
        Grid: (row blocks, blocks of BLOCK_DO output features); each program recomputes the
        logits of its rows (BLOCK_D feature chunks) and owns its dq tile."""
        pid_m = tl.program_id(0)
        pid_d = tl.program_id(1)
        rows = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < n_rows
        diag = (rows // b_local) * b_global + offset + rows % b_local
        m_q = tl.load(STATS_Q + 2 * rows, mask=row_ok, other=0.0)
        logl_q = tl.load(STATS_Q + 2 * rows + 1, mask=row_ok, other=0.0)
        g_q = tl.load(G_Q + rows, mask=row_ok, other=0.0)
        out_d = pid_d * BLOCK_DO + tl.arange(0, BLOCK_DO)
        acc = tl.zeros([BLOCK_M, BLOCK_DO], tl.float32)
        for start in range(0, n_cols, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N).to(tl.int64)
            col_ok = cols < n_cols
            s = _logits(Q, K, rows, cols, row_ok, col_ok, D, stride_q, stride_k, scale,
                        BLOCK_M, BLOCK_N, BLOCK_D, PRECISION, UPCAST)
            # (padding rows: valid nowhere, so their w is 0 whatever their statistics)
            valid = row_ok[:, None] & col_ok[None, :] & (cols[None, :] != diag[:, None])
            is_pos = valid & ((cols % b_global)[None, :] == (diag % b_global)[:, None])
            s = tl.where(valid, s, float("-inf"))
            m_k = tl.load(STATS_K + 2 * cols, mask=col_ok, other=0.0)
            logl_k = tl.load(STATS_K + 2 * cols + 1, mask=col_ok, other=0.0)
            g_k = tl.load(G_K + cols, mask=col_ok, other=0.0)
            # s - M first: exact near the maximum, however large the logits
            w = g_q[:, None] * tl.exp((s - m_q[:, None]) - logl_q[:, None])
            w += g_k[None, :] * tl.exp((s - m_k[None, :]) - logl_k[None, :])
            w -= tl.where(is_pos, (g_q[:, None] + g_k[None, :]) * pos_weight, 0.0)
            v = _load_tile(K, cols, col_ok, stride_k, out_d, D, UPCAST)
            acc = tl.dot(w, v.to(tl.float32), acc, input_precision=PRECISION_GRAD)
        dq = acc * scale
        tl.store(DQ + rows[:, None] * stride_dq + out_d[None, :], dq.to(DQ.dtype.element_ty),
                 mask=row_ok[:, None] & (out_d[None, :] < D))
