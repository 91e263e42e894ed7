"""The one command to run first on a new GPU machine: ``make gpu-check OUT=DIR``, i.e.

    python3 -m bench.gpu_check --out DIR

Steps, each a subprocess with its own timeout inside one overall budget (default 330 s), none
stopping the next:

1. ``install``: ``pip install -q -e . --no-deps --no-build-isolation`` with
   ``TORCH_CUDA_ARCH_LIST=9.0`` (the C++/CUDA extension for sm_90; the ops fall back without it);
2. ``environment``: device name, torch / CUDA / triton / PyG / nvcc versions, whether the
   extension loaded and has CUDA kernels;
3. ``tests``: the suite compiled on CUDA, ``env -u TRITON_INTERPRET python -m pytest -n 8
   -p no:cacheprovider -q --junitxml OUT/junit.xml`` (Triton and inductor caches in a folder
   under /tmp that the benchmarks reuse; ``--timeout`` per test when pytest-timeout is there);
4. ``bench:<script>``: every benchmark script with ``--headline --device cuda``, fp32 and bf16,
   through ``bench.run_all`` in one process (one start-up), the time left shared out among the
   scripts (``--max-seconds``; at least one row each, ``--min-cases 1``); should that process
   die or hang, a fresh one goes on with the scripts it had not begun. All rows land in
   ``OUT/bench.csv`` (one long-format file, so that OUT stays a handful of files).

Everything lands in OUT: ``log.txt`` (every step's output), ``summary.md``, ``summary.json``,
``junit.xml`` and ``bench.csv``. The exit status is 0 only when every step passed; the summary
is written in any case. ``--split OUT/bench.csv bench/results/gpu`` later files the rows into
per-script CSVs (``dec.csv``, ``sinkhorn.csv``, ...).

``--dry`` (``make gpu-check-dry``) runs the same plumbing on this CPU machine: the install step
becomes an import check (nothing is installed), the tests a few interpreted kernel tests
(``TRITON_INTERPRET=1``), the benchmarks ``--quick --device cpu`` with the eager providers.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.run_all import SCRIPTS  # noqa: E402 - every benchmark script, in run order
# op (CSV column) -> the script whose CSV it belongs in, for --split
OP_SCRIPT = {
    "dec_loss": "dec", "sinkhorn": "sinkhorn", "sinkhorn_from_embeddings": "sinkhorn",
    "swav_loss": "swav_loss", "instance_contrastive_loss": "contrastive",
    "prototype_cross_entropy": "prototype", "negative_sampling": "recon",
    "sample+recon_loss": "recon", "kmeans": "kmeans",
}
# --dry: one quick interpreted kernel test per op family (about a minute on 2 cores)
DRY_TEST_FILES = ["tests/ops/test_dec.py", "tests/ops/test_contrastive.py",
                  "tests/ops/test_sinkhorn_knopp.py", "tests/ops/test_swav.py",
                  "tests/ops/test_prototype.py",
                  "tests/ops/test_recon.py"]
DRY_TEST_K = ("(test_dec_loss_small and fp32-triton-1.0-batch_target)"
              " or (test_instance_matches_reference and m2-B13-d19-t0.1-fp32-triton)"
              " or (test_sinkhorn_matches_truth and 37x5-eps0.05-fp32-triton)"
              " or (test_swav_loss_values_and_grads and 37x5-V3-fp32-triton)"
              " or (test_op_matches_reference and N37K5d19-hard-scalar-fp32-triton)"
              " or (test_dtypes_close_to_truth and fp32-cpp)")
DRY_PROVIDERS = ("deepclust-torch", "deepclust-cpp", "reference")
OUTPUTS = ("log.txt", "summary.md", "summary.json", "junit.xml", "bench.csv")

ENV_SNIPPET = r"""
import json, os, platform, shutil, subprocess, sys
info = {"python": platform.python_version(), "executable": sys.executable}
try:
    import torch
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["capability"] = "sm_%d%d" % torch.cuda.get_device_capability(0)
        info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        info["device"] = "cpu (%s, %s cores)" % (platform.machine(), os.cpu_count())
except Exception as exc:
    info["torch_error"] = repr(exc)
for mod in ("triton", "torch_geometric", "pytest", "xdist", "pytest_timeout"):
    try:
        m = __import__(mod)
        info[mod] = getattr(m, "__version__", "yes")
    except Exception as exc:
        info[mod] = None
try:
    from torch.utils.cpp_extension import CUDA_HOME
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=20).stdout
    info["nvcc"] = out.strip().splitlines()[-1] if out.strip() else None
except Exception as exc:
    info["nvcc"] = None
try:
    import deepclust
    from deepclust.ops import recon
    info["deepclust"] = os.path.dirname(deepclust.__file__)
    info["extension"] = recon.HAS_EXTENSION
    if not recon.HAS_EXTENSION:
        info["extension_error"] = repr(recon._EXTENSION_ERROR)
    elif info.get("cuda_available"):
        info["extension_cuda"] = bool(recon._has_kernel("recon_loss", torch.device("cuda")))
except Exception as exc:
    info["deepclust_error"] = repr(exc)
print("ENV " + json.dumps(info))
"""


# ----------------------------------------------------------------------------- running steps
class Log:
    """log.txt: every step's command and output, as it comes."""

    def __init__(self, path: Path):
        self.f = open(path, "a", buffering=1, errors="replace")
        self.lock = threading.Lock()

    def write(self, text: str) -> None:
        with self.lock:
            self.f.write(text)

    def close(self) -> None:
        self.f.close()


def say(msg: str) -> None:
    print(f"[gpu-check] {msg}", flush=True)


def run_step(name: str, cmd: list, *, env: dict, timeout: float, log: Log, cwd=ROOT,
             grace: float = 10.0) -> dict:
    """Run one command in its own process group; past ``timeout`` it gets SIGINT (pytest then
    still writes its report), ``grace`` seconds later SIGKILL. Returns name, cmd, rc, seconds,
    timed_out and the output."""
    t0 = time.monotonic()
    log.write(f"\n===== {name}: {shlex.join(cmd)}  (timeout {timeout:.0f} s, "
              f"{_dt.datetime.now().isoformat(timespec='seconds')})\n")
    res = {"name": name, "cmd": shlex.join(cmd), "rc": None, "timed_out": False, "output": ""}
    if timeout <= 1:
        res.update(seconds=0.0, status="skipped", note="no time left in the budget")
        log.write("skipped: no time left in the budget\n")
        return res
    lines: list = []
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                errors="replace", bufsize=1, start_new_session=True)
    except OSError as exc:
        res.update(seconds=time.monotonic() - t0, status="failed", note=f"could not start: {exc}")
        log.write(f"could not start: {exc}\n")
        return res

    def pump():
        for line in proc.stdout:
            lines.append(line)
            log.write(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        res["timed_out"] = True
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)  # the group this step started, and nothing else
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        rc = proc.wait()
    reader.join(timeout=5)
    res["rc"] = rc
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["output"] = "".join(lines)
    res["status"] = "timeout" if res["timed_out"] else ("ok" if rc == 0 else "failed")
    log.write(f"----- {name}: {res['status']} (exit {rc}, {res['seconds']} s)\n")
    return res


# ----------------------------------------------------------------------------- parsing
_COUNT_RE = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)")


def parse_pytest_output(text: str) -> dict:
    """Counts from pytest's last summary line and the failing ids from its ``-ra`` lines."""
    counts: dict = {}
    for line in reversed(text.splitlines()):
        if re.search(r"\b(passed|failed|error|errors|skipped|no tests ran)\b", line) and (
            " in " in line or line.startswith("=")
        ):
            for n, what in _COUNT_RE.findall(line):
                counts["errors" if what.startswith("error") else what] = int(n)
            if counts:
                break
    failing = []
    for line in text.splitlines():
        m = re.match(r"^(FAILED|ERROR) (\S+)", line)
        if m and m.group(2) not in failing:
            failing.append(m.group(2))
    return {"counts": counts, "failing": failing}


def parse_junit(path: Path) -> dict:
    """Counts and failing test ids from a JUnit XML report (pytest's ``--junitxml``)."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failing = []
    for s in suites:
        for tc in s.iter("testcase"):
            kinds = {c.tag for c in tc}
            cls, name = tc.get("classname", ""), tc.get("name", "")
            parts = cls.split(".")
            # tests.ops.test_dec -> tests/ops/test_dec.py (a class, if any, follows the module)
            for i in range(len(parts), 0, -1):
                if (ROOT / Path(*parts[:i])).with_suffix(".py").exists():
                    tid = "/".join(parts[:i]) + ".py::" + "::".join(parts[i:] + [name])
                    break
            else:
                tid = f"{cls}::{name}"
            if "failure" in kinds:
                counts["failed"] += 1
                failing.append(tid)
            elif "error" in kinds:
                counts["errors"] += 1
                failing.append(tid)
            elif "skipped" in kinds:
                counts["skipped"] += 1
            else:
                counts["passed"] += 1
    return {"counts": counts, "failing": failing}


def tests_result(step: dict, junit: Path) -> dict:
    """Counts and failing ids of the tests step: the JUnit report when there is one, else (or
    for ids it lacks) pytest's own output."""
    out = parse_pytest_output(step.get("output", ""))
    if junit.exists() and junit.stat().st_size:
        try:
            ju = parse_junit(junit)
            out = {"counts": ju["counts"] | {k: v for k, v in out["counts"].items()
                                             if k not in ju["counts"]},
                   "failing": ju["failing"] or out["failing"], "source": "junit"}
        except ET.ParseError as exc:
            out["junit_error"] = str(exc)
    return out


def read_bench_rows(path: Path) -> list:
    if not path.exists():
        return []
    from bench.common import read_rows

    return read_rows(path)


# ----------------------------------------------------------------------------- summary
def _cell(v) -> str:
    return str("" if v is None else v).replace("|", "\\|").replace("\n", " ")


def _sizes(s: str) -> str:
    try:
        return ",".join(f"{k}={v}" for k, v in json.loads(s).items())
    except (ValueError, AttributeError):
        return s


def render_summary(result: dict, rows: bool = True) -> str:
    """The markdown summary of one gpu-check run (``result`` as written to summary.json);
    ``rows=False`` leaves out the table of benchmark rows (the console's copy)."""
    env = result.get("env") or {}
    lines = [f"# gpu-check {'(dry run, CPU) ' if result.get('dry') else ''}"
             f"{'PASSED' if result.get('ok') else 'FAILED'}", ""]
    lines.append(f"- started {result.get('started', '')}, {result.get('seconds', '')} s in all "
                 f"(budget {result.get('budget', '')} s), host {result.get('host', '')}")
    dev = env.get("device", "?")
    if env.get("capability"):
        dev += f" ({env['capability']}, {env.get('gpu_memory_gb', '?')} GiB)"
    lines.append(f"- device: {dev}")
    lines.append(
        f"- python {env.get('python', '?')}, torch {env.get('torch', '?')} (CUDA "
        f"{env.get('torch_cuda')}), triton {env.get('triton')}, torch_geometric "
        f"{env.get('torch_geometric')}, nvcc: {env.get('nvcc')}")
    ext = env.get("extension")
    ext_s = ("built" + (f", CUDA kernels: {'yes' if env['extension_cuda'] else 'no'}"
                        if "extension_cuda" in env else "")) if ext else (
        f"not loaded ({env.get('extension_error', '?')})" if ext is False else "?")
    lines.append(f"- deepclust extension: {ext_s}")
    for k in ("torch_error", "deepclust_error"):
        if env.get(k):
            lines.append(f"- {k}: {env[k]}")
    lines += ["", "## Steps", "", "| step | status | seconds | exit | note |", "|---|---|---|---|---|"]
    for s in result.get("steps", []):
        lines.append(f"| {_cell(s.get('name'))} | {_cell(s.get('status'))} | "
                     f"{_cell(s.get('seconds'))} | {_cell(s.get('rc'))} | {_cell(s.get('note'))} |")
    t = result.get("tests")
    if t is not None:
        c = t.get("counts", {})
        lines += ["", "## Tests", "",
                  "passed {p}, failed {f}, errors {e}, skipped {s}".format(
                      p=c.get("passed", 0), f=c.get("failed", 0), e=c.get("errors", 0),
                      s=c.get("skipped", 0))
                  + (f", deselected {c['deselected']}" if c.get("deselected") else "")]
        if t.get("failing"):
            lines += ["", "Failing:", ""] + [f"- `{tid}`" for tid in t["failing"][:100]]
            if len(t["failing"]) > 100:
                lines.append(f"- ... and {len(t['failing']) - 100} more")
    bench_rows = result.get("bench_rows", [])
    lines += ["", "## Benchmarks", ""]
    if result.get("bench_csv"):
        lines.append(f"{len(bench_rows)} rows in `{result['bench_csv']}`"
                     + ("." if rows else " (the table is in summary.md)."))
        lines.append("")
    if not rows:  # the console: only the rows that are not ok
        bad = [r for r in bench_rows if r.get("status") != "ok"]
        for r in bad[:30]:
            lines.append(f"- {r.get('op')} {r.get('provider')} {r.get('mode')} "
                         f"{_sizes(r.get('sizes', ''))} {r.get('dtype')}: {r.get('status')} "
                         f"{(r.get('error') or '')[:160]}")
        if len(bad) > 30:
            lines.append(f"- ... and {len(bad) - 30} more rows not ok")
    elif bench_rows:
        lines += ["| op | provider | mode | sizes | dtype | median ms | peak MB | status |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in bench_rows:
            st = r.get("status", "")
            if r.get("error"):
                st += f": {r['error'][:160]}"
            lines.append("| " + " | ".join(_cell(x) for x in (
                r.get("op"), r.get("provider"), r.get("mode"), _sizes(r.get("sizes", "")),
                r.get("dtype"), r.get("median_ms"), r.get("peak_mb"), st)) + " |")
    else:
        lines.append("no benchmark rows")
    return "\n".join(lines) + "\n"


def write_summary(out: Path, result: dict) -> None:
    """summary.md and summary.json in ``out`` (the step outputs are left out of the JSON)."""
    out.mkdir(parents=True, exist_ok=True)
    slim = dict(result)
    slim["steps"] = [{k: v for k, v in s.items() if k != "output"} for s in result.get("steps", [])]
    (out / "summary.json").write_text(json.dumps(slim, indent=1, default=str) + "\n")
    (out / "summary.md").write_text(render_summary(result))


# ----------------------------------------------------------------------------- the check
def _bench_note(step: dict, rows: list) -> str:
    notes = []
    m = re.search(r"budget of .* spent: (\d+) case", step.get("output", ""))
    if m:
        notes.append(f"budget cut: {m.group(1)} case(s) not started")
    bad = [r for r in rows if r.get("status") not in ("ok",)]
    if bad:
        notes.append("rows not ok: " + ", ".join(
            f"{r['provider']} {r['dtype']} {r['status']}" for r in bad[:6])
            + (" ..." if len(bad) > 6 else ""))
    return "; ".join(notes)


def _last_line(text: str) -> str:
    """The line that says why a step failed: the last ``SomeError: ...`` line, else the last."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errs = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", ln)]
    return (errs or lines or [""])[-1][:200]


_MARK = re.compile(r"^== bench\.(\w+)(?: (done|crashed): (\d+) rows in ([\d.]+) s)?\s*$")


def bench_steps(proc: dict, scripts: list, rows: list) -> list:
    """One step per script that the ``bench.run_all`` process ``proc`` started, in order, from
    its ``== bench.NAME`` / ``== bench.NAME done: N rows in S s`` lines; ``rows`` are the CSV
    rows that process appended. A script begun but not ended took the process down (crash,
    kill, timeout); the scripts after it are left for a fresh process."""
    sections: dict = {}
    order = []
    for line in proc.get("output", "").splitlines():
        m = _MARK.match(line)
        if not m or m.group(1) not in scripts:
            if order and sections[order[-1]]["end"] is None:
                sections[order[-1]]["text"].append(line)
            continue
        name, end = m.group(1), m.group(2)
        if end is None:
            order.append(name)
            sections[name] = {"text": [], "end": None}
        elif name in sections:
            sections[name].update(end=end, n=int(m.group(3)), seconds=float(m.group(4)))
    steps, pos, used = [], 0, 0.0
    for name in order:
        sec = sections[name]
        text = "\n".join(sec["text"])
        st = {"name": f"bench:{name}", "rc": proc.get("rc"), "output": text}
        if sec["end"] is not None:
            mine = rows[pos:pos + sec["n"]]
            pos += sec["n"]
            used += sec["seconds"]
            st["seconds"] = sec["seconds"]
            st["status"] = "ok" if sec["end"] == "done" else "failed"
            st["rc"] = 0 if sec["end"] == "done" else 1
        else:  # the process ended inside this script
            mine = rows[pos:]
            pos = len(rows)
            st["seconds"] = round(max(0.0, proc.get("seconds", 0.0) - used), 1)
            st["status"] = "timeout" if proc.get("timed_out") else "failed"
        notes = [f"{len(mine)} rows"]
        if sec["end"] == "crashed" or sec["end"] is None:
            notes.append(("killed at the time limit" if proc.get("timed_out") else
                          f"process ended (exit {proc.get('rc')})" if sec["end"] is None else
                          "crashed") + ": " + _last_line(text))
        extra = _bench_note(st, mine)
        if extra:
            notes.append(extra)
        ours_bad = [r for r in mine if r["provider"].startswith("deepclust") and r["status"] == "error"]
        if st["status"] == "ok" and (ours_bad or not mine):
            st["status"] = "failed"
            if not mine:
                notes.append("no rows")
        st["rows"] = len(mine)
        st["note"] = "; ".join(notes)
        steps.append(st)
        if sec["end"] is None:
            break
    return steps


def split_csv(src: Path, dest: Path) -> list:
    """File the rows of a combined bench CSV into ``dest/<script>.csv`` (appending)."""
    from bench.common import append_rows, read_rows

    by: dict = {}
    for r in read_rows(src):
        by.setdefault(OP_SCRIPT.get(r["op"], r["op"]), []).append(r)
    written = []
    for name, rows in by.items():
        append_rows(dest / f"{name}.csv", rows)
        written.append(dest / f"{name}.csv")
    return written


def check(args) -> int:
    t_start = time.monotonic()
    deadline = t_start + args.budget
    left = lambda: deadline - time.monotonic()  # noqa: E731
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:  # this run's files only
        (out / name).unlink(missing_ok=True)
    log = Log(out / "log.txt")
    py = sys.executable
    cache = Path(args.cache_dir)
    base_env = dict(os.environ, PYTHONUNBUFFERED="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
                    PIP_NO_INDEX="1", TRITON_CACHE_DIR=str(cache / "triton"),
                    TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"))
    if args.dry:
        base_env["TRITON_INTERPRET"] = "1"
    else:
        base_env.pop("TRITON_INTERPRET", None)
    result = {
        "dry": args.dry, "ok": False, "out": str(out), "budget": args.budget,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "python": py, "steps": [], "env": {}, "tests": None,
        "bench_rows": [], "bench_csv": str(out / "bench.csv"),
    }
    steps = result["steps"]

    def record(step: dict) -> dict:
        steps.append(step)
        say(f"{step['name']}: {step['status']} ({step.get('seconds', 0)} s)"
            + (f" - {step['note']}" if step.get("note") else ""))
        write_summary(out, result)  # a summary exists whatever happens next
        return step

    log.write(f"gpu-check {'--dry ' if args.dry else ''}in {ROOT} -> {out}, budget {args.budget} s, "
              f"python {py}\n")
    try:
        # 1. install (the dry run only checks that the package imports)
        if args.dry:
            cmd = [py, "-c", "import deepclust, deepclust.ops.recon as r; "
                   "print('deepclust at', deepclust.__file__, '- extension:', r.HAS_EXTENSION)"]
            record(run_step("install (dry: import check)", cmd, env=base_env,
                            timeout=min(args.install_timeout, left()), log=log))
        else:
            env = dict(base_env, TORCH_CUDA_ARCH_LIST=args.arch, MAX_JOBS=str(os.cpu_count() or 8))
            cmd = [py, "-m", "pip", "install", "-q", "-e", ".", "--no-deps", "--no-build-isolation"]
            st = run_step("install", cmd, env=env, timeout=min(args.install_timeout, left() - 60),
                          log=log)
            if st["status"] not in ("ok", "skipped"):
                st["note"] = "the ops fall back to the references; " + _last_line(st["output"])
            record(st)

        # 2. environment
        st = run_step("environment", [py, "-c", ENV_SNIPPET], env=base_env,
                      timeout=min(60, left()), log=log)
        for line in st["output"].splitlines():
            if line.startswith("ENV "):
                result["env"] = json.loads(line[4:])
        env_info = result["env"]
        if st["status"] == "ok" and not args.dry and not env_info.get("cuda_available"):
            st["status"], st["note"] = "failed", "torch sees no CUDA device"
        elif st["status"] == "ok":
            st["note"] = f"{env_info.get('device')}, torch {env_info.get('torch')}"
        record(st)

        # 3. tests
        junit = out / "junit.xml"
        cmd = [py, "-m", "pytest", "-n", str(args.workers), "-p", "no:cacheprovider", "-q",
               f"--junitxml={junit}"]
        if importlib.util.find_spec("pytest_timeout") is not None:
            cmd.append(f"--timeout={args.test_case_timeout}")
        if args.dry:
            cmd += DRY_TEST_FILES + ["-k", DRY_TEST_K]
        cmd += args.pytest_args
        bench_floor = args.bench_min + args.margin
        st = run_step("tests", cmd, env=base_env,
                      timeout=min(args.test_timeout, left() - bench_floor), log=log)
        result["tests"] = tests_result(st, junit)
        c = result["tests"]["counts"]
        st["note"] = ", ".join(f"{k} {v}" for k, v in c.items()) or "no counts"
        if st["status"] == "ok" and (c.get("failed") or c.get("errors")):
            st["status"] = "failed"
        record(st)

        # 4. benchmarks: bench.run_all in one process (one start-up for every script), the
        # time left shared out among the scripts; if that process dies or hangs, a fresh one
        # goes on with the scripts it had not started
        csv_path = out / "bench.csv"
        bench_deadline = deadline - args.margin
        if args.bench_seconds is not None:
            bench_deadline = min(bench_deadline, time.monotonic() + args.bench_seconds)
        remaining = list(args.scripts)
        while remaining:
            now_left = bench_deadline - time.monotonic()
            if now_left < 5:
                for name in remaining:
                    record({"name": f"bench:{name}", "status": "skipped", "seconds": 0,
                            "rc": None, "note": "no time left in the budget"})
                break
            cmd = [py, "-m", "bench.run_all", "--scripts", *remaining, "--out", str(csv_path),
                   "--max-seconds", f"{0.8 * now_left:.0f}", "--min-cases", "1"]
            if args.dry:
                cmd += ["--quick", "--device", "cpu", "--in-process", "--rep", "1"]
                for p in DRY_PROVIDERS:
                    cmd += ["--provider", p]
            else:
                cmd += ["--headline", "--device", "cuda"]
            n_before = len(read_bench_rows(csv_path))
            proc = run_step("bench", cmd, env=base_env, timeout=now_left, log=log)
            new_rows = read_bench_rows(csv_path)[n_before:]
            done = bench_steps(proc, remaining, new_rows)
            for st in done:
                record(st)
            if not done:  # not one script started: the process itself is broken
                for name in remaining:
                    record({"name": f"bench:{name}", "status": "failed", "seconds": 0,
                            "rc": proc["rc"], "note": "bench.run_all did not start it: "
                            + _last_line(proc["output"])})
                break
            remaining = remaining[len(done):]
        result["bench_rows"] = read_bench_rows(csv_path)
    except Exception as exc:  # noqa: BLE001 - the summary is written whatever broke
        import traceback

        log.write(traceback.format_exc())
        steps.append({"name": "gpu-check itself", "status": "failed", "seconds": 0,
                      "note": f"{type(exc).__name__}: {exc}"})
    result["seconds"] = round(time.monotonic() - t_start, 1)
    result["ok"] = bool(steps) and all(s.get("status") == "ok" for s in steps)
    write_summary(out, result)
    log.write(f"\n===== done: {'ok' if result['ok'] else 'FAILED'} in {result['seconds']} s\n")
    log.close()
    print(render_summary(result, rows=False), flush=True)  # the table of rows is in the file
    say(f"{'PASSED' if result['ok'] else 'FAILED'} in {result['seconds']} s; files in {out}")
    return 0 if result["ok"] else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, help="output folder (default build/gpu-check[-dry])")
    ap.add_argument("--dry", action="store_true", help="CPU plumbing check (interpreter, tiny runs)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds for everything (default 330; dry 300)")
    ap.add_argument("--install-timeout", type=float, default=90.0)
    ap.add_argument("--test-timeout", type=float, default=None, help="default 150; dry 120")
    ap.add_argument("--test-case-timeout", type=int, default=60,
                    help="pytest-timeout per test, where pytest-timeout is installed")
    ap.add_argument("--workers", default=None, help="pytest -n (default 8; dry 1)")
    ap.add_argument("--bench-seconds", type=float, default=None,
                    help="cap on the benchmarks' time (default: all that is left)")
    ap.add_argument("--bench-min", type=float, default=60.0,
                    help="seconds the tests leave for the benchmarks at least")
    ap.add_argument("--margin", type=float, default=15.0, help="seconds kept for the summary")
    ap.add_argument("--scripts", nargs="+", default=list(SCRIPTS), choices=SCRIPTS)
    ap.add_argument("--arch", default="9.0", help="TORCH_CUDA_ARCH_LIST for the install")
    ap.add_argument("--cache-dir", default="/tmp/deepclust-gpu-check",
                    help="TRITON_CACHE_DIR / TORCHINDUCTOR_CACHE_DIR parent, kept between steps")
    ap.add_argument("--split", nargs=2, metavar=("CSV", "DIR"), default=None,
                    help="only file the rows of a bench.csv into DIR/<script>.csv, then exit")
    ap.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = ap.parse_args(argv)
    if args.split:
        for p in split_csv(Path(args.split[0]), Path(args.split[1])):
            print(p)
        return 0
    if args.out is None:
        args.out = str(ROOT / "build" / ("gpu-check-dry" if args.dry else "gpu-check"))
    if args.budget is None:
        args.budget = 300.0 if args.dry else 330.0
    if args.test_timeout is None:
        args.test_timeout = 120.0 if args.dry else 150.0
    if args.workers is None:
        args.workers = "1" if args.dry else "8"
    if args.dry:
        args.bench_min = min(args.bench_min, 30.0)
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
