"""Benchmark: fused prototype cross-entropy vs the eager reference and compile(reference).

Forward + backward of ``prototype_cross_entropy(x, prototypes, target, phi)`` with int64
targets and per-prototype temperatures (PCL's ProtoNCE shape), d = 128: fp32 and bf16 on CUDA
(embeddings, prototypes and temperatures in that dtype), fp32 on the CPU.

    python -m bench.prototype [--quick | --headline] [--device cpu|cuda]  # headline: 65536 x 3000
"""
import torch

from bench.common import Case, dtype_name, float_dtypes, headline, main


def cases(args):
    from deepclust.ops import prototype_cross_entropy as fused
    from deepclust.reference import prototype_cross_entropy as ref

    sizes = [(64, 32)] if args.quick else [(4096, 3000), (4096, 16384), (65536, 3000), (65536, 16384)]
    if not args.quick and not args.device.startswith("cuda"):
        sizes = sizes[:3]  # the CPU: the eager N x K logits of 65536 x 16384 need 4 GB each
    if headline(args):
        sizes = [(65536, 3000)]
    compiled = {}
    providers = {
        "deepclust-triton": lambda *a: fused(*a, impl="triton"),
        "deepclust-torch": lambda *a: fused(*a, impl="torch"),
        "reference": ref,
        "compile(reference)": None,
    }
    d = 128
    for N, K in sizes:
        for dtype in float_dtypes(args):
            e = torch.finfo(dtype).bits // 8
            for provider, fn in providers.items():
                for mode in ("fwd", "full"):
                    def make(device, N=N, K=K, provider=provider, fn=fn, mode=mode, dtype=dtype):
                        if fn is None:
                            fn = compiled.setdefault("ref", torch.compile(ref))
                        x = torch.nn.functional.normalize(torch.randn(N, d, device=device), dim=1)
                        x = x.to(dtype).requires_grad_(mode == "full")
                        c = torch.nn.functional.normalize(torch.randn(K, d, device=device), dim=1)
                        c = c.to(dtype).requires_grad_(mode == "full")
                        t = torch.randint(0, K, (N,), device=device)
                        phi = (0.1 + 0.2 * torch.rand(K, device=device)).to(dtype)

                        def run():
                            loss = fn(x, c, t, phi)
                            if mode == "full":
                                loss.backward()
                        return run

                    yield Case(op="prototype_cross_entropy", provider=provider, mode=mode,
                               sizes=dict(N=N, K=K, d=d), dtype=dtype_name(dtype), make=make,
                               bytes_moved=e * (N * d + K * d + K) + 8 * N)


if __name__ == "__main__":
    main("prototype", cases)
