"""The memory-lean torch path of the contrastive row terms: the kernels' math over row chunks
(O(chunk x N) temporaries, never the whole N x N logits)."""
from __future__ import annotations

import torch

from .._plumbing import compute_dtype, new_output, row_chunks

_CHUNK_ELEMS = 1 << 23  # logits held per row chunk (32 MiB in fp32)


def _chunk(qf, kf, r0, r1, b_local, b_global, offset, scale):
    """Logits of rows r0:r1 against every column with the own column at -inf, and the columns
    of the rows' positives (chunk x (m-1))."""
    n_cols = kf.shape[0]
    rows = torch.arange(r0, r1, device=qf.device)
    diag = (rows // b_local) * b_global + offset + rows % b_local
    shifts = torch.arange(1, n_cols // b_global, device=qf.device) * b_global
    pos = (diag[:, None] + shifts[None, :]) % n_cols
    s = (qf[r0:r1] @ kf.t()).mul_(scale)
    s[rows - r0, diag] = float("-inf")
    return s, pos


def _rows_fwd_torch(q, k, b_local, b_global, offset, scale, pos_weight):
    cd = compute_dtype(q)
    qf = q.to(cd)
    kf = qf if k is q else k.to(cd)
    n = q.shape[0]
    loss, stats = new_output((n,), cd, q.device), new_output((n, 2), cd, q.device)
    for r0, r1 in row_chunks(n, kf.shape[0], _CHUNK_ELEMS):
        s, pos = _chunk(qf, kf, r0, r1, b_local, b_global, offset, scale)
        mx = s.max(1).values
        pos_sum = s.gather(1, pos).sum(1)
        log_l = s.sub_(mx[:, None]).exp_().sum(1).log_()
        stats[r0:r1, 0], stats[r0:r1, 1] = mx, log_l
        loss[r0:r1] = mx + log_l - pos_weight * pos_sum
    return loss, stats


def _rows_bwd_torch(q, k, st_q, st_k, g_q, g_k, b_local, b_global, offset, scale, pos_weight):
    cd = compute_dtype(q)
    qf = q.to(cd)
    kf = qf if k is q else k.to(cd)
    st_q, st_k, g_q, g_k = (t.to(cd) for t in (st_q, st_k, g_q, g_k))
    n = q.shape[0]
    dq = new_output(q.shape, cd, q.device)
    for r0, r1 in row_chunks(n, kf.shape[0], _CHUNK_ELEMS):
        s, pos = _chunk(qf, kf, r0, r1, b_local, b_global, offset, scale)
        # (s - M) - log sum: exact near the row maximum however large the logits
        w = (s - st_q[r0:r1, 0:1]).sub_(st_q[r0:r1, 1:2]).exp_().mul_(g_q[r0:r1, None])
        w.add_(s.sub_(st_k[None, :, 0]).sub_(st_k[None, :, 1]).exp_().mul_(g_k[None, :]))
        del s
        w.scatter_add_(1, pos, -(g_q[r0:r1, None] + g_k[pos]) * pos_weight)
        dq[r0:r1] = (w @ kf).mul_(scale)
    return dq.to(q.dtype)
