"""Compile gate of the CUDA sources: nvcc compiles them for each target, no GPU needed.

For every ``kernels/*.cu`` that defines kernels (``__global__``) and every architecture,
``nvcc -c -gencode arch=compute_XX,code=sm_XX -Xptxas -v --keep`` compiles it (host and device)
with the extension's flags; the ptxas
report gives each kernel's registers, stack frame, spill stores and loads and static shared memory,
and the kept PTX its block size (``.maxntid``, from ``__launch_bounds__``, which every kernel
must declare). Sources without kernels (the torch-facing launchers) are compiled once, host and
device (``nvcc -c``), against torch's headers: they report only on failure.

:func:`nvcc_rows` returns one dict per (kernel, arch) with the resident warps per SM that those
resources allow (the CUDA occupancy calculator's register, warp, block and shared-memory limits).
A kernel passes with 0 bytes of stack and no spills. ``python -m bench.nvcc_gate`` prints the
table and exits non-zero on any error or spill; without nvcc every row is ``skipped``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
KERNELS = ROOT / "kernels"

# The flags setup.py's CUDAExtension gives nvcc: its own ("-O3", "-lineinfo"), torch's
# COMMON_NVCC_FLAGS and standard, the extension defines and csrc/ on the include path.
NVCC_FLAGS = [
    "-O3", "-lineinfo", "-std=c++20", "--expt-relaxed-constexpr",
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
    "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
    "--compiler-options", "-fPIC", f"-I{ROOT / 'csrc'}",
]

# Per-SM limits (CUDA C Programming Guide, compute capabilities table; cuda_occupancy.h):
# registers, resident warps, resident blocks, shared memory, shared memory the driver reserves
# per block. All these archs allocate registers per warp in units of 256 over 4 sub-partitions
# and shared memory in units of 128 bytes.
ARCH_LIMITS = {
    80: dict(regs=65536, warps=64, blocks=32, smem=164 * 1024, reserved=1024),
    86: dict(regs=65536, warps=48, blocks=16, smem=100 * 1024, reserved=1024),
    89: dict(regs=65536, warps=48, blocks=24, smem=100 * 1024, reserved=1024),
    90: dict(regs=65536, warps=64, blocks=32, smem=228 * 1024, reserved=1024),
    100: dict(regs=65536, warps=64, blocks=32, smem=228 * 1024, reserved=1024),
}

KEYS = ("kernel", "config", "arch", "compiler", "registers", "stack_bytes", "spill_stores",
        "spill_loads", "shared_bytes", "warps", "occupancy_warps_per_sm", "status", "error")


def occupancy_warps_per_sm(arch: int, registers: int, shared_bytes: int, threads: int) -> Optional[int]:
    """Resident warps per SM for one kernel on `arch` (None for an arch not in ARCH_LIMITS)."""
    lim = ARCH_LIMITS.get(arch)
    if lim is None or threads <= 0:
        return None
    warps = -(-threads // 32)
    by_warps = lim["warps"] // warps
    regs_per_warp = -(-registers * 32 // 256) * 256
    if regs_per_warp == 0:
        by_regs = lim["blocks"]
    elif registers > 255 or regs_per_warp * warps > lim["regs"]:
        by_regs = 0
    else:
        by_regs = (lim["regs"] // 4 // regs_per_warp) * 4 // warps
    smem = -(-(shared_bytes + lim["reserved"]) // 128) * 128
    by_smem = lim["smem"] // smem
    return min(by_warps, by_regs, by_smem, lim["blocks"]) * warps


def find_nvcc() -> Optional[str]:
    """$NVCC, else $CUDA_HOME/bin/nvcc, else nvcc on PATH."""
    for cand in (os.environ.get("NVCC"),
                 os.path.join(os.environ.get("CUDA_HOME", ""), "bin", "nvcc") if os.environ.get("CUDA_HOME") else None,
                 shutil.which("nvcc")):
        if cand and os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def nvcc_version(nvcc: str) -> Optional[str]:
    """'13.0' from ``nvcc --version``, None if it does not answer."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def torch_include_flags() -> Optional[list]:
    """-I flags for torch's headers (found without importing torch), None if absent."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    inc = Path(spec.origin).parent / "include"
    if not (inc / "torch" / "library.h").exists():
        return None
    flags = [f"-I{inc}", f"-I{inc / 'torch' / 'csrc' / 'api' / 'include'}",
             f"-I{sysconfig.get_paths()['include']}"]
    if not (inc / "c10" / "cuda" / "impl" / "cuda_cmake_macros.h").exists():
        # torch's CPU wheels ship c10/cuda but not this generated header; it only sets the
        # Windows DLL-export macro, so skipping it changes nothing on Linux.
        flags.append("-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE")
    return flags


def demangle(names: Sequence[str]) -> dict:
    """Mangled -> readable kernel name (``recon_fwd_kernel<__half, float>``), via c++filt."""
    out = {n: n for n in names}
    cxxfilt = shutil.which("c++filt") or shutil.which("cu++filt")
    if not cxxfilt or not names:
        return out
    try:
        res = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return out
    for name, full in zip(names, res.stdout.splitlines()):
        out[name] = _short_name(full.strip())
    return out


def _short_name(full: str) -> str:
    """'void ns::(anonymous namespace)::k<float, float>(float const*, ...)' -> 'k<float, float>'."""
    s = full
    if s.endswith(")"):  # drop the parameter list (balanced parentheses from the end)
        depth = 0
        for i in range(len(s) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(s[i], 0)
            if depth == 0:
                s = s[:i]
                break
    head, lt, tail = s.partition("<")
    head = head.replace("(anonymous namespace)", "anon")
    head = head.split(" ")[-1].split("::")[-1]
    return head + lt + tail


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_MAXNTID = re.compile(r"\.entry\s+([\w$.]+)\s*\((?:[^()]|\([^()]*\))*\)\s*([^{]*)\{")


def parse_ptxas(text: str) -> dict:
    """ptxas -v report -> {mangled name: dict(registers, stack_bytes, spill_*, shared_bytes)}."""
    found = {}
    cur = None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = found.setdefault(m.group(1), dict(registers=0, stack_bytes=0, spill_stores=0,
                                                    spill_loads=0, shared_bytes=0))
            continue
        if cur is None:
            continue
        m = _PROPS.search(line)
        if m:
            cur["stack_bytes"], cur["spill_stores"], cur["spill_loads"] = map(int, m.groups())
            continue
        m = _USED.search(line)
        if m:
            cur["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            cur["shared_bytes"] = int(s.group(1)) if s else 0
            cur = None  # the "Used" line closes the entry's report
    return found


def parse_maxntid(ptx: str) -> dict:
    """PTX -> {mangled entry name: threads per block from .maxntid} (entries that declare it)."""
    out = {}
    for m in _MAXNTID.finditer(ptx):
        t = re.search(r"\.maxntid\s+(\d+)(?:\s*,\s*(\d+))?(?:\s*,\s*(\d+))?", m.group(2))
        if t:
            n = 1
            for g in t.groups():
                n *= int(g) if g else 1
            out[m.group(1)] = n
    return out


@dataclass
class Compile:
    """One nvcc run: a source for one arch (kernel sources) or once (launchers)."""
    source: str
    arch: int
    kind: str  # "kernels" or "host"
    status: str = "ok"  # ok, error, skipped
    error: str = ""
    seconds: float = 0.0
    rows: list = field(default_factory=list)


def _row(**kw) -> dict:
    row = dict.fromkeys(KEYS)
    row.update(kw)
    return row


def _has_kernels(path: Path) -> bool:
    return "__global__" in path.read_text()


def _tail(text: str, n: int = 1500) -> str:
    text = text.strip()
    return text if len(text) <= n else "..." + text[-n:]


def _compile_kernels(nvcc: str, compiler: str, src: Path, arch: int, extra: list) -> Compile:
    res = Compile(os.path.relpath(src, ROOT), arch, "kernels")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nvcc_gate_") as tmp:
        cmd = [nvcc, "-c", "-gencode", f"arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v",
               "--keep", "--keep-dir", tmp, *NVCC_FLAGS, *extra, str(src),
               "-o", os.path.join(tmp, f"{src.stem}.o")]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
        ptx = "".join(p.read_text() for p in Path(tmp).glob("*.ptx"))
    res.seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        res.status, res.error = "error", _tail(proc.stderr or proc.stdout)
        return res
    usage = parse_ptxas(proc.stdout + proc.stderr)
    threads = parse_maxntid(ptx)
    names = demangle(sorted(usage))
    for mangled in sorted(usage, key=lambda n: names[n]):
        u = usage[mangled]
        n = threads.get(mangled)
        problems = []
        if n is None:
            problems.append("no __launch_bounds__: the block size (and occupancy) is unknown")
        if u["stack_bytes"] or u["spill_stores"] or u["spill_loads"]:
            problems.append(f"{u['stack_bytes']} bytes stack, {u['spill_stores']} bytes spill stores, "
                            f"{u['spill_loads']} bytes spill loads")
        status = "error" if n is None else ("spill" if problems else "ok")
        res.rows.append(_row(
            kernel=names[mangled], config=f"threads={n}" if n else "threads=?", arch=f"sm_{arch}",
            compiler=compiler, **u, warps=(n // 32 if n else None),
            occupancy_warps_per_sm=(occupancy_warps_per_sm(arch, u["registers"], u["shared_bytes"], n)
                                    if n else None),
            status=status, error="; ".join(problems)))
    if not usage:
        res.status, res.error = "error", "ptxas reported no kernel (is -Xptxas -v honoured?)"
    return res


def _compile_host(nvcc: str, src: Path, arch: int, extra: Optional[list]) -> Compile:
    res = Compile(os.path.relpath(src, ROOT), arch, "host")
    if extra is None:
        res.status, res.error = "skipped", "torch's headers not found (torch not importable)"
        return res
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nvcc_gate_") as tmp:
        cmd = [nvcc, "-c", "-gencode", f"arch=compute_{arch},code=sm_{arch}", *NVCC_FLAGS, *extra,
               str(src), "-o", os.path.join(tmp, f"{src.stem}.o")]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp)
    res.seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        res.status, res.error = "error", _tail(proc.stderr or proc.stdout)
    return res


def nvcc_compile(archs: Sequence[int] = (80, 90), jobs: int = 2, sources: Optional[Sequence] = None,
                 host: bool = True) -> list:
    """Runs the compiles (kernel sources per arch, launchers once), `jobs` at a time.

    Returns a list of :class:`Compile`; ``host=False`` leaves the launchers out (they take most
    of the time: torch's headers)."""
    srcs = [Path(s) if Path(s).is_absolute() else ROOT / s for s in sources] if sources else \
        sorted(KERNELS.glob("*.cu"))
    archs = [int(a) for a in archs]
    nvcc = find_nvcc()
    version = nvcc_version(nvcc) if nvcc else None
    if version is None:
        why = "nvcc not found (set NVCC or CUDA_HOME, or put nvcc on PATH)" if nvcc is None else \
            f"{nvcc} --version did not answer"
        return [Compile(os.path.relpath(s, ROOT), a, "kernels", "skipped", why)
                for s in srcs for a in archs]
    compiler = f"nvcc {version}"
    torch_flags = torch_include_flags() if host else None
    plan = []  # (callable, args); the slow host compiles first so that they overlap the rest
    for s in srcs:
        if not _has_kernels(s):
            if host:
                plan.insert(0, (_compile_host, (nvcc, s, archs[-1], torch_flags)))
        else:
            for a in archs:
                plan.append((_compile_kernels, (nvcc, compiler, s, a, torch_flags or [])))
    with ThreadPoolExecutor(max_workers=max(1, int(jobs))) as pool:
        futures = [pool.submit(fn, *args) for fn, args in plan]
        results = [f.result() for f in futures]
    for r in results:
        if not r.rows and r.status != "ok":
            r.rows.append(_row(kernel=r.source + (" (launcher)" if r.kind == "host" else ""),
                               config="", arch=f"sm_{r.arch}", compiler=compiler,
                               status=r.status, error=r.error))
    return results


def nvcc_rows(archs: Sequence[int] = (80, 90), jobs: int = 2, host: bool = True) -> list:
    """One dict per (kernel, arch) with the keys of KEYS; compile failures are ``error`` rows,
    and without nvcc every (source, arch) is a ``skipped`` row with the reason in ``error``."""
    results = nvcc_compile(archs, jobs, host=host)
    if results and all(r.status == "skipped" and r.kind == "kernels" for r in results):
        return [_row(kernel=r.source, config="", arch=f"sm_{r.arch}", compiler="", status="skipped",
                     error=r.error) for r in results]
    return [row for r in results for row in r.rows]


def format_table(rows: Sequence[dict]) -> str:
    cols = ["kernel", "config", "arch", "registers", "stack_bytes", "spill_stores", "spill_loads",
            "shared_bytes", "warps", "occupancy_warps_per_sm", "status"]
    head = ["kernel", "config", "arch", "regs", "stack", "spill_st", "spill_ld", "smem", "warps",
            "occ_warps/SM", "status"]
    cells = [[("" if r[c] is None else str(r[c])) for c in cols] for r in rows]
    width = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, width)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * w for w in width])] + [line(c) for c in cells]
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities x 10")
    ap.add_argument("--jobs", type=int, default=2, help="parallel nvcc processes")
    ap.add_argument("--no-host", action="store_true",
                    help="skip the torch-facing launchers (compiled once against torch's headers)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    results = nvcc_compile(args.arch, args.jobs, host=not args.no_host)
    wall = time.perf_counter() - t0
    rows = [row for r in results for row in r.rows]
    if results and all(r.status == "skipped" for r in results):
        print(f"nvcc gate skipped: {results[0].error}")
        return 0
    compiler = next((r["compiler"] for r in rows if r.get("compiler")), "nvcc")
    print(f"{compiler}, sm_{', sm_'.join(map(str, args.arch))}, {args.jobs} jobs\n")
    print(format_table(rows))
    print()
    for r in results:
        what = f"sm_{r.arch}" if r.kind == "kernels" else f"host + sm_{r.arch}, once"
        print(f"  {r.source} ({what}): {r.status}, {r.seconds:.1f} s")
    bad = [r for r in rows if r["status"] in ("error", "spill")]
    for r in bad:
        print(f"\n{r['status'].upper()}: {r['kernel']} {r['arch']}: {r['error']}")
    print(f"\n{len(rows)} rows, {len(bad)} failing, {wall:.1f} s wall")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
