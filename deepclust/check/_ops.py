"""The op checks of ``deepclust check``: one checker per public op of :mod:`deepclust.ops` and
the table of their sizes (:data:`OPS`).

A checker ``(fused, refs, dtype, device, size, seed) -> [Cmp]`` gets the op with its path bound
(``impl``) and ``refs``, the module of references (:mod:`deepclust.reference`, which only the
package's ``__init__`` imports); it judges the op by the reference of the same name.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from ._measure import FACTOR, Cmp, close, compare_fwd_bwd, loss_and_grads


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit(n, d, g):
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def _points_and_centres(size, seed):
    """The generator, points z (N x d) and centres (K x d) of a DEC-family check, in float64."""
    n, k, d = size
    g = _gen(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5
    return g, z, torch.randn(k, d, generator=g, dtype=torch.float64) * 0.5


# --------------------------------------------------------------------------- the ops
def _dec_loss(fused, refs, dtype, device, size, seed):
    ref = refs.dec_loss
    n, k, d = size
    g, z, mu = _points_and_centres(size, seed)
    out = compare_fwd_bwd(("loss", "grad z", "grad centers"), fused, ref, [z, mu], dtype, device,
                          1.0)
    # a cached target: one pass of the fused kernel
    t = torch.rand(n, k, generator=g, dtype=torch.float64)
    t[t < 0.2] = 0.0
    tt = t.to(dtype).double()  # the target in the dtype under test, exactly representable
    low = [x.to(device=device, dtype=dtype) for x in (z, mu)]
    truth = loss_and_grads(ref, [x.double() for x in low], 0.5, tt.to(device))
    r = loss_and_grads(ref, low, 0.5, tt.to(device, dtype))
    o = loss_and_grads(fused, low, 0.5, tt.to(device, dtype))
    names = ("loss (cached target)", "grad z (cached target)", "grad centers (cached target)")
    return out + [close(nm, a, b, c) for nm, a, b, c in zip(names, o, r, truth)]


def _soft_assign(fused, refs, dtype, device, size, seed):
    ref = refs.soft_assign
    n, k, d = size
    g, z, mu = _points_and_centres(size, seed)
    gq = torch.randn(n, k, generator=g, dtype=torch.float64).to(dtype)
    return compare_fwd_bwd(("q", "grad z", "grad centers"), fused, ref, [z, mu], dtype, device,
                           0.5, grad_out=gq)


def _target_distribution(fused, refs, dtype, device, size, seed):
    ref = refs.target_distribution
    n, k, d = size
    g = _gen(seed)
    z = torch.randn(n, d, generator=g) * 0.5
    mu = torch.randn(k, d, generator=g) * 0.5
    q = refs.soft_assign(z, mu).to(device, dtype)
    with torch.no_grad():
        out = fused(q)
    return [close("p", out, ref(q), ref(q.double()))]


def _hard_assign(fused, refs, dtype, device, size, seed):
    ref = refs.hard_assign
    n, k, d = size
    g = _gen(seed)
    mu = (torch.randn(k, d, generator=g) * 3).to(dtype)
    labels = torch.randint(0, k, (n,), generator=g)
    z = (mu.float()[labels] + 0.1 * torch.randn(n, d, generator=g)).to(dtype)
    want = torch.cdist(z.double(), mu.double()).argmin(1)
    out = fused(z.to(device), mu.to(device))
    if out.shape != want.shape or out.dtype != torch.int64:
        return [Cmp("labels", float("inf"), 0.0,
                    f"labels: shape {tuple(out.shape)} {out.dtype}, want {tuple(want.shape)} int64")]
    wrong = int((out.cpu() != want).sum())
    ref_wrong = int((ref(z, mu).cpu() != want).sum())
    return [Cmp("labels differing from the float64 argmin", wrong, FACTOR * ref_wrong)]


def _sinkhorn(fused, refs, dtype, device, size, seed):
    ref = refs.sinkhorn
    b, k, eps = size
    g = _gen(seed)
    scores = (_unit(b, 16, g) @ _unit(k, 16, g).t()).to(device=device, dtype=dtype)
    out = fused(scores, eps=eps)
    # the codes are float32 for every input dtype (float64 for float64)
    return [close("codes", out, ref(scores, eps=eps), ref(scores.double(), eps=eps),
                  margin_dtype=out.dtype if out.dtype == torch.float64 else torch.float32)]


def _sinkhorn_from_embeddings(fused, refs, dtype, device, size, seed):
    ref = refs.sinkhorn_from_embeddings
    b, k, d = size
    g = _gen(seed)
    z = _unit(b, d, g).to(device=device, dtype=dtype)
    p = _unit(k, d, g).to(device=device, dtype=dtype)
    out = fused(z, p)
    return [close("codes", out, ref(z, p), ref(z.double(), p.double()),
                  margin_dtype=out.dtype if out.dtype == torch.float64 else torch.float32)]


def _swav_loss(fused, refs, dtype, device, size, seed):
    ref = refs.swav_loss
    b, k, v = size
    g = _gen(seed)
    base = torch.stack([_unit(b, 12, g) @ _unit(k, 12, g).t() for _ in range(v)])

    def stacked(fn):
        def run(x, **kw):
            return fn(list(x.unbind(0)), (0, 1), **kw)
        return run

    return compare_fwd_bwd(("loss", "grad crops"), stacked(fused), stacked(ref), [base], dtype,
                           device)


def _instance_contrastive_loss(fused, refs, dtype, device, size, seed):
    ref = refs.instance_contrastive_loss
    m, b, d, tau = size
    z = F.normalize(torch.randn(m * b, d, generator=_gen(seed), dtype=torch.float64), dim=1)
    return compare_fwd_bwd(("loss", "grad z"), fused, ref, [z], dtype, device, m, tau)


def _cluster_contrastive_loss(fused, refs, dtype, device, size, seed):
    ref = refs.cluster_contrastive_loss
    m, b, k, tau = size
    c = torch.softmax(2.0 * torch.randn(m * b, k, generator=_gen(seed), dtype=torch.float64), dim=1)
    return compare_fwd_bwd(("loss", "grad c"), fused, ref, [c], dtype, device, m, tau)


def _prototype_cross_entropy(fused, refs, dtype, device, size, seed):
    ref = refs.prototype_cross_entropy
    n, k, d, soft = size
    g = _gen(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5
    c = F.normalize(torch.randn(k, d, generator=g, dtype=torch.float64), dim=1)
    if soft:
        t = torch.rand(n, k, generator=g, dtype=torch.float64).pow(3)
        t = (t / t.sum(1, keepdim=True)).to(dtype)  # exactly representable in the dtype
        temp = (0.05 + 0.3 * torch.rand(k, generator=g, dtype=torch.float64)).to(dtype)
        t64, temp64 = t.double().to(device), temp.double().to(device)
        t_lo, temp_lo = t.to(device), temp.to(device)
    else:
        t64 = t_lo = torch.randint(0, k, (n,), generator=g).to(device)
        temp64 = temp_lo = 0.1
    low = [x.to(device=device, dtype=dtype), c.to(device=device, dtype=dtype)]
    truth = loss_and_grads(ref, [v.double() for v in low], t64, temp64)
    r = loss_and_grads(ref, low, t_lo, temp_lo)
    o = loss_and_grads(fused, low, t_lo, temp_lo)
    kind = "soft" if soft else "hard"
    names = (f"loss ({kind})", f"grad x ({kind})", f"grad prototypes ({kind})")
    return [close(nm, a, b_, c_) for nm, a, b_, c_ in zip(names, o, r, truth)]


def _recon_loss(fused, refs, dtype, device, size, seed):
    ref = refs.recon_loss
    n, d, e_pos, e_neg = size
    g = _gen(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    pos = torch.randint(0, n, (2, e_pos), generator=g).to(device)
    neg = torch.randint(0, n, (2, e_neg), generator=g).to(device)
    return compare_fwd_bwd(("loss", "grad z"), fused, ref, [z], dtype, device, pos, neg)


def _negative_sampling(fused, refs, dtype, device, size, seed):
    """The sampler's contract: exact count, int64, indices in range, no self-loop, never an
    edge, reproducible with a generator, uniform over the non-edges (chi-square z-score); no
    reference is needed."""
    n, e, s = size
    g = _gen(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    ei = ei[:, ei[0] != ei[1]].to(device=device, dtype=dtype)
    out = fused(ei, n, s, generator=_gen(seed + 1))
    res = []
    ok_shape = tuple(out.shape) == (2, s) and out.dtype == torch.int64
    res.append(Cmp("shape (2, S) int64", 0 if ok_shape else 1, 0,
                   "" if ok_shape else f"got {tuple(out.shape)} {out.dtype}"))
    if not ok_shape or out.dim() != 2 or out.shape[0] != 2:
        return res
    o = out.cpu().long()
    res.append(Cmp("indices outside [0, N)", int(((o < 0) | (o >= n)).sum()), 0))
    res.append(Cmp("self-loops drawn", int((o[0] == o[1]).sum()), 0))
    edges = set((ei[0].cpu().long() * n + ei[1].cpu().long()).tolist())
    keys = (o[0] * n + o[1]).tolist()
    res.append(Cmp("edges drawn as negatives", sum(k in edges for k in keys), 0))
    again = fused(ei, n, s, generator=_gen(seed + 1))
    res.append(Cmp("draws not reproducible with a seeded generator",
                   0 if torch.equal(again.cpu(), out.cpu()) else 1, 0))
    # uniformity over the non-edges: z-score of Pearson's chi-square statistic
    non_edges = n * (n - 1) - len({k for k in edges})
    if 0 < non_edges and s >= 5 * non_edges:
        counts = torch.bincount(torch.tensor(keys), minlength=n * n).double()
        mask = torch.ones(n * n, dtype=torch.bool)
        mask[torch.arange(n) * (n + 1)] = False
        mask[torch.tensor(sorted(edges), dtype=torch.long)] = False
        expected = s / non_edges
        chi2 = ((counts[mask] - expected) ** 2 / expected).sum().item()
        dof = non_edges - 1
        zscore = max(0.0, (chi2 - dof) / math.sqrt(2 * dof)) if dof > 0 else 0.0
        res.append(Cmp("non-uniform draws (chi-square z-score)", zscore, 6.0))
    return res


# op -> (checker, sizes: first is the quick set, input dtypes or None for the float dtypes)
OPS: Dict[str, Tuple[Callable, list, Optional[tuple]]] = {
    "dec_loss": (_dec_loss, [(37, 5, 19), (67, 33, 130)], None),
    "soft_assign": (_soft_assign, [(37, 5, 19), (67, 33, 130)], None),
    "target_distribution": (_target_distribution, [(37, 5, 19), (129, 70, 13)], None),
    "hard_assign": (_hard_assign, [(37, 5, 19), (67, 33, 130)], None),
    "sinkhorn": (_sinkhorn, [(37, 5, 0.05), (67, 70, 0.02)], None),
    "sinkhorn_from_embeddings": (_sinkhorn_from_embeddings, [(37, 5, 19), (67, 70, 130)], None),
    "swav_loss": (_swav_loss, [(17, 5, 3), (33, 70, 2)], None),
    "instance_contrastive_loss": (_instance_contrastive_loss,
                                  [(2, 13, 19, 0.1), (3, 21, 130, 0.5)], None),
    "cluster_contrastive_loss": (_cluster_contrastive_loss, [(2, 13, 7, 1.0), (3, 21, 33, 0.5)],
                                 None),
    "prototype_cross_entropy": (_prototype_cross_entropy,
                                [(37, 5, 19, False), (37, 70, 33, True)], None),
    "negative_sampling": (_negative_sampling, [(7, 12, 3000), (50, 300, 997)],
                          (torch.int64, torch.int32)),
    "recon_loss": (_recon_loss, [(37, 19, 101, 57), (53, 130, 211, 97)], None),
}

