"""Benchmark of the SwAV swapped-prediction loss, forward + backward ("full"), 2 assignment
crops among V = 4 crops (SwAV's 2 x 224 + 2 x 96 shape of the loss): fused Triton, the lean
torch path, the eager reference, the compiled reference and lightly's ``SwaVLoss`` when
installed.

    python -m bench.swav_loss --device cuda        # B x K in {4096x3000, 16384x3000, 65536x1000}
    python -m bench.swav_loss --headline --device cuda  # B x K = 4096 x 3000
    python -m bench.swav_loss --quick --device cpu  # one tiny size

``bytes_moved`` is the fused path's traffic: Sinkhorn on each of the A = 2 assignment crops
(``(2 n_iters + 1)`` reads of B x K scores and a float32 write), the loss forward (each crop's
scores once, the A float32 code matrices once per crop) and backward (the same reads plus the
gradient written in the scores' dtype).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.common import Case, headline, main

PROVIDERS = ("deepclust-triton", "deepclust-torch", "reference", "compile(reference)", "lightly")
V, ASSIGN, TAU, EPS, N_ITERS = 4, (0, 1), 0.1, 0.05, 3


def _loss_fn(provider: str):
    """The loss of a (V, B, K) score tensor for one provider (raises ImportError if absent)."""
    if provider == "lightly":
        from lightly.loss import SwaVLoss

        crit = SwaVLoss(temperature=TAU, sinkhorn_iterations=N_ITERS, sinkhorn_epsilon=EPS)
        return lambda x: crit(list(x[:2]), list(x[2:]))
    from deepclust.ops.swav import swav_loss
    from deepclust.reference.swav import swav_loss as ref

    if provider == "deepclust-triton":
        return lambda x: swav_loss(x, ASSIGN, TAU, EPS, N_ITERS, impl="triton")
    if provider == "deepclust-torch":
        return lambda x: swav_loss(x, ASSIGN, TAU, EPS, N_ITERS, impl="torch")
    if provider == "reference":
        return lambda x: ref(x, ASSIGN, TAU, EPS, N_ITERS)
    if provider == "compile(reference)":
        cref = torch.compile(ref)
        return lambda x: cref(x, ASSIGN, TAU, EPS, N_ITERS)
    raise ValueError(provider)


def cases(args):
    sizes = [(256, 300)] if args.quick else [(4096, 3000), (16384, 3000), (65536, 1000)]
    if not args.quick and not args.device.startswith("cuda"):
        sizes = sizes[:1]  # the CPU: 2 large + small crops at 4096 x 3000 already take seconds
    if headline(args):
        sizes = [(4096, 3000)]
    for B, K in sizes:
        for dtype in (torch.float32, torch.bfloat16):
            for provider in PROVIDERS:
                if dtype != torch.float32 and provider == "lightly":
                    continue

                def make(device, B=B, K=K, provider=provider, dtype=dtype):
                    fn = _loss_fn(provider)
                    p = F.normalize(torch.randn(K, 64, device=device), dim=1)
                    z = F.normalize(torch.randn(V * B, 64, device=device), dim=1)
                    x = (z @ p.t()).view(V, B, K).to(dtype).requires_grad_()

                    def run():
                        x.grad = None
                        fn(x).backward()

                    return run

                e = torch.finfo(dtype).bits // 8
                A = len(ASSIGN)
                sk = A * ((2 * N_ITERS + 1) * B * K * e + 4 * B * K)
                fwd = V * B * K * e + V * A * B * K * 4
                bwd = V * B * K * e + V * A * B * K * 4 + V * B * K * e
                yield Case(op="swav_loss", provider=provider, mode="full",
                           sizes=dict(B=B, K=K, V=V, A=A), dtype=str(dtype).split(".")[1],
                           make=make, bytes_moved=sk + fwd + bwd)


if __name__ == "__main__":
    main("swav_loss", cases)
