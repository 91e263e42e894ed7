"""The one helper every benchmark script uses.

A script yields :class:`Case` objects (op, provider, mode, sizes, dtype, ``make``) and calls
:func:`main`. For each case ``make(device)`` builds the inputs and returns a zero-argument
callable; the helper times it and measures its peak memory:

- CUDA: ``triton.testing.do_bench`` (median, 20th and 80th percentiles, ms) and
  ``torch.cuda.max_memory_allocated`` above what the inputs already held;
- CPU: a synchronised wall clock over repeated runs (median and percentiles), and peak memory as
  the peak RSS of a fresh subprocess that runs only that case, above its RSS after building the
  inputs.

Every case appends one long-format row to the CSV (``bench/results/<name>.csv`` by default;
``--out`` names another file, or a folder that then gets ``<name>.csv``). An out-of-memory
error is a row with ``status=OOM``; any other error is a row with ``status=error`` and the
message in the ``error`` column, printed to stderr, and the run goes on with the next case. A
provider whose package is missing (``make`` raises ImportError) is skipped with a message.
``--max-seconds`` (or ``--deadline``, a Unix time) stops starting new cases once that many
seconds are spent (the cases are ordered smallest first, so the cut falls on the largest sizes;
``--min-cases`` measures that many rows whatever the budget says); ``--headline`` asks a script
for its one or two representative sizes only.

CSV files written before the ``error`` column existed still read (:func:`read_rows` fills the
missing column with ``""``) and are upgraded in place when a row is appended to them.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

RESULTS = Path(__file__).resolve().parent / "results"
ROWS_WRITTEN = 0  # rows this process has appended (bench.run_all reports it per script)
COLUMNS = [
    "timestamp", "op", "provider", "mode", "sizes", "dtype", "median_ms", "p20_ms", "p80_ms",
    "peak_mb", "bytes_moved", "gbps", "status", "device", "torch", "triton", "commit", "error",
]


@dataclass
class Case:
    """One benchmark measurement: ``make(device)`` returns the callable to time."""

    op: str
    provider: str
    mode: str  # "fwd", "bwd" or "full"
    sizes: dict
    dtype: str
    make: Callable[[str], Callable[[], object]]
    bytes_moved: Optional[int] = None
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.op}|{self.provider}|{self.mode}|{json.dumps(self.sizes, sort_keys=True)}|{self.dtype}"


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        try:
            return torch.cuda.get_device_name(torch.device(device))
        except Exception:  # noqa: BLE001 - no CUDA here: the row still gets written
            return device
    proc = platform.processor() or platform.machine()
    return f"cpu ({proc}, {os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def _versions():
    try:
        import triton

        tv = triton.__version__
    except Exception:  # pragma: no cover - triton absent
        tv = ""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except OSError:  # pragma: no cover
        commit = ""
    return torch.__version__, tv, commit


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    msg = str(exc).lower()
    return "out of memory" in msg or "cannot allocate memory" in msg or "bad_alloc" in msg


def _rss_mb() -> float:
    """Current resident set size of this process (MB), from /proc when available."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - non-Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss_mb() -> float:
    """Peak RSS (MB): VmHWM, which :func:`_reset_peak_rss` can lower, else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - non-Linux
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:  # pragma: no cover - not permitted / non-Linux
        return False


def time_cpu(fn: Callable, *, warmup: int = 1, rep: int = 5, max_seconds: float = 20.0):
    """Median, 20th and 80th percentile of wall-clock ms over repeated runs on the CPU."""
    for _ in range(warmup):
        fn()
    times = []
    t_end = time.perf_counter() + max_seconds
    while len(times) < rep:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() > t_end and len(times) >= 1:
            break
    qs = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else [times[0]] * 9
    return statistics.median(times), qs[1], qs[7]


def time_cuda(fn: Callable):
    """Median, 20th and 80th percentile ms by ``triton.testing.do_bench``."""
    from triton.testing import do_bench

    med, p20, p80 = do_bench(fn, quantiles=[0.5, 0.2, 0.8])
    return med, p20, p80


def measure(case: Case, device: str, *, rep: int = 5) -> dict:
    """Time one case in this process and measure its peak memory; returns a result dict."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        fn = case.make(device)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        med, p20, p80 = time_cuda(fn)
    else:
        fn = case.make(device)
        fn()  # warm-up: lazy imports, dispatcher and allocator set-up are not the op's memory
        base = _rss_mb()
        _reset_peak_rss()
        fn()
        peak = max(0.0, _peak_rss_mb() - base)
        med, p20, p80 = time_cpu(fn, warmup=0, rep=rep)
    return {"median_ms": med, "p20_ms": p20, "p80_ms": p80, "peak_mb": peak, "status": "ok"}


def _one_line(msg: str, limit: int = 500) -> str:
    return " ".join(str(msg).split())[:limit]


_CUDA_BROKEN = ("illegal memory access", "device-side assert", "unspecified launch failure",
                "misaligned address", "illegal instruction", "cuda error: an illegal")


def _cuda_broken(msg: str) -> bool:
    """Whether an error message says the CUDA context is lost (every later call would fail)."""
    m = msg.lower()
    return any(p in m for p in _CUDA_BROKEN)


def _error_result(exc: BaseException) -> dict:
    """The result of a case that raised: OOM, a skip (a peer's package is missing) or an error."""
    if _is_oom(exc):
        return {"status": "OOM"}
    msg = _one_line(f"{type(exc).__name__}: {exc}")
    # A missing peer package is a skip; a missing piece of deepclust itself is an error.
    missing = getattr(exc, "name", None) or ""
    if isinstance(exc, ImportError) and not (missing == "deepclust" or missing.startswith("deepclust.")):
        return {"status": "skip", "error": msg}
    return {"status": "error", "error": msg}


def _row(case: Case, device: str, res: dict) -> dict:
    tv, trv, commit = _versions()
    gbps = ""
    if case.bytes_moved and res.get("median_ms"):
        gbps = f"{case.bytes_moved / (res['median_ms'] * 1e-3) / 1e9:.4g}"
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else ("" if v is None else v)  # noqa: E731
    return {
        "timestamp": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "op": case.op, "provider": case.provider, "mode": case.mode,
        "sizes": json.dumps(case.sizes, sort_keys=True), "dtype": case.dtype,
        "median_ms": fmt(res.get("median_ms")), "p20_ms": fmt(res.get("p20_ms")),
        "p80_ms": fmt(res.get("p80_ms")), "peak_mb": fmt(res.get("peak_mb")),
        "bytes_moved": case.bytes_moved or "", "gbps": gbps, "status": res["status"],
        "device": device_name(device), "torch": tv, "triton": trv, "commit": commit,
        "error": res.get("error", ""),
    }


def _header(path: Path) -> list:
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def append_rows(path: Path, rows: Iterable[dict]) -> None:
    """Append rows to a CSV, writing the header to a new file. A file written with an older
    column list (a prefix of :data:`COLUMNS`, e.g. without ``error``) is first rewritten with
    the current header, its rows keeping their values and getting ``""`` in the new columns."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        header = _header(path)
        if header != COLUMNS:
            old = read_rows(path)
            tmp = path.with_name(path.name + ".tmp")
            with open(tmp, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
                w.writeheader()
                w.writerows(old)
            os.replace(tmp, path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if new:
            w.writeheader()
        for r in rows:
            w.writerow(r)


def read_rows(path: Path) -> list:
    """Rows of a benchmark CSV as dicts with every column of :data:`COLUMNS` (``""`` where an
    older file lacks one)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for c in COLUMNS:
            if r.get(c) is None:
                r[c] = ""
    return rows


def _run_isolated(script: str, key: str, device: str, rep: int, timeout: float,
                  quick: bool = False, headline: bool = False) -> dict:
    """Run one case in a fresh interpreter so its peak RSS is its own. The child builds the
    same case list (``quick`` and ``headline`` included) and measures the case with this key."""
    cmd = [sys.executable, "-m", f"bench.{script}", "--one", key, "--device", device,
           "--rep", str(rep)] + (["--quick"] if quick else []) + (["--headline"] if headline else [])
    root = Path(__file__).resolve().parents[1]
    # A fixed mmap threshold turns off glibc's dynamic threshold, so large buffers are mapped
    # and unmapped per allocation and the RSS after the warm-up call is the inputs' alone.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "error": f"no result after {timeout:g} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    err = (p.stderr or "").strip().splitlines()
    if p.returncode in (-9, 137) or any(_is_oom(Exception(e)) for e in err[-3:]):
        return {"status": "OOM"}
    return {"status": "error",
            "error": _one_line(err[-1] if err else f"child exited with status {p.returncode}")}


def _output_path(out: Optional[str], name: str) -> Path:
    """``--out``: a ``.csv`` path is the file itself, anything else a folder for ``<name>.csv``."""
    if not out:
        return RESULTS / f"{name}.csv"
    p = Path(out)
    return p if p.suffix.lower() == ".csv" else p / f"{name}.csv"


def parser(name: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=f"benchmark: {name}")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--headline", action="store_true",
                    help="only the script's one or two representative large sizes")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None,
                    help=f"CSV file (*.csv) or folder for {name}.csv (default bench/results)")
    ap.add_argument("--provider", action="append", default=None, help="only these providers")
    ap.add_argument("--rep", type=int, default=5, help="timed repetitions on the CPU")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per CPU case")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="start no new case after this many seconds (the largest sizes come last)")
    ap.add_argument("--deadline", type=float, default=None,
                    help="start no new case after this Unix time (a budget that counts the "
                         "interpreter's start-up too)")
    ap.add_argument("--min-cases", type=int, default=0,
                    help="measure at least this many cases even when the budget is spent")
    ap.add_argument("--in-process", action="store_true",
                    help="CPU: measure in this process (peak RSS then includes earlier cases)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    return ap


def main(name: str, cases: Callable[[argparse.Namespace], Iterable[Case]], argv=None) -> list:
    """Command line of a benchmark script: run its cases and append rows to the CSV."""
    t_start = time.monotonic()
    args = parser(name).parse_args(argv)

    all_cases = list(cases(args))
    if args.one is not None:  # child process of _run_isolated
        case = next((c for c in all_cases if c.key == args.one), None)
        if case is None:
            print("RESULT " + json.dumps({"status": "error", "error": f"no case {args.one}"}),
                  flush=True)
            return []
        try:
            res = measure(case, args.device, rep=args.rep)
        except Exception as exc:  # noqa: BLE001 - reported as a row
            res = _error_result(exc)
        print("RESULT " + json.dumps(res), flush=True)
        return [res]

    out = _output_path(args.out, name)
    cuda = args.device.startswith("cuda")
    selected = [c for c in all_cases if not args.provider or c.provider in args.provider]
    rows = []
    for i, case in enumerate(selected):
        over = args.max_seconds is not None and time.monotonic() - t_start >= args.max_seconds
        late = args.deadline is not None and time.time() >= args.deadline
        if (over or late) and len(rows) >= args.min_cases:
            left = selected[i:]
            budget = f"{args.max_seconds:g} s" if over else "--deadline"
            print(f"budget of {budget} spent: {len(left)} case(s) of bench.{name} "
                  f"not started, from {left[0].op} {json.dumps(left[0].sizes, sort_keys=True)} "
                  f"{left[0].dtype} {left[0].provider}", file=sys.stderr, flush=True)
            break
        if case.provider.endswith("triton") and not cuda:
            from deepclust.ops._plumbing import triton_interpret

            if not triton_interpret():
                print(f"skip {case.op}/{case.provider}: Triton needs CUDA", file=sys.stderr)
                continue
        if cuda or args.in_process:
            try:
                res = measure(case, args.device, rep=args.rep)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is a row, the run goes on
                res = _error_result(exc)
                if res["status"] == "error":
                    import traceback

                    traceback.print_exc(file=sys.stderr)
                if cuda:
                    try:
                        torch.cuda.synchronize()
                        torch.cuda.empty_cache()
                    except Exception:  # noqa: BLE001 - a sticky CUDA error shows on the next case
                        pass
        else:
            res = _run_isolated(name, case.key, args.device, args.rep, args.timeout,
                                quick=args.quick, headline=args.headline)
        if res["status"] == "skip":
            print(f"skip {case.op}/{case.provider}: {res.get('error', '')}", file=sys.stderr)
            continue
        row = _row(case, args.device, res)
        rows.append(row)
        append_rows(out, [row])
        global ROWS_WRITTEN
        ROWS_WRITTEN += 1
        if row["error"]:
            print(f"{row['status']} {case.op}/{case.provider} {row['sizes']} {case.dtype}: "
                  f"{row['error']}", file=sys.stderr, flush=True)
        print(f"{case.op:>24} {case.provider:>22} {case.mode:>4} {row['sizes']:>40} {case.dtype:>8} "
              f"{row['median_ms']:>10} ms {row['peak_mb']:>10} MB {row['status']}", flush=True)
        if cuda and row["status"] == "error" and _cuda_broken(row["error"]):
            # every later case in this process would fail too: end it (a fresh one can go on)
            print(f"CUDA context lost after {case.op}/{case.provider}; bench.{name} stops",
                  file=sys.stderr, flush=True)
            raise SystemExit(3)
    return rows


def headline(args) -> bool:
    """Whether the script was asked for its headline sizes only (``--headline``)."""
    return bool(getattr(args, "headline", False)) and not getattr(args, "quick", False)


def float_dtypes(args) -> tuple:
    """The float dtypes of a script's cases: fp32 and bf16 on CUDA, fp32 on the CPU and in
    ``--quick`` runs."""
    if getattr(args, "quick", False) or not str(getattr(args, "device", "cpu")).startswith("cuda"):
        return (torch.float32,)
    return (torch.float32, torch.bfloat16)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).split(".")[1]
