"""The ``deepclust`` command line.

``deepclust fit METHOD --data NAME [--root DIR] [--seed N] [--device cpu|cuda] [--epochs N]
[--impl auto|triton|torch] [--json PATH] [--no-progress]`` trains METHOD on a data set and prints
ACC/NMI/ARI/F1 and the seconds it took. ``deepclust demo`` is the main job on the embedded
default (the digits): k-means, then DEC trained with the fused ops, then a timing of the fused
DEC loss against the eager reference. Errors are one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

from .data.datasets import DATASETS, GRAPH_DATASETS, IMAGE_DATASETS

# METHOD -> (module with cli_fit, data sets it accepts or None for all)
METHODS = {
    "kmeans": (None, None),
    "dec": ("deepclust.models.dec", None),
    "swav": ("deepclust.models.swav", IMAGE_DATASETS),
    "tcl": ("deepclust.models.tcl", IMAGE_DATASETS),
    "daegc": ("deepclust.models.daegc", GRAPH_DATASETS),
    "pcl": ("deepclust.models.pcl", None),
}


class CLIError(Exception):
    """A user error reported as one line."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deepclust", description="Deep clustering with fused GPU kernels.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fit", help="train a clustering method on a data set and evaluate it")
    f.add_argument("method", help=f"one of: {', '.join(METHODS)}")
    f.add_argument("--data", required=True, help=f"one of: {', '.join(DATASETS)}")
    f.add_argument("--root", default=os.environ.get("DEEPCLUST_DATA"),
                   help="folder laid out like shared/data (default: $DEEPCLUST_DATA)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    f.add_argument("--epochs", type=int, default=None, help="training epochs (method default if omitted)")
    f.add_argument("--impl", default="auto", choices=("auto", "triton", "torch"),
                   help="op path: Triton kernels, eager torch, or auto (Triton on CUDA)")
    f.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    f.add_argument("--no-progress", action="store_true", help="no progress bars")
    f.add_argument("--debug", action="store_true", help="show tracebacks")
    d = sub.add_parser("demo", help="the main job on the embedded digits: k-means, DEC, op timing")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu")
    d.add_argument("--json", default=None, metavar="PATH")
    d.add_argument("--debug", action="store_true")
    return p


def _check_device(device: str):
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise CLIError(f"--device {device!r} is not a device; use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise CLIError(f"--device {device!r}: only cpu and cuda are supported")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device {device!r}: CUDA is not available on this machine")
    return dev


def _load_data(name: str, root):
    from .data import load

    if name.lower() not in DATASETS:
        raise CLIError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")
    if root is not None and not os.path.isdir(root):
        raise CLIError(f"--root {root!r} is not a folder")
    try:
        return load(name, root)
    except (FileNotFoundError, ValueError, ImportError) as exc:
        raise CLIError(str(exc)) from None


def _fit_kmeans(data, config) -> dict:
    from .cluster import kmeans

    x = data.x.to(config.device)
    res = kmeans(x, data.n_clusters, n_init=10, seed=config.seed, impl=config.impl)
    return {"pred": res.labels.cpu().numpy(), "inertia": float(res.inertia)}


def fit(method: str, data_name: str, *, root=None, seed=0, device="cpu", epochs=None,
        impl="auto", progress=True) -> dict:
    """Train ``method`` on ``data_name`` and evaluate it; the result dict of ``deepclust fit``."""
    import numpy as np
    import torch

    from .metrics import evaluate
    from .models.base import FitConfig

    method = method.lower()
    if method not in METHODS:
        raise CLIError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if epochs is not None and epochs < 1:
        raise CLIError(f"--epochs must be >= 1, got {epochs}")
    dev = _check_device(device)
    module, accepted = METHODS[method]
    if accepted is not None and data_name.lower() not in accepted:
        raise CLIError(f"method {method!r} needs one of the data sets {', '.join(accepted)}; got {data_name!r}")
    data = _load_data(data_name, root)
    config = FitConfig(seed=seed, device=str(dev), epochs=epochs, impl=impl, progress=progress)
    torch.manual_seed(seed)
    np.random.seed(seed)
    t0 = time.perf_counter()
    if module is None:
        out = _fit_kmeans(data, config)
    else:
        out = importlib.import_module(module).cli_fit(data, config)
    seconds = time.perf_counter() - t0
    pred = np.asarray(out.pop("pred"))
    extra = {}
    for k, v in out.items():
        if k.endswith("_pred"):
            extra[k.replace("_pred", "")] = evaluate(data.y, np.asarray(v))
        elif isinstance(v, (int, float, str)):
            extra[k] = v
    res = evaluate(data.y, pred)
    res.update(seconds=round(seconds, 3), device=str(dev), method=method, data=data.name,
               seed=seed, impl=impl, n=int(data.x.shape[0]), n_clusters=data.n_clusters)
    if extra:
        res["extra"] = extra
    return res


def _line(res: dict) -> str:
    return (f"{res['method']} on {res['data']}: ACC {res['acc']:.4f}  NMI {res['nmi']:.4f}  "
            f"ARI {res['ari']:.4f}  F1 {res['f1']:.4f}  seconds {res['seconds']:.1f}")


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def demo(seed=0, device="cpu", json_path=None):
    """k-means and DEC on the digits, then the fused DEC loss timed against the reference."""
    results = []
    for method in ("kmeans", "dec"):
        res = fit(method, "digits", seed=seed, device=device, progress=True)
        results.append(res)
        print(_line(res), flush=True)
    timing = _demo_timing(device)
    print(timing["line"], flush=True)
    if json_path:
        _write_json(json_path, {"fits": results, "timing": timing})
    return results, timing


def _demo_timing(device: str, n: int = 1 << 16, d: int = 10, k: int = 10, rep: int = 5) -> dict:
    """Forward+backward of the DEC loss at N x d x K: fused op (auto path) vs eager reference."""
    import statistics

    import torch

    from . import ops, reference

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(n, d, generator=gen).to(device).requires_grad_(True)
    mu = torch.randn(k, d, generator=gen).to(device).requires_grad_(True)

    def run(fn):
        times = []
        for _ in range(rep + 1):
            z.grad = mu.grad = None
            if z.is_cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn(z, mu).backward()
            if z.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return statistics.median(times[1:]) * 1e3

    fused = run(ops.dec_loss)
    ref = run(reference.dec_loss)
    line = (f"dec_loss fwd+bwd, N={n} d={d} K={k} fp32 on {device}: fused {fused:.2f} ms, "
            f"eager reference {ref:.2f} ms ({ref / fused:.2f}x)")
    return {"op": "dec_loss", "N": n, "d": d, "K": k, "device": device,
            "fused_ms": fused, "reference_ms": ref, "line": line}


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            _check_device(args.device)
            demo(seed=args.seed, device=args.device, json_path=args.json)
            return 0
        res = fit(args.method, args.data, root=args.root, seed=args.seed, device=args.device,
                  epochs=args.epochs, impl=args.impl, progress=not args.no_progress)
        print(_line(res), flush=True)
        if args.json:
            _write_json(args.json, res)
        return 0
    except CLIError as exc:
        print(f"deepclust: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, RuntimeError, FileNotFoundError, ImportError, OSError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"deepclust: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
