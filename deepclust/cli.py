"""The ``deepclust`` command line.

``deepclust fit METHOD --data NAME [--root DIR] [--seed N] [--device cpu|cuda] [--epochs N]
[--impl auto|triton|torch] [--json PATH] [--no-progress]`` trains METHOD on a data set and prints
ACC/NMI/ARI/F1 and the seconds it took. ``deepclust check`` runs every fused op against its
eager reference on this device (forward and backward, every dtype, bounds earned against
float64) and exits 0 only when all pass. ``deepclust bench`` runs the benchmark scripts of
``bench/`` (CSV rows, PNG plots, a markdown table); ``deepclust report`` writes the README's
results tables from ``bench/results``. ``deepclust demo`` is the main job on the embedded
default (the digits): k-means, then DEC trained with the fused ops, a timing of the fused DEC
loss against the eager reference, a quick ``check`` and a quick ``bench``. Progress bars show
only on a terminal (and never with ``--no-progress``). Errors are one line on stderr and a
non-zero exit.
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
    f.add_argument("--checkpoint", default=None, metavar="PATH",
                   help="write a checkpoint to PATH (atomically) at the end of every epoch; "
                        "without --resume a run starts afresh and overwrites it")
    f.add_argument("--resume", action="store_true", help="continue from the --checkpoint file")
    f.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train data-parallel in N processes on this machine (dec, swav, tcl, pcl; "
                        "gloo on the CPU, NCCL with one GPU each on CUDA); torchrun works too")
    f.add_argument("--debug", action="store_true", help="show tracebacks")
    d = sub.add_parser("demo", help="the main job on the embedded digits: k-means, DEC, op timing")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu")
    d.add_argument("--json", default=None, metavar="PATH")
    d.add_argument("--debug", action="store_true")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    c = sub.add_parser("check", help="every fused op against its eager reference on this device")
    c.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when present)")
    c.add_argument("--dtype", action="append", default=None, metavar="DTYPE",
                   help="fp32, fp16, bf16, fp64; repeat or comma-separate "
                        "(default: every dtype the device supports)")
    c.add_argument("--impl", action="append", default=None, metavar="PATH",
                   help="triton and/or torch (default: triton on CUDA or under Triton's "
                        "interpreter, and torch)")
    c.add_argument("--ops", action="append", default=None, metavar="OP",
                   help="only these ops (comma-separated or repeated)")
    c.add_argument("--quick", action="store_true", help="the smallest size of each op only")
    c.add_argument("--interpret", action="store_true",
                   help="CPU: run the Triton kernels in Triton's interpreter (TRITON_INTERPRET=1)")
    c.add_argument("--json", default=None, metavar="PATH", help="write the rows as JSON")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--debug", action="store_true", help="show tracebacks")
    b = sub.add_parser("bench", help="run the benchmark scripts: CSV rows, PNG plots, a markdown table")
    b.add_argument("--ops", action="append", default=None, metavar="SCRIPT",
                   help="only these scripts of bench/ (comma-separated or repeated; default all)")
    b.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    b.add_argument("--device", default=None, help="cpu or cuda[:N] (default: cuda when present)")
    b.add_argument("--out", default=None, metavar="DIR",
                   help="folder for <script>.csv, the PNGs and bench.md (default: bench/results)")
    b.add_argument("--provider", action="append", default=None,
                   help="only these providers (repeat), e.g. deepclust-torch, reference")
    b.add_argument("--max-seconds", type=float, default=None,
                   help="time budget for the whole run, shared out between the scripts")
    b.add_argument("--in-process", action="store_true",
                   help="CPU: measure in this process, not one process per case (faster; the peak "
                        "memory then includes earlier cases)")
    b.add_argument("--no-plot", action="store_true", help="no PNGs")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    b.add_argument("--debug", action="store_true", help="show tracebacks")
    r = sub.add_parser("report", help="write the README's results tables from bench/results")
    r.add_argument("--results", default=None, metavar="DIR",
                   help="folder with the benchmark CSVs and models/*.json (default: bench/results)")
    r.add_argument("--readme", default=None, metavar="PATH",
                   help="README to update (default: the one two folders above --results)")
    r.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when the README disagrees with the files")
    r.add_argument("--debug", action="store_true", help="show tracebacks")
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
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CLIError(f"--device {device!r}: this machine has {torch.cuda.device_count()} CUDA "
                       "device(s)")
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


# methods with a data-parallel training loop (deepclust.distributed)
PARALLEL_METHODS = ("dec", "swav", "tcl", "pcl")

# why a method has no data-parallel loop (the default: it trains in one process)
_SERIAL_REASONS = {
    "daegc": "it trains on the whole graph at once (full-graph, no mini-batches to shard)",
}


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
    from .checkpoint import CheckpointError, read, validate

    try:
        validate(read(path), path, **header)
    except CheckpointError as exc:
        raise CLIError(str(exc)) from None


def _check_nproc(method, nproc, dev) -> None:
    import torch

    from .distributed import env_world_size

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
    _check_checkpoint_args(method, checkpoint, resume)
    _check_nproc(method, nproc, dev)
    data = _load_data(data_name, root)
    if resume:
        _validate_checkpoint(checkpoint, method=method, data=data.name, seed=seed, epochs=epochs,
                             impl=impl)
    if nproc is not None and nproc > 1:
        from .distributed import launch

        return launch(nproc, dict(method=method, data_name=data_name, root=root, seed=seed,
                                  device=device, epochs=epochs, impl=impl, progress=progress,
                                  checkpoint=checkpoint, resume=resume))
    from . import distributed

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
               world_size=world)
    if extra:
        res["extra"] = extra
    return res


def _line(res: dict) -> str:
    return (f"{res['method']} on {res['data']}: ACC {res['acc']:.4f}  NMI {res['nmi']:.4f}  "
            f"ARI {res['ari']:.4f}  F1 {res['f1']:.4f}  seconds {res['seconds']:.1f}")


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)


def demo(seed=0, device="cpu", json_path=None, progress=True):
    """k-means and DEC on the digits, then the fused DEC loss timed against the reference."""
    results = []
    for method in ("kmeans", "dec"):
        res = fit(method, "digits", seed=seed, device=device, progress=_progress_on(not progress))
        results.append(res)
        print(_line(res), flush=True)
    timing = _demo_timing(device)
    print(timing["line"], flush=True)
    checked = _demo_check(device, progress)
    benched = _demo_bench(device, progress)
    if json_path:
        _write_json(json_path, {"fits": results, "timing": timing, "check": checked,
                                "bench": benched})
    return results, timing


# the demo's reduced check: the quick size of every op, fp32 and bf16
DEMO_CHECK_DTYPES = ("fp32", "bf16")


def _demo_check(device: str, progress: bool = True) -> dict:
    """``deepclust check --quick --dtype fp32,bf16``: every op on its first size."""
    print(f"\n$ deepclust check --quick --dtype {','.join(DEMO_CHECK_DTYPES)} --device {device}",
          flush=True)
    ok = check(device, dtypes=list(DEMO_CHECK_DTYPES), quick=True,
               progress=_progress_on(not progress))
    return {"passed": ok}


def _demo_bench(device: str, progress: bool = True) -> dict:
    """``deepclust bench --ops dec --quick`` into a temporary folder: the fused path(s) and the
    eager reference."""
    import tempfile

    out = tempfile.mkdtemp(prefix="deepclust-demo-bench-")
    providers = ["deepclust-triton", "deepclust-torch", "reference"]
    print(f"\n$ deepclust bench --ops dec --quick --in-process --device {device} --out {out} "
          + " ".join(f"--provider {p}" for p in providers), flush=True)
    try:
        res = bench(["dec"], quick=True, device=device, out=out, providers=providers,
                    in_process=True, progress=_progress_on(not progress))
    except CLIError as exc:  # e.g. the bench/ folder is not here (an installed package)
        print(f"bench: skipped ({exc})", flush=True)
        return {"skipped": str(exc)}
    with open(res["markdown"]) as f:
        print(f.read().rstrip(), flush=True)
    return res


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


# ----------------------------------------------------------------------------- check, bench, report
def _progress_on(no_progress: bool = False) -> bool:
    """Progress bars: on unless --no-progress, and only when stderr is a terminal."""
    return not no_progress and sys.stderr.isatty()


def _names(values, what: str, known) -> list:
    """``--ops a,b --ops c`` -> ``[a, b, c]``, each one of ``known`` (else one-line error)."""
    out = []
    for v in values or []:
        for name in str(v).split(","):
            name = name.strip()
            if not name:
                continue
            if name not in known:
                raise CLIError(f"unknown {what} {name!r}; choose from {', '.join(known)}")
            if name not in out:
                out.append(name)
    return out


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _device_name(dev) -> str:
    import platform

    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _json_target(path):
    if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise CLIError(f"--json {path!r}: folder {os.path.dirname(os.path.abspath(path))!r} does not exist")


def check(device=None, *, dtypes=None, impls=None, ops=None, quick=False, interpret=False,
          json_path=None, progress=True) -> bool:
    """``deepclust check``: every op against its reference on ``device``; prints the table and
    returns whether every row passed."""
    if interpret and "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    import torch

    from . import check as chk

    dev = _check_device(device or _default_device())
    try:
        dts = chk.parse_dtypes(",".join(dtypes)) if dtypes else None
    except ValueError as exc:
        raise CLIError(f"--dtype: {exc}") from None
    if dev.type == "cuda" and dts and torch.bfloat16 in dts and not torch.cuda.is_bf16_supported():
        raise CLIError(f"--dtype bf16: {_device_name(dev)} does not support bfloat16")
    op_names = _names(ops, "op", list(chk.OPS)) or None
    ok_triton, why = chk.triton_available(dev)
    if interpret and dev.type == "cpu" and not ok_triton:
        raise CLIError("--interpret: triton was imported before TRITON_INTERPRET could be set; "
                       "start with TRITON_INTERPRET=1 instead")
    ims = _names(impls, "impl", ["triton", "torch"]) or None
    if ims and "triton" in ims and not ok_triton:
        raise CLIError(f"--impl triton: {why}")
    _json_target(json_path)
    t0 = time.perf_counter()
    rows = chk.run_checks(dev, dtypes=dts, impls=ims, ops=op_names, quick=quick, progress=progress)
    seconds = time.perf_counter() - t0
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "not installed"
    print(f"deepclust check on {_device_name(dev)}: torch {torch.__version__}, triton {tv}; "
          f"bound = {chk.FACTOR:g} x the reference's error vs float64 + a margin per dtype",
          flush=True)
    if why:
        print(why, flush=True)
    print(chk.format_table(rows), flush=True)
    failed = [r for r in rows if r.status == "fail"]
    n_pass = sum(r.status == "pass" for r in rows)
    n_skip = sum(r.status == "skip" for r in rows)
    print(f"{n_pass} passed, {len(failed)} failed" + (f", {n_skip} skipped" if n_skip else "")
          + f" in {seconds:.1f} s", flush=True)
    for r in failed:
        print(f"FAIL {r.op} [{r.impl}, {r.dtype}]: {r.worst}" + (f" ({r.note})" if r.note else ""),
              flush=True)
    if json_path:
        _write_json(json_path, {
            "device": str(dev), "device_name": _device_name(dev), "torch": torch.__version__,
            "triton": tv, "interpreter": dev.type == "cpu" and ok_triton,
            "passed": not failed, "seconds": round(seconds, 3), "rows": [r.as_dict() for r in rows]})
    return not failed


def _import_bench():
    """The ``bench`` package of the repository: from the current folder, else next to this
    package (an editable install). One-line error when neither has ``bench/common.py``."""
    from pathlib import Path

    roots = [Path.cwd(), Path(__file__).resolve().parents[1]]
    for root in roots:
        if (root / "bench" / "common.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            try:
                common = importlib.import_module("bench.common")
                run_all = importlib.import_module("bench.run_all")
            except ImportError as exc:
                raise CLIError(f"cannot import the benchmark scripts in {root / 'bench'}: {exc}") from None
            return common, run_all
    raise CLIError("the benchmark scripts (bench/common.py) are not here: run deepclust bench "
                   "from the repository root")


def bench(ops=None, *, quick=False, device=None, out=None, providers=None, max_seconds=None,
          in_process=False, plot=True, progress=True) -> dict:
    """``deepclust bench``: run the benchmark scripts (``bench/<op>.py``), append their rows to
    ``OUT/<op>.csv``, draw ``OUT/*.png`` (matplotlib) and write ``OUT/bench.md``."""
    from pathlib import Path

    common, run_all = _import_bench()
    names = _names(ops, "benchmark", list(run_all.SCRIPTS)) or list(run_all.SCRIPTS)
    dev = _check_device(device or _default_device())
    if max_seconds is not None and max_seconds <= 0:
        raise CLIError(f"--max-seconds must be > 0, got {max_seconds:g}")
    out_dir = Path(out) if out else common.RESULTS
    if out_dir.exists() and not out_dir.is_dir():
        raise CLIError(f"--out {str(out_dir)!r} is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"--out {str(out_dir)!r}: cannot create the folder ({exc.strerror})") from None
    argv = ["--device", str(dev), "--out", str(out_dir)] + (["--quick"] if quick else [])
    argv += ["--in-process"] if in_process else []
    for p in providers or []:
        argv += ["--provider", p]
    from tqdm.auto import tqdm

    failed, t0 = [], time.monotonic()
    bar = tqdm(names, desc="bench", unit="script", disable=not progress, file=sys.stderr)
    for i, name in enumerate(bar):
        bar.set_postfix_str(name)
        try:
            mod = importlib.import_module(f"bench.{name}")
        except ImportError as exc:
            print(f"skip bench.{name}: {exc}", file=sys.stderr, flush=True)
            continue
        script_argv = list(argv)
        if max_seconds is not None:
            share = max(0.0, max_seconds - (time.monotonic() - t0)) / (len(names) - i)
            script_argv += ["--max-seconds", f"{share:.1f}"]
        print(f"== bench.{name}", flush=True)
        try:
            common.main(name, mod.cases, script_argv)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one broken script does not end the run
            print(f"deepclust: error: bench.{name} crashed: {type(exc).__name__}: {exc}",
                  file=sys.stderr, flush=True)
            failed.append(name)
    csvs = [out_dir / f"{n}.csv" for n in names if (out_dir / f"{n}.csv").is_file()]
    from .report import ReportError, bench_markdown

    md = out_dir / "bench.md"
    try:
        md.write_text(bench_markdown(csvs))
    except ReportError as exc:
        raise CLIError(str(exc)) from None
    pngs = []
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("plots: skipped, matplotlib is not installed (pip install matplotlib); the CSV "
                  "and markdown are written", file=sys.stderr, flush=True)
        else:
            plotter = importlib.import_module("bench.plot")
            for c in csvs:
                pngs += plotter.plot(c, out_dir)
    print(f"bench: {len(csvs)} CSV, {len(pngs)} PNG, markdown {md}", flush=True)
    return {"csv": [str(c) for c in csvs], "png": [str(p) for p in pngs], "markdown": str(md),
            "failed": failed}


def report(results=None, readme=None, *, check_only=False) -> list:
    """``deepclust report``: rewrite the README's marked results tables from the files."""
    from pathlib import Path

    from .report import ReportError, update_readme

    if results is None:
        here = Path.cwd() / "bench" / "results"
        results = here if here.is_dir() else Path(__file__).resolve().parents[1] / "bench" / "results"
    results = Path(results)
    if not results.is_dir():
        raise CLIError(f"--results {str(results)!r} is not a folder")
    readme = Path(readme) if readme else results.resolve().parent.parent / "README.md"
    if not readme.is_file():
        raise CLIError(f"--readme {str(readme)!r} is not a file")
    try:
        changed = update_readme(readme, results, check=check_only)
    except ReportError as exc:
        raise CLIError(str(exc)) from None
    if check_only:
        print(f"{readme}: " + (f"out of date ({', '.join(changed)}); run deepclust report"
                               if changed else "up to date with the files"), flush=True)
    else:
        print(f"{readme}: " + (f"updated {', '.join(changed)}" if changed
                               else "already up to date"), flush=True)
    return changed


def _run_command(args) -> int:
    if args.command == "check":
        ok = check(args.device, dtypes=args.dtype, impls=args.impl, ops=args.ops,
                   quick=args.quick, interpret=args.interpret, json_path=args.json,
                   progress=_progress_on(args.no_progress))
        return 0 if ok else 1
    if args.command == "bench":
        res = bench(args.ops, quick=args.quick, device=args.device, out=args.out,
                    providers=args.provider, max_seconds=args.max_seconds,
                    in_process=args.in_process, plot=not args.no_plot,
                    progress=_progress_on(args.no_progress))
        return 1 if res["failed"] else 0
    changed = report(args.results, args.readme, check_only=args.check)
    return 1 if (args.check and changed) else 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command in ("check", "bench", "report"):
            return _run_command(args)
        if args.command == "demo":
            _check_device(args.device)
            demo(seed=args.seed, device=args.device, json_path=args.json,
                 progress=not args.no_progress)
            return 0
        res = fit(args.method, args.data, root=args.root, seed=args.seed, device=args.device,
                  epochs=args.epochs, impl=args.impl, progress=_progress_on(args.no_progress),
                  checkpoint=args.checkpoint, resume=args.resume, nproc=args.nproc)
        if os.environ.get("RANK", "0") == "0":  # under torchrun only rank 0 reports
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
