"""The GPU compile gate: every Triton kernel at every configuration its launcher picks, compiled
ahead of time for NVIDIA targets without a GPU, plus the CUDA extension's kernels with nvcc.

    python -m bench.gpu_compile                       # sm_80 + sm_90, the installed Triton
    python -m bench.gpu_compile --triton-path DIR     # also a second Triton (pip install --target DIR)
    make gpu-compile                                  # both, Triton 3.6.0 installed apart

How the configurations are found: the launchers are run on CPU tensors at the sizes of the
benchmarks (each script's CUDA size list, provider ``deepclust-triton``) and of the tests
(:data:`TEST_WORKLOADS`: odd shapes, every dtype, forward and backward), with the launch itself
intercepted. Each launch gives the kernel, its argument types and the constexprs, warps and
stages that the launcher chose for a CUDA target (:func:`deepclust.ops._plumbing.pretend_cuda`); distinct
ones are compiled once per (arch, Triton version) with ``triton.compile(ASTSource(...),
target=GPUTarget("cuda", arch, 32))``, in parallel, through Triton's on-disk cache (a second run
takes seconds). ``cuobjdump -res-usage`` on the cubin gives registers and stack; the metadata
gives the dynamic shared memory.

The gate fails on a compile error, on shared memory above the target's per-block limit, and on
any register spill (stack > 0) in a configuration that a benchmark uses (a spill in a test-only
configuration is reported). Rows go to ``bench/results/compile.csv``: kernel, configuration,
arch, compiler, registers, stack bytes, shared bytes, warps and the occupancy these allow.
"""
from __future__ import annotations

import argparse
import csv
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ARCHS = (80, 90)
# Per-block dynamic shared memory (opt-in maximum) and per-SM shared memory, bytes.
SMEM_PER_BLOCK = {80: 166912, 90: 232448}
BENCH_SCRIPTS = ("dec", "sinkhorn", "swav_loss", "contrastive", "prototype")
COLUMNS = ["kernel", "config", "arch", "compiler", "registers", "stack_bytes", "spill_stores",
           "spill_loads", "shared_bytes", "warps", "occupancy_warps_per_sm", "used_by", "status",
           "error"]


# ----------------------------------------------------------------------------- recording
_TORCH_TO_TRITON = {
    "torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16",
    "torch.float64": "fp64", "torch.int64": "i64", "torch.int32": "i32", "torch.int16": "i16",
    "torch.int8": "i8", "torch.uint8": "u8", "torch.bool": "i1",
}


def _arg_spec(value, specialize: bool):
    """(signature type, constexpr value or None, divisible-by-16) of one kernel argument, as
    Triton's JIT specialises it on a CUDA device (pointers of fresh tensors are 16-aligned)."""
    import torch

    if isinstance(value, torch.Tensor):
        return "*" + _TORCH_TO_TRITON[str(value.dtype)], None, value.data_ptr() % 16 == 0
    if value is None:
        return "constexpr", None, False
    if isinstance(value, bool):
        return "i1", None, False
    if isinstance(value, int):
        if specialize and value == 1:
            return "constexpr", 1, False
        kind = "i32" if -(2 ** 31) <= value < 2 ** 31 else "i64"
        return kind, None, specialize and value % 16 == 0
    if isinstance(value, float):
        return "fp32", None, False
    raise TypeError(f"unsupported kernel argument {type(value).__name__}")


def _record_launch(store, fn, args, kwargs, origin):
    params = fn.params
    bound = {}
    for p, a in zip(params, args):
        bound[p.name] = a
    options = {}
    for k, v in kwargs.items():
        if k in {p.name for p in params}:
            bound[k] = v
        else:
            options[k] = v
    signature, constexprs, divisible = {}, {}, []
    for i, p in enumerate(params):
        value = bound.get(p.name, p.default)
        if p.is_constexpr:
            signature[p.name] = "constexpr"
            constexprs[p.name] = value
            continue
        kind, const, div = _arg_spec(value, not p.do_not_specialize)
        signature[p.name] = kind
        if kind == "constexpr":
            constexprs[p.name] = const
        if div:
            divisible.append(i)
    opts = {k: options[k] for k in ("num_warps", "num_stages", "enable_fp_fusion") if k in options}
    opts.setdefault("num_warps", 4)
    opts.setdefault("num_stages", 3)
    entry = {
        "module": fn.fn.__module__, "name": fn.__name__, "signature": signature,
        "constexprs": constexprs, "options": opts,
    }
    # One compile per launcher choice (tiles, warps, stages, dtypes) and test/benchmark origin:
    # the alignment the JIT specialises on varies with the sizes. The odd test shapes' first
    # launch stands for the other test launches; a benchmark's own alignment is compiled too.
    key = json.dumps(entry, sort_keys=True, default=str) + "|" + origin[0]
    if origin[0] == "bench":
        key += json.dumps(divisible)
    rec = store.setdefault(key, dict(entry, divisible=divisible, used_by=set(), cases=set()))
    rec["used_by"].add(origin[0])
    if len(rec["cases"]) < 3:
        rec["cases"].add(origin[1])


def _constant_fill(value):
    import torch

    def fill(*size, generator=None, **kw):
        if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
            size = tuple(size[0])
        return torch.full(size, value, **kw)

    return fill


class _Recorder:
    """Intercepts ``JITFunction.run``: the launch is recorded, the kernel is not run."""

    def __init__(self):
        self.store = {}
        self.origin = ("test", "")

    def __enter__(self):
        from triton.runtime.jit import JITFunction

        from deepclust.ops import _plumbing

        self._jit, self._orig_run = JITFunction, JITFunction.run
        rec = self

        def run(fn, *args, grid, warmup, **kwargs):
            _record_launch(rec.store, fn, args, kwargs, rec.origin)
            return None

        JITFunction.run = run
        # Values do not matter to a recorded launch: constant fills instead of random draws
        # (the benchmark sizes reach 10^8 elements).
        import torch

        self._rand = {n: getattr(torch, n) for n in ("randn", "rand")}
        for n in self._rand:
            setattr(torch, n, _constant_fill(0.25))
        self._pretend = _plumbing.pretend_cuda()
        self._pretend.__enter__()
        return self

    def __exit__(self, *exc):
        import torch

        self._jit.run = self._orig_run
        for n, f in self._rand.items():
            setattr(torch, n, f)
        self._pretend.__exit__(*exc)


def _bench_workloads():
    """(name, thunk) of every benchmark case of the fused Triton provider, CUDA size lists."""
    for script in BENCH_SCRIPTS:
        mod = importlib.import_module(f"bench.{script}")
        args = argparse.Namespace(device="cuda", quick=False, headline=False)
        for case in mod.cases(args):
            if case.provider != "deepclust-triton":
                continue
            name = f"{case.op} {case.mode} {json.dumps(case.sizes, sort_keys=True)} {case.dtype}"
            yield name, (lambda case=case: case.make("cpu")())


def _test_workloads():
    """(name, thunk) of the shapes the op tests launch: odd sizes, every dtype, fwd + bwd."""
    import torch

    from deepclust import ops

    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def leaf(*shape, dtype):
        return torch.randn(*shape, dtype=dtype).requires_grad_(True)

    def dec_case(n, d, k, dtype, with_target):
        def run():
            z, mu = leaf(n, d, dtype=dtype), leaf(k, d, dtype=dtype)
            tgt = torch.rand(n, k, dtype=dtype) if with_target else None
            ops.dec_loss(z, mu, target=tgt, impl="triton").backward()
            ops.soft_assign(z, mu, impl="triton").sum().backward()
            ops.target_distribution(torch.rand(n, k, dtype=dtype), impl="triton")
            ops.hard_assign(z, mu, impl="triton")
        return run

    def sinkhorn_case(b, k, d, dtype):
        def run():
            ops.sinkhorn(torch.randn(b, k, dtype=dtype), impl="triton")
            ops.sinkhorn_from_embeddings(torch.randn(b, d, dtype=dtype),
                                         torch.randn(k, d, dtype=dtype), impl="triton")
            crops = [leaf(b, k, dtype=dtype) for _ in range(3)]
            ops.swav_loss(crops, impl="triton").backward()
        return run

    def contrastive_case(b, d, m, dtype):
        def run():
            ops.instance_contrastive_loss(leaf(m * b, d, dtype=dtype), n_views=m,
                                          impl="triton").backward()
            ops.cluster_contrastive_loss(leaf(m * b, d, dtype=dtype).softmax(1), n_views=m,
                                         impl="triton").backward()
        return run

    def prototype_case(n, d, k, dtype, soft):
        def run():
            x, p = leaf(n, d, dtype=dtype), leaf(k, d, dtype=dtype)
            t = torch.rand(n, k, dtype=dtype) if soft else torch.randint(0, k, (n,))
            temp = torch.rand(k) + 0.05
            ops.prototype_cross_entropy(x, p, t, temp, impl="triton").backward()
        return run

    for dtype in dtypes:
        dn = str(dtype).replace("torch.", "")
        for n, d, k in ((37, 10, 3), (129, 33, 7), (70, 300, 20), (200, 64, 130)):
            for tgt in (False, True):
                yield f"dec {n}x{d} K={k} target={tgt} {dn}", dec_case(n, d, k, dtype, tgt)
        for b, k, d in ((37, 11, 10), (130, 300, 65), (64, 3000, 128)):
            yield f"sinkhorn/swav B={b} K={k} d={d} {dn}", sinkhorn_case(b, k, d, dtype)
        for b, d, m in ((37, 10, 2), (50, 130, 3), (33, 300, 2)):
            yield f"contrastive B={b} d={d} m={m} {dn}", contrastive_case(b, d, m, dtype)
        for n, d, k in ((37, 10, 3), (130, 70, 300), (64, 300, 33)):
            for soft in (False, True):
                yield f"prototype {n}x{d} K={k} soft={soft} {dn}", prototype_case(n, d, k, dtype,
                                                                                    soft)


def record_configs(with_bench: bool = True, with_tests: bool = True, verbose: bool = False,
                   workloads_matching=()):
    """Every distinct kernel launch of the workloads, as JSON-able dicts."""
    import torch

    torch.manual_seed(0)
    workloads = []
    if with_tests:
        workloads += [("test", n, f) for n, f in _test_workloads()]
    if with_bench:
        workloads += [("bench", n, f) for n, f in _bench_workloads()]
    if workloads_matching:
        workloads = [w for w in workloads if any(s in w[1] for s in workloads_matching)]
    errors = []
    with _Recorder() as rec:
        for origin, name, thunk in workloads:
            rec.origin = (origin, name)
            try:
                thunk()
            except Exception as exc:  # a launcher that fails to pick a config is a gate failure
                errors.append(f"{origin} {name}: {type(exc).__name__}: {exc}")
            if verbose:
                print(f"recorded {origin} {name}: {len(rec.store)} configs", file=sys.stderr)
    configs = []
    for rec_ in rec.store.values():
        rec_ = dict(rec_)
        rec_["used_by"] = sorted(rec_["used_by"])
        rec_["cases"] = sorted(rec_["cases"])
        configs.append(rec_)
    configs.sort(key=lambda c: (c["name"], json.dumps(c["constexprs"], sort_keys=True, default=str)))
    return configs, errors


# ----------------------------------------------------------------------------- compiling
def _config_text(cfg) -> str:
    ptr_types = sorted({v for v in cfg["signature"].values() if v.startswith("*")})
    cx = ",".join(f"{k}={v}" for k, v in cfg["constexprs"].items() if v is not None)
    o = cfg["options"]
    fusion = ";fp_fusion=off" if o.get("enable_fp_fusion") is False else ""
    return (f"{cx};warps={o['num_warps']};stages={o['num_stages']}{fusion};"
            f"ptrs={'/'.join(ptr_types)}")


def _occupancy(regs: int, warps: int, shared: int, arch: int) -> int:
    """Resident warps per SM that the registers, shared memory and warps of one block allow
    (per-sub-partition register allocation, as the CUDA occupancy calculator does)."""
    from bench.nvcc_gate import occupancy_warps_per_sm

    return occupancy_warps_per_sm(arch, regs, shared, warps * 32) or 0


def _cuobjdump():
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _res_usage(cubin: bytes):
    import re

    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True,
                             text=True, check=True).stdout
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", out)
    if not m:
        raise RuntimeError(f"cannot read cuobjdump output: {out!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4))


def _compile_one(job):
    """Compile one (config, arch) in a worker process; returns a CSV row."""
    cfg, arch = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    row = {
        "kernel": cfg["name"], "config": _config_text(cfg), "arch": f"sm_{arch}",
        "compiler": f"triton {triton.__version__}", "registers": "", "stack_bytes": "",
        "spill_stores": "", "spill_loads": "", "shared_bytes": "",
        "warps": cfg["options"]["num_warps"], "occupancy_warps_per_sm": "",
        "used_by": "+".join(cfg["used_by"]), "status": "ok", "error": "",
    }
    try:
        mod = importlib.import_module(cfg["module"])
        fn = getattr(mod, cfg["name"])
        attrs = {(i,): [["tt.divisibility", 16]] for i in cfg["divisible"]}
        src = ASTSource(fn, dict(cfg["signature"]), dict(cfg["constexprs"]), attrs)
        try:
            k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                               options=dict(cfg["options"]))
        except AttributeError:  # seen once in a fresh worker ('NoneType' ... 'start'): retry
            k = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                               options=dict(cfg["options"]))
        regs, stack, _static_smem, local = _res_usage(k.asm["cubin"])
        shared = int(k.metadata.shared)
        warps = int(k.metadata.num_warps)
        # cuobjdump gives the stack frame and local memory per thread, not spill byte counts:
        # any of either is a spill here (these kernels declare no local arrays).
        row.update(registers=regs, stack_bytes=max(stack, local), shared_bytes=shared,
                   warps=warps, occupancy_warps_per_sm=_occupancy(regs, warps, shared, arch))
        if shared > SMEM_PER_BLOCK[arch]:
            row.update(status="smem", error=f"shared {shared} B > {SMEM_PER_BLOCK[arch]} B")
        elif stack > 0 or local > 0:
            row["status"] = "spill"
    except Exception as exc:
        row.update(status="error", error=f"{type(exc).__name__}: {str(exc)[:300]}")
    return row


def compile_configs(configs, archs=ARCHS, jobs=2):
    import multiprocessing as mp

    jobs_list = [(c, a) for c in configs for a in archs]
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as ex:
        return list(ex.map(_compile_one, jobs_list, chunksize=1))


def _compile_with(triton_path: str, configs, archs, jobs):
    """Compile in a subprocess whose ``triton`` comes from ``triton_path``."""
    with tempfile.TemporaryDirectory() as d:
        cfg_file, out_file = os.path.join(d, "configs.json"), os.path.join(d, "rows.json")
        with open(cfg_file, "w") as f:
            json.dump(configs, f)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([triton_path, str(Path(__file__).resolve().parents[1]),
                                             env.get("PYTHONPATH", "")])
        env.pop("TRITON_INTERPRET", None)
        cmd = [sys.executable, "-m", "bench.gpu_compile", "--compile-only", cfg_file,
               "--rows-out", out_file, "--jobs", str(jobs), "--archs",
               ",".join(str(a) for a in archs)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not os.path.exists(out_file):
            raise RuntimeError(f"compiling with {triton_path} failed:\n{proc.stderr[-3000:]}")
        with open(out_file) as f:
            return json.load(f)


# ----------------------------------------------------------------------------- gate
def _bench_used(row) -> bool:
    return "bench" in str(row.get("used_by", "")).split("+")


def failures(rows):
    """The rows that fail the gate: errors, shared memory over the limit, spills in benchmark
    configurations."""
    bad = []
    for r in rows:
        if r["status"] in ("error", "smem"):
            bad.append(r)
        elif r["status"] == "spill" and _bench_used(r):
            bad.append(r)
        elif r["status"] not in ("ok", "spill", "skipped"):
            bad.append(r)
    return bad


def write_csv(rows, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted(rows, key=lambda r: (r["kernel"], r["config"], r["arch"], r["compiler"]))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def _summary(rows) -> str:
    from collections import defaultdict

    by = defaultdict(lambda: [0, 0, 0, 0, 0])  # configs, spills(all), spills(bench), errors, max regs
    for r in rows:
        k = (r["kernel"], r["arch"], r["compiler"])
        s = by[k]
        s[0] += 1
        if r["status"] == "spill":
            s[1] += 1
            s[2] += _bench_used(r)
        if r["status"] in ("error", "smem"):
            s[3] += 1
        if r.get("registers") not in ("", None):
            s[4] = max(s[4], int(r["registers"]))
    lines = [f"{'kernel':34s} {'arch':6s} {'compiler':14s} configs spills(bench) errors max_regs"]
    for (kern, arch, comp), s in sorted(by.items()):
        lines.append(f"{kern:34s} {arch:6s} {comp:14s} {s[0]:7d} {s[1]:6d}({s[2]:d}) {s[3]:6d} "
                     f"{s[4]:8d}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--archs", default=",".join(str(a) for a in ARCHS))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--triton-path", action="append", default=[],
                    help="a folder holding another Triton (pip install --target); repeatable")
    ap.add_argument("--only", default="", help="comma-separated kernel-name substrings")
    ap.add_argument("--workloads", default="",
                    help="comma-separated substrings of workload names to run (e.g. 'dec')")
    ap.add_argument("--no-bench", action="store_true", help="test shapes only")
    ap.add_argument("--no-nvcc", action="store_true", help="skip the CUDA extension")
    ap.add_argument("--csv", default=None,
                    help="rows out (default bench/results/compile.csv for a full run only)")
    ap.add_argument("--compile-only", help=argparse.SUPPRESS)
    ap.add_argument("--rows-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    archs = tuple(int(a) for a in args.archs.split(",") if a)

    if args.compile_only:  # worker mode: compile the given configs with this process's Triton
        with open(args.compile_only) as f:
            configs = json.load(f)
        rows = compile_configs(configs, archs, args.jobs)
        with open(args.rows_out, "w") as f:
            json.dump(rows, f)
        return 0

    t0 = time.time()
    configs, rec_errors = record_configs(
        with_bench=not args.no_bench,
        workloads_matching=[s for s in args.workloads.split(",") if s])
    if args.only:
        keys = [s for s in args.only.split(",") if s]
        configs = [c for c in configs if any(s in c["name"] for s in keys)]
    print(f"recorded {len(configs)} distinct kernel configurations in {time.time() - t0:.1f} s",
          flush=True)
    rows = []
    t1 = time.time()
    rows += compile_configs(configs, archs, args.jobs)
    for path in args.triton_path:
        rows += _compile_with(path, configs, archs, args.jobs)
    print(f"compiled {len(rows)} (configuration, arch, compiler) in {time.time() - t1:.1f} s",
          flush=True)
    if not args.no_nvcc:
        try:
            from bench.nvcc_gate import nvcc_rows

            nrows = nvcc_rows(archs=archs, jobs=args.jobs)
            for r in nrows:
                r.setdefault("used_by", "bench")
            rows += nrows
        except ImportError as exc:
            print(f"nvcc gate unavailable: {exc}", file=sys.stderr)
    if args.csv or not (args.only or args.workloads or args.no_bench):
        write_csv(rows, Path(args.csv or RESULTS / "compile.csv"))
    print(_summary(rows))
    bad = failures(rows)
    for msg in rec_errors:
        print(f"FAIL recording: {msg}")
    for r in bad:
        print(f"FAIL {r['kernel']} [{r['config']}] {r['arch']} {r['compiler']}: {r['status']} "
              f"stack={r.get('stack_bytes')} shared={r.get('shared_bytes')} {r.get('error', '')}")
    spills_test = [r for r in rows if r["status"] == "spill" and r not in bad]
    print(f"{len(rows)} rows: {len(bad)} failures, {len(spills_test)} spills in test-only "
          f"configurations, {len(rec_errors)} recording errors ({time.time() - t0:.0f} s)")
    return 1 if bad or rec_errors else 0


if __name__ == "__main__":
    sys.exit(main())
