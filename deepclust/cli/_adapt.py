"""``deepclust adapt tsd --source NAME --target NAME``: test-time adaptation across a domain
shift (train on the labelled source, adapt on the unlabelled target stream)."""
from __future__ import annotations

import time

from ..data.datasets import IMAGE_DATASETS
from ._util import CLIError, add_run_args, check_device, json_target, load_data, write_json

ADAPT_METHODS = ("tsd",)


def add_parser(sub) -> None:
    a = sub.add_parser("adapt", help="train on a labelled source image set, adapt at test time "
                                     "on an unlabelled target one")
    a.add_argument("method", help=f"one of: {', '.join(ADAPT_METHODS)}")
    a.add_argument("--source", required=True, help=f"labelled image set, one of: {', '.join(IMAGE_DATASETS)}")
    a.add_argument("--target", required=True, help=f"unlabelled image set, one of: {', '.join(IMAGE_DATASETS)}")
    add_run_args(a, "source training epochs (default 8)")
    a.add_argument("--batch-size", type=int, default=64, help="target images per adaptation step")
    a.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the adaptation")
    a.add_argument("--update", default="affine", choices=("affine", "all"),
                   help="affine: batch norm on test-batch statistics, only its scales/shifts "
                        "trained (default); all: every parameter, batch norm on source statistics")
    a.add_argument("--filter-k", type=int, default=100, help="supports kept per class (-1: all)")
    a.add_argument("--lam", type=float, default=0.0, help="weight of the top-k neighbour loss")
    a.add_argument("--impl", default="auto", choices=("auto", "triton", "torch"))
    a.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    a.add_argument("--no-progress", action="store_true", help="(no progress bars are drawn)")
    a.add_argument("--debug", action="store_true", help="show tracebacks")


def adapt(method: str, source: str, target: str, *, root=None, seed=0, device="cpu", epochs=None,
          batch_size=64, lr=1e-3, filter_k=100, lam=0.0, update="affine", impl="auto") -> dict:
    """Run ``deepclust adapt``; the result dict (accuracies, seconds, the settings)."""
    import torch

    from ..models.base import FitConfig

    method = method.lower()
    if method not in ADAPT_METHODS:
        raise CLIError(f"unknown method {method!r}; choose from {', '.join(ADAPT_METHODS)}")
    for arg, name in (("--source", source), ("--target", target)):
        if name.lower() not in IMAGE_DATASETS:
            raise CLIError(f"{arg} must be an image set, one of {', '.join(IMAGE_DATASETS)}; got {name!r}")
    if source.lower() == target.lower():
        raise CLIError(f"--source and --target are the same data set ({source}); a shift needs two")
    if epochs is not None and epochs < 1:
        raise CLIError(f"--epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {batch_size}")
    if not lr > 0:
        raise CLIError(f"--lr must be > 0, got {lr}")
    if filter_k == 0 or filter_k < -1:
        raise CLIError(f"--filter-k must be >= 1 or -1 (keep all), got {filter_k}")
    if update not in ("affine", "all"):
        raise CLIError(f"--update must be affine or all, got {update!r}")
    if not lam >= 0:
        raise CLIError(f"--lam must be >= 0, got {lam}")
    dev = check_device(device)
    src, tgt = load_data(source, root), load_data(target, root)
    from ..models.tsd import cli_adapt

    config = FitConfig(seed=seed, device=str(dev), epochs=epochs, impl=impl, progress=False)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    res = cli_adapt(src, tgt, config, batch_size=batch_size, lr=lr, filter_K=filter_k, lam=lam,
                    update=update)
    res.update(seconds=round(time.perf_counter() - t0, 3), device=str(dev), method=method,
               source=src.name, target=tgt.name, seed=seed, impl=impl, n_source=int(src.x.shape[0]),
               n_target=int(tgt.x.shape[0]), epochs=epochs, batch_size=batch_size, lr=lr,
               filter_k=filter_k, lam=lam, update=update, threads=torch.get_num_threads(), torch=torch.__version__)
    return res


def line(res: dict) -> str:
    bn = "" if res.get("acc_bn_stats") is None else f"  batch-statistics ACC {res['acc_bn_stats']:.4f}"
    return (f"{res['method']} {res['source']} -> {res['target']}: source-only ACC "
            f"{res['acc_source_only']:.4f}{bn}  adapted ACC {res['acc']:.4f}  seconds {res['seconds']:.1f}")


def run(args) -> int:
    json_target(args.json)
    res = adapt(args.method, args.source, args.target, root=args.root, seed=args.seed,
                device=args.device, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                filter_k=args.filter_k, lam=args.lam, update=args.update, impl=args.impl)
    print(line(res), flush=True)
    if args.json:
        write_json(args.json, res)
    return 0
