"""``deepclust check``: every public op against its eager reference on this device.

Each op of :mod:`deepclust.ops` runs at a few small odd sizes, in every dtype the device
supports, forward and backward, on each requested path (``"triton"``: the fused kernels, which
for ``negative_sampling``/``recon_loss`` are the C++/CUDA extension, shown as ``"cpp"``;
``"torch"``: the ops' eager path). Its error is measured against a float64 ground truth (the
reference in float64), and the bound is earned the way the test suite earns it
(``tests/helpers.py``): the fused result's error may be at most ``FACTOR`` x the reference's own
error in the same dtype, plus a small margin per dtype. ``hard_assign`` counts labels that differ
from the float64 argmin, and ``negative_sampling`` counts violations of its contract (shape,
dtype, indices in range, no self-loop, no edge drawn, reproducible draws, uniform draws).

:func:`run_checks` returns one :class:`CheckRow` per (op, path, dtype): the worst output and size
(largest error / bound). The command line prints them as one table and exits 0 only when every
row passes. :func:`time_dec_loss` is the demo's timing of the fused DEC loss against the eager
reference. Private modules: ``_measure`` (errors and bounds), ``_select`` (dtypes, paths),
``_ops`` (one checker per op and their sizes).
"""
from __future__ import annotations

import functools
import importlib
import math
import statistics
import sys
import time
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

# The check command judges every op against its eager reference, so this is the one module
# outside deepclust/reference/ that imports it (production code never does); the checkers of
# _ops get it as an argument.
from .. import reference
from ._measure import FACTOR, MARGIN, CheckRow, Cmp
from ._ops import OPS
from ._select import (DTYPE_NAMES, EXTENSION_OPS, SHORT, default_dtypes, default_impls,
                      fused_path, parse_dtypes, triton_available)

__all__ = ["CheckRow", "OPS", "run_checks", "default_dtypes", "default_impls", "format_table",
           "parse_dtypes", "triton_available", "time_dec_loss", "MARGIN", "FACTOR", "DTYPE_NAMES",
           "SHORT"]


def _tasks(ops, impls, dtypes, triton_ok=True):
    for op in ops:
        in_dtypes = OPS[op][2]
        for impl in impls:
            if impl == "triton" and op not in EXTENSION_OPS and not triton_ok:
                continue  # no Triton here; the extension ops' fused path is C++/CUDA
            for dt in (in_dtypes if in_dtypes is not None else dtypes):
                if impl == "triton" and dt == torch.float64 and op not in EXTENSION_OPS:
                    continue  # the Triton kernels take fp32/fp16/bf16 (fp64: the torch path)
                yield op, impl, dt


def _run_one(op, impl, dtype, device, sizes) -> CheckRow:
    """``op`` on path ``impl`` in ``dtype`` at each of ``sizes`` against its reference: the row
    of its worst comparison (largest error / bound)."""
    checker, _, _ = OPS[op]
    dname = SHORT.get(dtype, str(dtype).replace("torch.", ""))
    path, why = fused_path(op, impl, device)
    if path is None:
        return CheckRow(op, "cpp", dname, float("nan"), float("nan"), "skip", note=why)
    # looked up at each call: the ops package imports triton (after TRITON_INTERPRET is set)
    op_fn = getattr(importlib.import_module("deepclust.ops"), op)
    fused = functools.partial(op_fn, impl=path)  # "cpp": the C++/CUDA extension's own impl
    cmps: List[Tuple[str, Cmp]] = []
    note = ""
    for i, size in enumerate(sizes):
        label = "x".join(str(s) for s in size)
        try:
            cmps += [(label, c) for c in checker(fused, reference, dtype, device, size, 1000 + i)]
        except Exception as exc:  # noqa: BLE001 - a broken op is a failed row, not a crash
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            cmps.append((label, Cmp("call", float("inf"), 0.0, f"{type(exc).__name__}: {msg}"[:200])))
    worst_label, worst = max(cmps, key=lambda lc: lc[1].ratio)
    bad = [c for _, c in cmps if not c.ok]
    status = "fail" if bad else "pass"
    if bad:
        note = next((c.note for c in bad if c.note), "")
    return CheckRow(op, path, dname, worst.err, worst.bound, status,
                    worst=f"{worst.name} @ {worst_label}", note=note, checks=len(cmps))


def _progress(total, progress, desc):
    from tqdm.auto import tqdm

    disable = (not progress) or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, disable=disable, leave=False, file=sys.stderr)


def run_checks(device="cpu", dtypes: Optional[Iterable] = None, impls: Optional[Iterable[str]] = None,
               ops: Optional[Iterable[str]] = None, quick: bool = False,
               progress: bool = False) -> List[CheckRow]:
    """Check every public op against its reference on ``device``.

    Args:
        device: ``"cpu"`` or ``"cuda[:N]"``.
        dtypes: floating dtypes (``torch.dtype`` or names such as ``"bf16"``); default
            :func:`default_dtypes`. ``negative_sampling`` always takes int64 and int32 edges.
        impls: paths among ``"triton"`` (the fused path) and ``"torch"``; default both. The
            Triton kernels are checked on CUDA, or on the CPU when Triton's interpreter is on;
            elsewhere ``"triton"`` checks only the C++ extension's ops (shown as ``"cpp"``).
        ops: op names (default all of :data:`OPS`).
        quick: the first size of each op only.
        progress: a tqdm bar on stderr (only when it is a terminal).

    Returns:
        One :class:`CheckRow` per (op, path, dtype), in order.
    """
    dev = torch.device(device)
    dts = default_dtypes(dev) if dtypes is None else (
        parse_dtypes(dtypes) if isinstance(dtypes, str) else
        [d if isinstance(d, torch.dtype) else parse_dtypes(d)[0] for d in dtypes])
    ims = default_impls(dev) if impls is None else list(impls)
    for im in ims:
        if im not in ("triton", "torch"):
            raise ValueError(f"unknown impl {im!r}; choose from triton, torch")
    names = list(OPS) if ops is None else list(ops)
    for name in names:
        if name not in OPS:
            raise ValueError(f"unknown op {name!r}; choose from {', '.join(OPS)}")
    tasks = list(_tasks(names, ims, dts, triton_available(dev)[0]))
    rows = []
    with _progress(len(tasks), progress, "check") as bar:
        for op, impl, dt in tasks:
            bar.set_postfix_str(f"{op} {impl} {SHORT.get(dt, dt)}", refresh=False)
            sizes = OPS[op][1][:1] if quick else OPS[op][1]
            rows.append(_run_one(op, impl, dt, dev, sizes))
            bar.update()
    return rows


def time_dec_loss(device: str, n: int = 1 << 16, d: int = 10, k: int = 10, rep: int = 5) -> dict:
    """Forward+backward of the DEC loss at N x d x K in fp32: the fused op (auto path) against
    the eager reference, median milliseconds of ``rep`` runs after one warm-up each (the demo's
    timing). Returns ``{"op", "N", "d", "K", "device", "fused_ms", "reference_ms", "line"}``
    (``line``: one line to print)."""
    from .. import ops

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


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if v == float("inf"):
        return "inf"
    if float(v).is_integer() and abs(v) < 1e6:
        return f"{int(v)}"
    return f"{v:.2e}"


def format_table(rows: Sequence[CheckRow]) -> str:
    """The rows as one fixed-width table: op, path, dtype, max error, bound, result."""
    head = ("op", "path", "dtype", "max error", "bound", "result")
    body = [(r.op, r.impl, r.dtype, _fmt(r.max_error), _fmt(r.bound),
             r.status.upper() + (f"  {r.note}" if r.note else "")) for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    widths[-1] = len(head[-1])

    def line(cells):
        return "  ".join(c.ljust(w) if i < 3 else (c.rjust(w) if i < 5 else c)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(b) for b in body])
