"""Benchmark of k-means: ours (:func:`deepclust.cluster.kmeans` with the torch backend, its
assignment step on the Triton path on CUDA and on the torch path), its faiss backend, an eager
reference (textbook Lloyd in torch: the N x K ``torch.cdist`` matrix and its argmin), faiss
itself, scikit-learn's ``KMeans`` and PyAGC's ``TorchKMeans`` when installed.

    python -m bench.kmeans --device cuda       # N x d x K = 1e5 x 128 x 100 and 1e6 x 128 x 1000
    python -m bench.kmeans --headline          # 1e5 x 128 x 100
    python -m bench.kmeans --device cpu        # 2e4 x 128 x 100 and 1e5 x 128 x 100
    python -m bench.kmeans --quick --device cpu  # one tiny size

Every provider runs one complete clustering on the same Gaussian-mixture data: one restart
(``n_init = 1``), its own seeding (greedy k-means++ for ours, scikit-learn and PyAGC; random
rows for faiss and the reference), then at most ``MAX_ITER`` Lloyd iterations with ``tol = 0``
(ours also stops when the labels no longer change). Timing is of the whole call, forward only
(``mode=fwd``); float32, plus bfloat16 input for the torch providers on CUDA (ours computes in
float32 internally). The faiss and scikit-learn providers run on the CPU whatever ``--device``
says (their rows still carry the device of the run); ``deepclust-faiss`` copies CUDA input to
the CPU.
"""
from __future__ import annotations

import torch

from bench.common import Case, dtype_name, float_dtypes, headline, main

PROVIDERS = ("deepclust-triton", "deepclust-torch", "deepclust-faiss", "reference", "faiss",
             "sklearn", "pyagc")
# providers that take float32 only (numpy / faiss)
FP32_ONLY = ("deepclust-faiss", "faiss", "sklearn", "pyagc")
MAX_ITER = 20
SEED = 0


def _data(N: int, d: int, K: int, device) -> torch.Tensor:
    """N points around K Gaussian centres in d dimensions (fixed seed)."""
    g = torch.Generator().manual_seed(1234)
    centers = torch.randn(K, d, generator=g) * 4.0
    labels = torch.randint(0, K, (N,), generator=g)
    return (centers[labels] + torch.randn(N, d, generator=g)).to(device)


def reference_kmeans(x: torch.Tensor, K: int, max_iter: int, seed: int = SEED) -> torch.Tensor:
    """Textbook Lloyd in eager torch: K random rows as centres, then ``max_iter`` rounds of
    ``torch.cdist(x, centres).argmin(1)`` (the N x K matrix) and the cluster means."""
    g = torch.Generator().manual_seed(seed)
    xf = x.float()
    centers = xf[torch.randperm(x.shape[0], generator=g)[:K].to(x.device)].clone()
    for _ in range(max_iter):
        labels = torch.cdist(xf, centers).argmin(1)
        sums = torch.zeros_like(centers).index_add_(0, labels, xf)
        counts = torch.bincount(labels, minlength=K)
        means = sums / counts.clamp_min(1).to(xf.dtype)[:, None]
        centers = torch.where((counts > 0)[:, None], means, centers)  # empty: keep the centre
    return torch.cdist(xf, centers).argmin(1)


def _cluster_fn(provider: str, K: int, max_iter: int):
    """A function of x that clusters it once (raises ImportError when the package is absent)."""
    if provider == "reference":
        return lambda x: reference_kmeans(x, K, max_iter)
    if provider == "faiss":
        import faiss

        def run_faiss(x):
            xn = x.detach().cpu().numpy()
            km = faiss.Kmeans(xn.shape[1], K, niter=max_iter, nredo=1, seed=SEED, verbose=False,
                              min_points_per_centroid=1, max_points_per_centroid=xn.shape[0])
            km.train(xn)
            return km.index.search(xn, 1)[1]

        return run_faiss
    if provider == "sklearn":
        from sklearn.cluster import KMeans

        def run_sklearn(x):
            km = KMeans(K, init="k-means++", n_init=1, max_iter=max_iter, tol=0.0,
                        algorithm="lloyd", random_state=SEED)
            return km.fit_predict(x.detach().cpu().numpy())

        return run_sklearn
    if provider == "pyagc":
        from pyagc.clusters import TorchKMeans

        def run_pyagc(x):
            km = TorchKMeans(n_clusters=K, n_init=1, max_iter=max_iter, tol=0.0,
                             random_state=SEED, metric="euclidean", verbose=False)
            return km.fit_predict(x)

        return run_pyagc
    from deepclust.cluster import kmeans

    if provider == "deepclust-faiss":
        return lambda x: kmeans(x, K, n_init=1, max_iter=max_iter, tol=0.0, seed=SEED,
                                backend="faiss").labels
    impl = {"deepclust-triton": "triton", "deepclust-torch": "torch"}[provider]
    return lambda x: kmeans(x, K, n_init=1, max_iter=max_iter, tol=0.0, seed=SEED,
                            backend="torch", impl=impl).labels


def cases(args):
    cuda = args.device.startswith("cuda")
    max_iter = MAX_ITER
    if args.quick:
        sizes, max_iter = [(2000, 16, 10)], 5
    elif headline(args):
        sizes = [(100_000, 128, 100)]
    elif cuda:
        sizes = [(100_000, 128, 100), (1_000_000, 128, 1000)]
    else:  # the CPU: the size and a smaller one
        sizes = [(20_000, 128, 100), (100_000, 128, 100)]
    for N, d, K in sizes:
        for dtype in float_dtypes(args):
            for provider in PROVIDERS:
                if dtype != torch.float32 and provider in FP32_ONLY:
                    continue
                yield _case(N, d, K, dtype, provider, max_iter)


def _case(N, d, K, dtype, provider, max_iter) -> Case:
    def make(device):
        fn = _cluster_fn(provider, K, max_iter)
        x = _data(N, d, K, device).to(dtype)

        def run():
            out = fn(x)
            if isinstance(out, torch.Tensor) and out.is_cuda:
                torch.cuda.synchronize()
            return out

        return run

    return Case(
        op="kmeans", provider=provider, mode="fwd", sizes=dict(N=N, d=d, K=K),
        dtype=dtype_name(dtype), make=make,
        # one read of x per Lloyd iteration (assignment; the update reads it again on most
        # backends): the minimum traffic of the iterations
        bytes_moved=max_iter * N * d * (torch.finfo(dtype).bits // 8),
    )


if __name__ == "__main__":
    main("kmeans", cases)
