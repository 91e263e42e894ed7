"""``deepclust bench``: its arguments, and the run of the repository's ``bench/`` scripts (CSV
rows, PNG plots, a markdown table)."""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

from ._util import CLIError, check_device, default_device, names, progress_on


def add_parser(sub) -> None:
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


def _import_bench():
    """The ``bench`` package of the repository: from the current folder, else next to this
    package (an editable install). One-line error when neither has ``bench/common.py``."""
    roots = [Path.cwd(), Path(__file__).resolve().parents[2]]
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
    common, run_all = _import_bench()
    script_names = names(ops, "benchmark", list(run_all.SCRIPTS)) or list(run_all.SCRIPTS)
    dev = check_device(device or default_device())
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
    bar = tqdm(script_names, desc="bench", unit="script", disable=not progress, file=sys.stderr)
    for i, name in enumerate(bar):
        bar.set_postfix_str(name)
        try:
            mod = importlib.import_module(f"bench.{name}")
        except ImportError as exc:
            print(f"skip bench.{name}: {exc}", file=sys.stderr, flush=True)
            continue
        script_argv = list(argv)
        if max_seconds is not None:
            share = max(0.0, max_seconds - (time.monotonic() - t0)) / (len(script_names) - i)
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
    csvs = [out_dir / f"{n}.csv" for n in script_names if (out_dir / f"{n}.csv").is_file()]
    from ..report import ReportError, bench_markdown

    md = out_dir / "bench.md"
    try:
        md.write_text(bench_markdown(csvs))
    except ReportError as exc:
        raise CLIError(str(exc)) from None
    pngs = []
    if plot:
        try:
            import matplotlib
        except ImportError:
            matplotlib = None
        if matplotlib is None:
            print("plots: skipped, matplotlib is not installed (pip install matplotlib); the CSV "
                  "and markdown are written", file=sys.stderr, flush=True)
        else:
            plotter = importlib.import_module("bench.plot")
            for c in csvs:
                pngs += plotter.plot(c, out_dir)
    print(f"bench: {len(csvs)} CSV, {len(pngs)} PNG, markdown {md}", flush=True)
    return {"csv": [str(c) for c in csvs], "png": [str(p) for p in pngs], "markdown": str(md),
            "failed": failed}


def run(args) -> int:
    res = bench(args.ops, quick=args.quick, device=args.device, out=args.out,
                providers=args.provider, max_seconds=args.max_seconds,
                in_process=args.in_process, plot=not args.no_plot,
                progress=progress_on(args.no_progress))
    return 1 if res["failed"] else 0
