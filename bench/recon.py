"""Negative sampling and the reconstruction loss: ours (C++/CUDA extension, and the eager
reference) vs PyG (``torch_geometric.utils.negative_sampling`` + PyAGC's loss formula) on
random graphs, d = 64.

Ops: ``negative_sampling`` (the sampler alone, mode fwd) and ``sample+recon_loss`` (sampler,
loss forward and backward, mode full).

    python -m bench.recon [--quick | --headline] [--device cpu|cuda] [--provider NAME]

On CUDA the loss runs in fp32 and bf16 (z in that dtype), on the CPU in fp32; ``--headline``
is the N=1e5 / E=1e6 graph.

Set RECON_BENCH_MAX_E=1000000 to run only the N=1e5 / E=1e6 graph.
"""
from __future__ import annotations

import os

import torch

from bench.common import Case, dtype_name, float_dtypes, headline, main

D = 64
EPS = 1e-15


def _graph(n, e, device, d=D, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    ei = torch.randint(0, n, (2, e), generator=g).to(device)
    z = (0.1 * torch.randn(n, d, generator=g)).to(device=device, dtype=dtype).requires_grad_()
    return ei, z


def _pyg_loss(z, pos, neg):
    """PyAGC's DAEGC.recon_loss with PyG's inner-product decoder."""
    s_pos = torch.sigmoid((z[pos[0]] * z[pos[1]]).sum(-1))
    s_neg = torch.sigmoid((z[neg[0]] * z[neg[1]]).sum(-1))
    return -torch.log(s_pos + EPS).mean() - torch.log(1 - s_neg + EPS).mean()


def _sampler(provider):
    if provider == "deepclust-cpp":
        from deepclust.ops import recon as ops_recon

        if not ops_recon.HAS_EXTENSION:
            raise ImportError("deepclust._C is not built")
        return lambda ei, n: ops_recon.negative_sampling(ei, n, impl="cpp")
    if provider == "reference":
        from deepclust.reference import negative_sampling

        return lambda ei, n: negative_sampling(ei, n)
    from torch_geometric.utils import negative_sampling as pyg_negative_sampling

    return lambda ei, n: pyg_negative_sampling(ei, n)


def _loss(provider):
    if provider == "deepclust-cpp":
        from deepclust.ops import recon_loss

        return lambda z, pos, neg: recon_loss(z, pos, neg, impl="cpp")
    if provider == "reference":
        from deepclust.reference import recon_loss

        return recon_loss
    return _pyg_loss


def cases(args):
    sizes = [(1000, 10_000)] if args.quick else [(100_000, 1_000_000), (1_000_000, 10_000_000)]
    max_e = int(os.environ.get("RECON_BENCH_MAX_E", "0"))  # e.g. 1000000: skip the larger graph
    if not args.quick and not args.device.startswith("cuda") and not max_e:
        sizes = sizes[:1]  # the CPU: N=1e5, E=1e6 (PyG's loss at E=1e7 needs ~15 GB)
    sizes = [s for s in sizes if not max_e or s[1] <= max_e]
    if headline(args):
        sizes = [(100_000, 1_000_000)]
    for n, e in sizes:
        for provider in ("deepclust-cpp", "reference", "pyg"):

            def make_sampler(device, n=n, e=e, provider=provider):
                sample = _sampler(provider)
                ei, _ = _graph(n, e, device, d=1)
                return lambda: sample(ei, n)

            yield Case(op="negative_sampling", provider=provider, mode="fwd",
                       sizes=dict(N=n, E=e), dtype="int64", make=make_sampler)

            for dtype in float_dtypes(args):

                def make_full(device, n=n, e=e, provider=provider, dtype=dtype):
                    sample, loss = _sampler(provider), _loss(provider)
                    ei, z = _graph(n, e, device, dtype=dtype)

                    def fn():
                        z.grad = None
                        loss(z, ei, sample(ei, n)).backward()

                    return fn

                yield Case(op="sample+recon_loss", provider=provider, mode="full",
                           sizes=dict(N=n, E=e, d=D), dtype=dtype_name(dtype), make=make_full)


if __name__ == "__main__":
    main("recon", cases)
