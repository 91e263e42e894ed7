"""Benchmark of the DEC loss, forward + backward ("full"): fused Triton, the lean torch path,
the eager reference, the compiled reference, and PyAGC's DECClusterHead when installed.

    python -m bench.dec --device cuda         # N 2^14..2^20, d {10,64,256}, K {10,64,1000}; fp32, bf16
    python -m bench.dec --headline --device cuda  # N 2^20 (CPU 2^16), d 64, K {64, 1000}
    python -m bench.dec --quick --device cpu     # one tiny size
"""
from __future__ import annotations

import torch

from bench.common import Case, dtype_name, float_dtypes, headline, main

PROVIDERS = ("deepclust-triton", "deepclust-torch", "reference", "compile(reference)", "pyagc")


def _loss_fn(provider: str, K: int, d: int, device):
    """The loss as a function of (z, centers) for one provider (raises ImportError if absent)."""
    if provider == "pyagc":
        from pyagc.clusters import DECClusterHead

        head = DECClusterHead(K, d).to(device)

        def pyagc_loss(z, mu):
            head.cluster_centers = mu  # the benchmark's centres (a leaf with grad)
            return head(z)

        return pyagc_loss
    from deepclust.ops.dec import dec_loss
    from deepclust.reference.dec import dec_loss as ref_loss

    if provider == "deepclust-triton":
        return lambda z, mu: dec_loss(z, mu, impl="triton")
    if provider == "deepclust-torch":
        return lambda z, mu: dec_loss(z, mu, impl="torch")
    if provider == "reference":
        return ref_loss
    if provider == "compile(reference)":
        return torch.compile(ref_loss)
    raise ValueError(provider)


def cases(args):
    if args.quick:
        sizes = [(256, 10, 10)]
    elif headline(args):  # the CPU: the README's sizes (N = 2^20 at K = 1000 needs ~20 GB eager)
        N = 1 << 20 if args.device.startswith("cuda") else 1 << 16
        sizes = [(N, 64, 64), (N, 64, 1000)]
    elif not args.device.startswith("cuda"):
        # the CPU: sizes the eager reference (several N x K temporaries) still fits
        sizes = [(1 << 14, 64, 64), (1 << 16, 10, 10), (1 << 16, 64, 64), (1 << 16, 64, 1000),
                 (1 << 18, 64, 64)]
    else:
        sizes = [
            (1 << p, d, K) for p in (14, 16, 18, 20) for d in (10, 64, 256) for K in (10, 64, 1000)
        ]
    for N, d, K in sizes:
        for dtype in float_dtypes(args):
            for provider in PROVIDERS:

                def make(device, N=N, d=d, K=K, provider=provider, dtype=dtype):
                    fn = _loss_fn(provider, K, d, device)
                    z = torch.randn(N, d, device=device, dtype=dtype, requires_grad=True)
                    mu = torch.nn.Parameter(torch.randn(K, d, device=device, dtype=dtype))

                    def run():
                        z.grad = None
                        mu.grad = None
                        fn(z, mu).backward()

                    return run

                itemsize = torch.finfo(dtype).bits // 8
                yield Case(
                    op="dec_loss", provider=provider, mode="full",
                    sizes=dict(N=N, d=d, K=K), dtype=dtype_name(dtype), make=make,
                    # the fused path's minimum traffic: z read in both passes, its gradient written
                    bytes_moved=3 * N * d * itemsize + 3 * K * d * itemsize,
                )


if __name__ == "__main__":
    main("dec", cases)
