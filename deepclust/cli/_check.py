"""``deepclust check``: its arguments, their checks, and the printed table of
:mod:`deepclust.check`."""
from __future__ import annotations

import os
import sys
import time

from ._util import (CLIError, check_device, default_device, device_name, json_target, names,
                    progress_on, write_json)


def add_parser(sub) -> None:
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


def check(device=None, *, dtypes=None, impls=None, ops=None, quick=False, interpret=False,
          json_path=None, progress=True) -> bool:
    """``deepclust check``: every op against its reference on ``device``; prints the table and
    returns whether every row passed."""
    if interpret and "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    import torch

    from .. import check as chk

    dev = check_device(device or default_device())
    try:
        dts = chk.parse_dtypes(",".join(dtypes)) if dtypes else None
    except ValueError as exc:
        raise CLIError(f"--dtype: {exc}") from None
    if dev.type == "cuda" and dts and torch.bfloat16 in dts and not torch.cuda.is_bf16_supported():
        raise CLIError(f"--dtype bf16: {device_name(dev)} does not support bfloat16")
    op_names = names(ops, "op", list(chk.OPS)) or None
    ok_triton, why = chk.triton_available(dev)
    if interpret and dev.type == "cpu" and not ok_triton:
        raise CLIError("--interpret: triton was imported before TRITON_INTERPRET could be set; "
                       "start with TRITON_INTERPRET=1 instead")
    ims = names(impls, "impl", ["triton", "torch"]) or None
    if ims and "triton" in ims and not ok_triton:
        raise CLIError(f"--impl triton: {why}")
    json_target(json_path)
    t0 = time.perf_counter()
    rows = chk.run_checks(dev, dtypes=dts, impls=ims, ops=op_names, quick=quick, progress=progress)
    seconds = time.perf_counter() - t0
    try:
        import triton

        tv = triton.__version__
    except ImportError:
        tv = "not installed"
    print(f"deepclust check on {device_name(dev)}: torch {torch.__version__}, triton {tv}; "
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
        write_json(json_path, {
            "device": str(dev), "device_name": device_name(dev), "torch": torch.__version__,
            "triton": tv, "interpreter": dev.type == "cpu" and ok_triton,
            "passed": not failed, "seconds": round(seconds, 3), "rows": [r.as_dict() for r in rows]})
    return not failed


def run(args) -> int:
    ok = check(args.device, dtypes=args.dtype, impls=args.impl, ops=args.ops,
               quick=args.quick, interpret=args.interpret, json_path=args.json,
               progress=progress_on(args.no_progress))
    return 0 if ok else 1
