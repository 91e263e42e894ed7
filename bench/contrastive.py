"""Benchmark: TCL's instance contrastive loss (masked log-softmax over stacked views).

Providers: the fused op (Triton, torch chunked path), the eager reference (N x N logits),
``torch.compile`` of the reference, and lightly's ``NTXentLoss`` when installed (m = 2 only).
lightly's loss normalises the embeddings itself and drops the diagonal from the logits instead
of masking it; for L2-normalised inputs (as here) it computes the same number as ours with
``tau = temperature``. Sizes: N = m*B rows (m = 2), d features; CUDA N in {8192, 32768,
131072, 262144}, d in {128, 256}, fp32 and bf16; CPU N in {4096, 16384}, d = 128, fp32 (the
eager reference needs N^2 floats several times over); ``--headline`` N = 16384, d = 128;
``--quick`` a tiny case.

    python -m bench.contrastive [--quick | --headline] [--device cpu|cuda]
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.common import Case, dtype_name, float_dtypes, headline, main

TAU = 0.5
M = 2


def _inputs(device, n, d, dtype):
    z = F.normalize(torch.randn(n, d, device=device), dim=1).to(dtype)
    return z.requires_grad_(True)


def _provider_fn(provider):
    """A function z -> loss for one provider (imports inside, so a missing one skips)."""
    if provider == "deepclust-triton":
        from deepclust.ops import instance_contrastive_loss

        return lambda z: instance_contrastive_loss(z, M, TAU, impl="triton")
    if provider == "deepclust-torch":
        from deepclust.ops import instance_contrastive_loss

        return lambda z: instance_contrastive_loss(z, M, TAU, impl="torch")
    if provider == "reference":
        from deepclust.reference import instance_contrastive_loss

        return lambda z: instance_contrastive_loss(z, M, TAU)
    if provider == "compile(reference)":
        from deepclust.reference import instance_contrastive_loss

        compiled = torch.compile(instance_contrastive_loss)
        return lambda z: compiled(z, M, TAU)
    if provider == "lightly":
        from lightly.loss import NTXentLoss  # noqa: PLC0415 - optional peer

        loss = NTXentLoss(temperature=TAU)
        return lambda z: loss(*z.chunk(2))
    raise ValueError(provider)


PROVIDERS = ["deepclust-triton", "deepclust-torch", "reference", "compile(reference)", "lightly"]


def cases(args):
    if args.quick:
        sizes = [(256, 32)]
    elif headline(args):
        sizes = [(16384, 128)]
    elif args.device.startswith("cuda"):
        sizes = [(n, d) for d in (128, 256) for n in (8192, 32768, 131072, 262144)]
    else:
        sizes = [(4096, 128), (16384, 128)]
    for n, d in sizes:
        for dtype in float_dtypes(args):
            e = torch.finfo(dtype).bits // 8
            for provider in PROVIDERS:
                for mode in ("fwd", "full"):

                    def make(device, n=n, d=d, provider=provider, mode=mode, dtype=dtype):
                        fn = _provider_fn(provider)
                        z = _inputs(device, n, d, dtype)
                        if mode == "fwd":
                            def run():
                                with torch.no_grad():
                                    return fn(z)
                        else:
                            def run():
                                z.grad = None
                                fn(z).backward()
                        return run

                    yield Case(op="instance_contrastive_loss", provider=provider, mode=mode,
                               sizes=dict(N=n, d=d, m=M), dtype=dtype_name(dtype), make=make,
                               bytes_moved=n * d * e * (1 if mode == "fwd" else 3))


if __name__ == "__main__":
    main("contrastive", cases)
