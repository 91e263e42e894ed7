"""The memory-lean torch path of the prototype cross-entropy: the kernels' math in row chunks
(no N x K tensor kept for the backward; each chunk's logits are recomputed there)."""
from __future__ import annotations

import torch

from .._plumbing import compute_dtype, new_output, row_chunks


def _chunk_logits(x, p, inv_temp, cdt):
    return (x.to(cdt) @ p.to(cdt).t()) * inv_temp.to(cdt)


def _fwd_torch(x, p, target, inv_temp):
    N, K = x.shape[0], p.shape[0]
    cdt = compute_dtype(x)
    rows = new_output((N,), cdt, x.device)
    lse = new_output((N,), cdt, x.device)
    for a, b in row_chunks(N, K):
        s = _chunk_logits(x[a:b], p, inv_temp, cdt)
        m = torch.logsumexp(s, dim=1)
        if target.is_floating_point():
            t = target[a:b].to(cdt)
            r = t.sum(1) * m - (t * s).sum(1)
        else:
            r = m - s.gather(1, target[a:b, None]).squeeze(1)
        rows[a:b] = r
        lse[a:b] = m
    return rows, lse


def _bwd_torch(grad_rows, x, p, target, inv_temp, lse, need_dx, need_dp):
    N, K = x.shape[0], p.shape[0]
    cdt = compute_dtype(x)
    dx = new_output(x.shape, cdt, x.device) if need_dx else x.new_empty(0)
    dp = torch.zeros(p.shape, device=p.device, dtype=cdt) if need_dp else p.new_empty(0)
    pc = p.to(cdt)
    for a, b in row_chunks(N, K):
        xc = x[a:b].to(cdt)
        s = _chunk_logits(xc, pc, inv_temp, cdt)
        prob = torch.softmax(s, dim=1)
        if target.is_floating_point():
            t = target[a:b].to(cdt)
            g = t.sum(1, keepdim=True) * prob - t
        else:
            g = prob
            g.scatter_add_(1, target[a:b, None], -torch.ones_like(g[:, :1]))
        g = g * grad_rows[a:b, None].to(cdt) * inv_temp.to(cdt)
        if need_dx:
            dx[a:b] = g @ pc
        if need_dp:
            dp += g.t() @ xc
    return dx.to(x.dtype), dp.to(p.dtype)
