"""The one helper every benchmark script uses.

A script yields :class:`Case` objects (op, provider, mode, sizes, dtype, ``make``) and calls
:func:`main`. For each case ``make(device)`` builds the inputs and returns a zero-argument
callable; the helper times it and measures its peak memory:

- CUDA: ``triton.testing.do_bench`` (median, 20th and 80th percentiles, ms) and
  ``torch.cuda.max_memory_allocated`` above what the inputs already held;
- CPU: a synchronised wall clock over repeated runs (median and percentiles), and peak memory as
  the peak RSS of a fresh subprocess that runs only that case, above its RSS after building the
  inputs.

Every case appends one long-format row to the CSV (``bench/results/<name>.csv`` by default). An
out-of-memory error is a row with ``status=OOM``, not a crash; a provider whose package is
missing (``make`` raises ImportError) is skipped with a message.
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
COLUMNS = [
    "timestamp", "op", "provider", "mode", "sizes", "dtype", "median_ms", "p20_ms", "p80_ms",
    "peak_mb", "bytes_moved", "gbps", "status", "device", "torch", "triton", "commit",
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
        return torch.cuda.get_device_name(torch.device(device))
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
    }


def append_rows(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        if new:
            w.writeheader()
        for r in rows:
            w.writerow(r)


def read_rows(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _run_isolated(script: str, key: str, device: str, rep: int, timeout: float,
                  quick: bool = False) -> dict:
    """Run one case in a fresh interpreter so its peak RSS is its own. The child builds the
    same case list (``quick`` included) and measures the case with this key."""
    cmd = [sys.executable, "-m", f"bench.{script}", "--one", key, "--device", device,
           "--rep", str(rep)] + (["--quick"] if quick else [])
    root = Path(__file__).resolve().parents[1]
    # A fixed mmap threshold turns off glibc's dynamic threshold, so large buffers are mapped
    # and unmapped per allocation and the RSS after the warm-up call is the inputs' alone.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=root, env=env)
    except subprocess.TimeoutExpired:
        return {"status": "timeout"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    err = (p.stderr or "").strip().splitlines()
    if p.returncode in (-9, 137) or any(_is_oom(Exception(e)) for e in err[-3:]):
        return {"status": "OOM"}
    return {"status": "error: " + (err[-1][:200] if err else f"exit {p.returncode}")}


def main(name: str, cases: Callable[[argparse.Namespace], Iterable[Case]], argv=None) -> list:
    """Command line of a benchmark script: run its cases and append rows to the CSV."""
    ap = argparse.ArgumentParser(description=f"benchmark: {name}")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help=f"CSV path (default bench/results/{name}.csv)")
    ap.add_argument("--provider", action="append", default=None, help="only these providers")
    ap.add_argument("--rep", type=int, default=5, help="timed repetitions on the CPU")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per CPU case")
    ap.add_argument("--in-process", action="store_true",
                    help="CPU: measure in this process (peak RSS then includes earlier cases)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    all_cases = list(cases(args))
    if args.one is not None:  # child process of _run_isolated
        case = next((c for c in all_cases if c.key == args.one), None)
        if case is None:
            print("RESULT " + json.dumps({"status": f"error: no case {args.one}"}), flush=True)
            return []
        try:
            res = measure(case, args.device, rep=args.rep)
        except Exception as exc:  # noqa: BLE001 - reported as a row
            res = {"status": "OOM" if _is_oom(exc) else f"error: {type(exc).__name__}: {exc}"[:200]}
        print("RESULT " + json.dumps(res), flush=True)
        return [res]

    out = Path(args.out) if args.out else RESULTS / f"{name}.csv"
    rows = []
    for case in all_cases:
        if args.provider and case.provider not in args.provider:
            continue
        if case.provider.endswith("triton") and not args.device.startswith("cuda"):
            from deepclust._utils import triton_interpret

            if not triton_interpret():
                print(f"skip {case.op}/{case.provider}: Triton needs CUDA", file=sys.stderr)
                continue
        try:
            case.make  # noqa: B018 - providers check their imports inside make()
            if args.device.startswith("cuda") or args.in_process:
                try:
                    res = measure(case, args.device, rep=args.rep)
                except ImportError as exc:
                    print(f"skip {case.op}/{case.provider}: {exc}", file=sys.stderr)
                    continue
                except Exception as exc:  # noqa: BLE001
                    if not _is_oom(exc):
                        raise
                    res = {"status": "OOM"}
                    if args.device.startswith("cuda"):
                        torch.cuda.empty_cache()
            else:
                res = _run_isolated(name, case.key, args.device, args.rep, args.timeout,
                                    quick=args.quick)
                if res["status"].startswith("error: ImportError") or res["status"].startswith(
                    "error: ModuleNotFoundError"
                ):
                    print(f"skip {case.op}/{case.provider}: {res['status']}", file=sys.stderr)
                    continue
        except KeyboardInterrupt:
            raise
        row = _row(case, args.device, res)
        rows.append(row)
        append_rows(out, [row])
        print(f"{case.op:>24} {case.provider:>22} {case.mode:>4} {row['sizes']:>40} {case.dtype:>8} "
              f"{row['median_ms']:>10} ms {row['peak_mb']:>10} MB {row['status']}", flush=True)
    return rows
