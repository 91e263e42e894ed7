"""``deepclust fit METHOD --data NAME``: its arguments, their checks and the fit dispatch."""
from __future__ import annotations

import importlib
import os
import time

from ..data.datasets import DATASETS, GRAPH_DATASETS, IMAGE_DATASETS
from ._util import CLIError, add_run_args, check_device, load_data, progress_on, write_json

# METHOD -> (module with cli_fit, data sets it accepts or None for all)
METHODS = {
    "kmeans": (None, None),
    "dec": ("deepclust.models.dec", None),
    "swav": ("deepclust.models.swav", IMAGE_DATASETS),
    "tcl": ("deepclust.models.tcl", IMAGE_DATASETS),
    "daegc": ("deepclust.models.daegc", GRAPH_DATASETS),
    "pcl": ("deepclust.models.pcl", None),
}

# methods with a data-parallel training loop (deepclust.distributed)
PARALLEL_METHODS = ("dec", "swav", "tcl", "pcl")

# why a method has no data-parallel loop (the default: it trains in one process)
_SERIAL_REASONS = {
    "daegc": "it trains on the whole graph at once (full-graph, no mini-batches to shard)",
}


def add_parser(sub) -> None:
    f = sub.add_parser("fit", help="train a clustering method on a data set and evaluate it")
    f.add_argument("method", help=f"one of: {', '.join(METHODS)}")
    f.add_argument("--data", required=True, help=f"one of: {', '.join(DATASETS)}")
    add_run_args(f, "training epochs (method default if omitted)")
    f.add_argument("--impl", default="auto", choices=("auto", "triton", "torch"),
                   help="op path: Triton kernels, eager torch, or auto (Triton on CUDA)")
    f.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")
    f.add_argument("--no-progress", action="store_true", help="no progress bars")
    f.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="write a checkpoint to PATH (atomically) at the end of every epoch; "
                        "without --resume a run starts afresh and overwrites it")
    f.add_argument("--resume", action="store_true", help="continue from the --checkpoint file")
    f.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train data-parallel in N processes on this machine (dec, swav, tcl, pcl; "
                        "gloo on the CPU, NCCL with one GPU each on CUDA); torchrun works too")
    f.add_argument("--debug", action="store_true", help="show tracebacks")


def _fit_kmeans(data, config) -> dict:
    from ..cluster import kmeans

    x = data.x.to(config.device)
    res = kmeans(x, data.n_clusters, n_init=10, seed=config.seed, impl=config.impl)
    return {"pred": res.labels.cpu().numpy(), "inertia": float(res.inertia)}


def _check_checkpoint_args(method, checkpoint, resume):
    if resume and not checkpoint:
        raise CLIError("--resume needs --checkpoint PATH")
    if checkpoint is None:
        return
    if METHODS[method][0] is None:
        raise CLIError(f"method {method!r} has no epochs to checkpoint; drop --checkpoint/--resume")
    folder = os.path.dirname(os.path.abspath(checkpoint))
    if not os.path.isdir(folder):
        raise CLIError(f"--checkpoint {checkpoint!r}: folder {folder!r} does not exist")
    if os.path.isdir(checkpoint):
        raise CLIError(f"--checkpoint {checkpoint!r} is a folder, not a file")
    if resume and not os.path.exists(checkpoint):
        raise CLIError(f"--resume: checkpoint {checkpoint!r} does not exist")


def _validate_checkpoint(path, **header):
    from ..checkpoint import CheckpointError, read, validate

    try:
        validate(read(path), path, **header)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None


def _check_nproc(method, nproc, dev) -> None:
    import torch

    from ..distributed import env_world_size

    why = f": {_SERIAL_REASONS[method]}" if method in _SERIAL_REASONS else ""
    if nproc is None:
        if env_world_size() > 1 and method not in PARALLEL_METHODS:
            raise CLIError(f"method {method!r} trains in one process{why}; a data-parallel fit "
                           f"(torchrun, --nproc) supports {', '.join(PARALLEL_METHODS)}")
        return
    if nproc < 1:
        raise CLIError(f"--nproc must be >= 1, got {nproc}")
    if env_world_size() > 1:
        raise CLIError("--nproc starts its own processes; under torchrun leave it out")
    if dev.type == "cuda":
        have, what = torch.cuda.device_count(), "CUDA devices"
    else:
        have, what = os.cpu_count() or 1, "CPU cores"
    if nproc > have:
        raise CLIError(f"--nproc {nproc} is more than the {have} {what} of this machine")
    if nproc > 1 and method not in PARALLEL_METHODS:
        raise CLIError(f"method {method!r} trains in one process{why}; --nproc supports "
                       f"{', '.join(PARALLEL_METHODS)}")


def fit(method: str, data_name: str, *, root=None, seed=0, device="cpu", epochs=None,
        impl="auto", progress=True, checkpoint=None, resume=False, nproc=None) -> dict:
    """Train ``method`` on ``data_name`` and evaluate it; the result dict of ``deepclust fit``.

    ``checkpoint``/``resume``: see :mod:`deepclust.checkpoint`. ``nproc > 1`` runs the fit in
    that many processes (:func:`deepclust.distributed.launch`) and returns rank 0's result;
    under torchrun's environment (``WORLD_SIZE > 1``) this process joins the group. The
    result records ``world_size``.
    """
    import numpy as np
    import torch

    from ..metrics import evaluate
    from ..models.base import FitConfig

    method = method.lower()
    if method not in METHODS:
        raise CLIError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if epochs is not None and epochs < 1:
        raise CLIError(f"--epochs must be >= 1, got {epochs}")
    dev = check_device(device)
    module, accepted = METHODS[method]
    if accepted is not None and data_name.lower() not in accepted:
        raise CLIError(f"method {method!r} needs one of the data sets {', '.join(accepted)}; got {data_name!r}")
    _check_checkpoint_args(method, checkpoint, resume)
    _check_nproc(method, nproc, dev)
    data = load_data(data_name, root)
    if resume:
        _validate_checkpoint(checkpoint, method=method, data=data.name, seed=seed, epochs=epochs,
                             impl=impl)
    if nproc is not None and nproc > 1:
        from ..distributed import launch

        return launch(nproc, fit, dict(method=method, data_name=data_name, root=root, seed=seed,
                                       device=device, epochs=epochs, impl=impl, progress=progress,
                                       checkpoint=checkpoint, resume=resume), error=CLIError)
    from .. import distributed

    own_group = distributed.env_world_size() > 1 and not torch.distributed.is_initialized()
    if own_group:  # started by torchrun: join its group
        dev = torch.device(distributed.init_from_env(str(dev)))
    world, rank = distributed.world_size(), distributed.rank()
    config = FitConfig(seed=seed, device=str(dev), epochs=epochs, impl=impl,
                       progress=progress and rank == 0, checkpoint=checkpoint, resume=resume)
    torch.manual_seed(seed)
    np.random.seed(seed)
    t0 = time.perf_counter()
    try:
        if module is None:
            out = _fit_kmeans(data, config)
        else:
            out = importlib.import_module(module).cli_fit(data, config)
    finally:
        if own_group:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
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
               seed=seed, impl=impl, n=int(data.x.shape[0]), n_clusters=data.n_clusters,
               world_size=world, epochs=epochs, threads=torch.get_num_threads(),
               torch=torch.__version__)
    if extra:
        res["extra"] = extra
    return res


def line(res: dict) -> str:
    """The one line a fit prints: method, data set, ACC/NMI/ARI/F1 and seconds."""
    return (f"{res['method']} on {res['data']}: ACC {res['acc']:.4f}  NMI {res['nmi']:.4f}  "
            f"ARI {res['ari']:.4f}  F1 {res['f1']:.4f}  seconds {res['seconds']:.1f}")


def run(args) -> int:
    res = fit(args.method, args.data, root=args.root, seed=args.seed, device=args.device,
              epochs=args.epochs, impl=args.impl, progress=progress_on(args.no_progress),
              checkpoint=args.checkpoint, resume=args.resume, nproc=args.nproc)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
        print(line(res), flush=True)
        if args.json:
            write_json(args.json, res)
    return 0
