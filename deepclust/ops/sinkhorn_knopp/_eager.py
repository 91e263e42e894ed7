"""The eager (torch) path of the Sinkhorn codes: the CPU fallback and the float64 path.

One path with a guard. It first takes the scaling-vector form: ``E = exp((S - max S) / eps)``
once, in the output buffer, then two mat-vecs per iteration (what the published SwAV code
does, about 3x faster on the CPU than log-domain passes). When a row or column of ``E`` keeps
less than ``SAFE_MASS`` (small ``eps``, far points: mass may have underflowed), it computes the
kernels' log-domain passes instead, over row chunks of at most ``row_chunks``' budget of B x K
elements: per iteration a column pass (per-chunk max and sum of exp, combined and all-reduced
by :func:`combine_partials`) and a row pass (``a = -logsumexp``, the last one writing the codes
as a row softmax), where no exponential underflows a whole row, whatever ``eps``.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..._common import all_reduce_max, all_reduce_sum, get_group, world_size
from .._plumbing import compute_dtype, row_chunks


class Source:
    """Where the scores come from: a B x K tensor, or z (B x d) @ prototypes (K x d)^T."""

    def __init__(self, scores: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,
                 prototypes: Optional[torch.Tensor] = None):
        self.scores, self.z, self.p = scores, z, prototypes
        if scores is not None:
            self.B, self.K = scores.shape
            self.D = 0
        else:
            self.B, self.D = z.shape
            self.K = prototypes.shape[0]
        self.device = self.tensor.device

    @property
    def tensor(self) -> torch.Tensor:
        """The scores, or ``z``: the tensor whose dtype decides the path and the precision."""
        return self.scores if self.scores is not None else self.z

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor.dtype

    def chunk(self, i0: int, i1: int, ct: torch.dtype) -> torch.Tensor:
        """Scores of rows ``i0:i1`` in ``ct``, a fresh tensor (free to modify in place)."""
        if self.scores is not None:
            return self.scores[i0:i1].to(ct, copy=True)
        return self.z[i0:i1].to(ct) @ self.p.to(ct).t()


def combine_partials(pm: torch.Tensor, ps: torch.Tensor, group) -> torch.Tensor:
    """Log column scaling b = -logsumexp from per-chunk (max, sum) partials, across processes."""
    m = pm.max(dim=0).values
    s = (ps * torch.exp(pm - m)).sum(dim=0)
    if get_group(group) is not None:
        mg = all_reduce_max(m, group)
        s = all_reduce_sum(s * torch.exp(m - mg), group)
        m = mg
    return -(m + torch.log(s))


# The scaling-vector form is taken when every row and column of exp((S - max S) / eps) keeps at
# least this much mass; below it, mass may have underflowed and the log domain is used.
SAFE_MASS = 1e-20


def sinkhorn_eager(src: Source, eps: float, n_iters: int, group=None) -> torch.Tensor:
    """Codes (B x K) in float32 (float64 for float64 input): the scaling-vector form when
    nothing underflows, else the log-domain passes (the same decision on every rank)."""
    out = _sinkhorn_linear(src, eps, n_iters, group)
    return out if out is not None else _sinkhorn_log(src, eps, n_iters, group)


def _sinkhorn_linear(src: Source, eps: float, n_iters: int, group=None) -> Optional[torch.Tensor]:
    """``E = exp((S - max S) / eps)`` kept in the output buffer, the scaling vectors ``c``
    (prototypes) and ``a`` (samples) by two mat-vecs per iteration; the codes are
    ``E_bk c_k / sum_k' E_bk' c_k'``. None when a row or column of ``E`` has under SAFE_MASS."""
    ct = compute_dtype(src.tensor)
    B, K = src.B, src.K
    out = torch.empty(B, K, dtype=ct, device=src.device)
    m = torch.full((), float("-inf"), dtype=ct, device=src.device)
    for i0, i1 in row_chunks(B, K):
        out[i0:i1] = src.chunk(i0, i1, ct)
        m = torch.maximum(m, out[i0:i1].max())
    e = out.sub_(all_reduce_max(m, group)).div_(eps).exp_()
    cols = all_reduce_sum(e.sum(0), group)
    unsafe = ((e.sum(1).min() < SAFE_MASS) | (cols.min() < SAFE_MASS)).to(ct)
    if all_reduce_max(unsafe, group).item() > 0:
        return None
    b_total = B * world_size(group)
    a = None
    for it in range(n_iters):
        c = 1.0 / (K * (cols if it == 0 else all_reduce_sum(torch.mv(e.t(), a), group)))
        if it < n_iters - 1:
            a = 1.0 / (b_total * torch.mv(e, c))
    r = torch.mv(e, c)  # before e is scaled in place
    return e.mul_(c).div_(r[:, None])


def _sinkhorn_log(src: Source, eps: float, n_iters: int, group=None) -> torch.Tensor:
    """Codes by the kernels' log-domain passes (exact where the scaling vectors underflow).

    The output buffer holds ``S = scores / eps`` until the last row pass overwrites it with the
    codes, chunk by chunk: the scores (or ``z @ prototypes.T``) are formed once."""
    ct = compute_dtype(src.tensor)
    B, K = src.B, src.K
    bounds = row_chunks(B, K)
    la = torch.zeros(B, dtype=ct, device=src.device)
    out = torch.empty(B, K, dtype=ct, device=src.device)
    for i0, i1 in bounds:
        out[i0:i1] = src.chunk(i0, i1, ct).div_(eps)
    for it in range(n_iters):
        pm = torch.empty(len(bounds), K, dtype=ct, device=src.device)
        ps = torch.empty_like(pm)
        for c, (i0, i1) in enumerate(bounds):
            x = out[i0:i1] + la[i0:i1, None]
            pm[c] = x.max(dim=0).values
            ps[c] = x.sub_(pm[c]).exp_().sum(dim=0)
        lb = combine_partials(pm, ps, group)
        for i0, i1 in bounds:
            x = out[i0:i1] + lb
            if it == n_iters - 1:
                out[i0:i1] = torch.softmax(x, dim=1)
            else:
                la[i0:i1] = -torch.logsumexp(x, dim=1)
    return out
