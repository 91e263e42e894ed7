"""The eager (torch) paths of the DEC ops: the CPU fallback and the float64 path.

Memory-lean like the kernels: the loss and the labels go over row chunks of at most
``_TORCH_CHUNK_ELEMS`` ``N x K`` elements, and the loss forms its gradients in the forward pass.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._plumbing import compute_dtype, row_chunks

# Rows per chunk of the torch path, as a budget of chunk x K elements.
_TORCH_CHUNK_ELEMS = 1 << 24


def _sqdist(zc: Tensor, zz: Tensor, mu: Tensor, mm: Tensor) -> Tensor:
    return torch.addmm(mm[None, :], zc, mu.t(), alpha=-2.0).add_(zz[:, None]).clamp_min_(0.0)


def _log_q(zc, zz, mu, mm, alpha):
    """``log q`` of a row chunk and ``u = 1 + d / alpha`` (N x K each)."""
    u = _sqdist(zc, zz, mu, mm).div_(alpha).add_(1.0)
    s = torch.log(u).mul_(-(alpha + 1.0) / 2.0)
    return torch.log_softmax(s, dim=1), u


def _dec_loss_torch(z, mu, target, alpha, need_dz, need_dmu):
    ct = compute_dtype(z, mu)
    zf, mf = z.detach().to(ct), mu.detach().to(ct)
    n, d = zf.shape
    k = mf.shape[0]
    zz, mm = (zf * zf).sum(1), (mf * mf).sum(1)
    chunks = row_chunks(n, k, _TORCH_CHUNK_ELEMS)
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
    ct = compute_dtype(z, mu)
    zf, mf = z.to(ct), mu.to(ct)
    dist = torch.addmm((zf * zf).sum(1)[:, None] + (mf * mf).sum(1)[None, :], zf, mf.t(),
                       alpha=-2.0).clamp_min(0.0)
    s = torch.log1p(dist / alpha) * (-(alpha + 1.0) / 2.0)
    return torch.softmax(s, dim=1).to(z.dtype)


def _target_distribution_torch(q: Tensor) -> Tensor:
    qf = q.detach().to(compute_dtype(q))
    f = qf.sum(0, keepdim=True)
    t = torch.where(qf > 0, qf * (qf / torch.where(f > 0, f, 1.0)), 0.0)
    return (t / t.sum(1, keepdim=True)).to(q.dtype)


def _hard_assign_torch(z: Tensor, mu: Tensor) -> Tensor:
    ct = compute_dtype(z, mu)
    zf, mf = z.detach().to(ct), mu.detach().to(ct)
    zz, mm = (zf * zf).sum(1), (mf * mf).sum(1)
    out = torch.empty(zf.shape[0], dtype=torch.int64, device=z.device)
    for a, b in row_chunks(zf.shape[0], mf.shape[0], _TORCH_CHUNK_ELEMS):
        out[a:b] = _sqdist(zf[a:b], zz[a:b], mf, mm).argmin(1)
    return out


def _soft_assign_backward(grad_q: Tensor, z: Tensor, mu: Tensor, q: Tensor, alpha: float,
                          need_dz: bool, need_dmu: bool):
    """Closed-form gradients of :func:`_soft_assign_torch` (both paths' backward)."""
    ct = compute_dtype(z, mu)
    zf, mf, qf, gq = z.to(ct), mu.to(ct), q.to(ct), grad_q.to(ct)
    dist = _sqdist(zf, (zf * zf).sum(1), mf, (mf * mf).sum(1))
    # dL/ds = q (g - <g, q>); ds/dd = -(alpha+1)/(2 alpha) / (1 + d/alpha)
    g = qf * (gq - (gq * qf).sum(1, keepdim=True))
    g = g * (-(alpha + 1.0) / (2.0 * alpha) / (1.0 + dist / alpha))
    d = z.shape[1]
    if need_dz:
        gz = (2.0 * (zf * g.sum(1, keepdim=True) - g @ mf)).to(z.dtype)
    else:
        gz = z.new_empty(0, d)
    if need_dmu:
        gmu = (2.0 * (g.sum(0)[:, None] * mf - g.t() @ zf)).to(mu.dtype)
    else:
        gmu = mu.new_empty(0, d)
    return gz, gmu
