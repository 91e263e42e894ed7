"""Benchmark of Sinkhorn-Knopp codes (SwAV): fused Triton (from scores, and as op
``sinkhorn_from_embeddings`` without storing the scores), the lean torch path, the eager reference, the compiled reference,
lightly's ``sinkhorn`` and POT's ``ot.sinkhorn`` when installed.

    python -m bench.sinkhorn --device cuda        # B x K in {4096x3000, 16384x3000, 65536x1000}
    python -m bench.sinkhorn --headline --device cuda  # B x K = 16384 x 3000
    python -m bench.sinkhorn --quick --device cpu  # one tiny size

POT solves the balanced transport problem with marginals 1/B and 1/K (its plan's rows sum to
1/B, ours to 1) and the cost ``-scores`` at ``reg = eps``; with ``numItermax = n_iters`` and
``stopThr = 0`` it does the same number of scaling updates, so its timing is comparable though
its output is scaled differently. Lightly's ``sinkhorn`` is the published algorithm (exp of the
scores, no max shift).

``bytes_moved`` is the fused kernel's traffic: the B x K scores are read ``2 n_iters + 1`` times
(one column pass and one row pass per iteration, plus the re-read of the final pass that writes
the codes) and the float32 codes written once; the K- and B-vectors are negligible. The
from-embeddings variant reads z (B x d) and the prototypes instead of the scores.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.common import Case, headline, main

PROVIDERS = ("deepclust-triton", "deepclust-torch", "reference", "compile(reference)", "lightly",
             "pot")
EPS, N_ITERS, D = 0.05, 3, 128


def _codes_fn(provider: str, from_embeddings: bool = False):
    """The codes as a function of (z, prototypes, scores) (raises ImportError if absent)."""
    if provider == "lightly":
        from lightly.loss.swav_loss import sinkhorn as lsk

        return lambda z, p, s: lsk(s, iterations=N_ITERS, epsilon=EPS)
    if provider == "pot":
        import ot

        def pot(z, p, s):
            B, K = s.shape
            a = torch.full((B,), 1.0 / B, device=s.device, dtype=s.dtype)
            b = torch.full((K,), 1.0 / K, device=s.device, dtype=s.dtype)
            return ot.sinkhorn(a, b, -s, EPS, method="sinkhorn_log", numItermax=N_ITERS, stopThr=0.0)

        return pot
    from deepclust.ops.sinkhorn_knopp import sinkhorn, sinkhorn_from_embeddings
    from deepclust.reference.sinkhorn_knopp import sinkhorn as ref

    if provider == "deepclust-triton" and from_embeddings:
        return lambda z, p, s: sinkhorn_from_embeddings(z, p, EPS, N_ITERS, impl="triton")
    if provider == "deepclust-triton":
        return lambda z, p, s: sinkhorn(s, EPS, N_ITERS, impl="triton")
    if provider == "deepclust-torch":
        return lambda z, p, s: sinkhorn(s, EPS, N_ITERS, impl="torch")
    if provider == "reference":
        return lambda z, p, s: ref(s, EPS, N_ITERS)
    if provider == "compile(reference)":
        cref = torch.compile(ref)
        return lambda z, p, s: cref(s, EPS, N_ITERS)
    raise ValueError(provider)


def cases(args):
    sizes = [(256, 300)] if args.quick else [(4096, 3000), (16384, 3000), (65536, 1000)]
    if not args.quick and not args.device.startswith("cuda"):
        sizes = sizes[:2]  # the CPU: the two 3000-prototype sizes
    if headline(args):
        sizes = [(16384, 3000)]
    for B, K in sizes:
        for dtype in (torch.float32, torch.bfloat16):
            for provider, from_emb in [(p, False) for p in PROVIDERS] + [("deepclust-triton", True)]:
                if dtype != torch.float32 and provider in ("lightly", "pot"):
                    continue

                def make(device, B=B, K=K, provider=provider, dtype=dtype, from_emb=from_emb):
                    fn = _codes_fn(provider, from_emb)
                    z = F.normalize(torch.randn(B, D, device=device), dim=1).to(dtype)
                    p = F.normalize(torch.randn(K, D, device=device), dim=1).to(dtype)
                    s = z @ p.t()
                    return lambda: fn(z, p, s)

                e = torch.finfo(dtype).bits // 8
                if from_emb:  # z and the prototypes read on every pass (prototypes from L2)
                    nbytes = (2 * N_ITERS + 1) * (B + K) * D * e + 4 * B * K
                else:
                    nbytes = (2 * N_ITERS + 1) * B * K * e + 4 * B * K
                yield Case(op="sinkhorn_from_embeddings" if from_emb else "sinkhorn",
                           provider=provider, mode="fwd",
                           sizes=dict(B=B, K=K, d=D, n_iters=N_ITERS), dtype=str(dtype).split(".")[1],
                           make=make, bytes_moved=nbytes)


if __name__ == "__main__":
    main("sinkhorn", cases)
