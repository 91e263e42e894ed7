"""The recipes behind the README's results table, run as ``deepclust fit``/``adapt`` commands:
``python -m bench.models [--only SUBSTR ...] [--jobs N] [--out DIR] [--list]``.

Every entry of :data:`RUNS` is one command line with its seeds; each (command, seed) writes
``OUT/<method>_<data>_seed<S>.json`` (``adapt``: ``tsd_<source>-to-<target>_seed<S>.json``),
the files ``deepclust report`` turns into the table and ``make results`` re-runs
(``tests/results``). ``--jobs N`` runs N commands at a time, each with one thread
(``OMP_NUM_THREADS=1``; the JSON records the thread count, which the results tests restore).
The default epochs of each method are its recipe (see each model's ``cli_fit`` docstring).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results" / "models"
DATA = Path(os.environ.get("DEEPCLUST_DATA", REPO.parent / "shared" / "data"))

IMAGE_SEEDS = (0, 1, 2)
PAPER_GRAPH_SEEDS = (0, 1, 2, 3, 4)  # Cora and CiteSeer, held to the DAEGC paper's figures
GRAPH_SEEDS = (0, 1, 2)
# Amazon Photo: one seed (its 7650 nodes and 240k edges take some 12 minutes a run on the 2
# shared CPU cores; more seeds where time allows)
SEEDS_OF = {"amap": (0,)}

# (file stem without the seed, deepclust arguments, seeds)
RUNS = []
for _data in ("usps", "mnist-test"):
    RUNS.append((f"kmeans_{_data}", ["fit", "kmeans", "--data", _data], IMAGE_SEEDS))
    for _m in ("dec", "tcl", "swav", "pcl"):
        RUNS.append((f"{_m}_{_data}", ["fit", _m, "--data", _data], IMAGE_SEEDS))
RUNS.append(("kmeans_pendigits", ["fit", "kmeans", "--data", "pendigits"], IMAGE_SEEDS))
RUNS.append(("dec_pendigits", ["fit", "dec", "--data", "pendigits"], IMAGE_SEEDS))
for _src, _tgt in (("mnist-test", "usps"), ("usps", "mnist-test")):
    RUNS.append((f"tsd_{_src}-to-{_tgt}", ["adapt", "tsd", "--source", _src, "--target", _tgt], IMAGE_SEEDS))
for _data in ("cora", "citeseer", "acm", "dblp", "amap", "wiki"):
    RUNS.append((f"daegc_{_data}", ["fit", "daegc", "--data", _data],
                 PAPER_GRAPH_SEEDS if _data in ("cora", "citeseer") else SEEDS_OF.get(_data, GRAPH_SEEDS)))


def commands(only=(), out: Path = OUT, root: Path = DATA):
    """[(json path, argv)] of every run whose file stem contains one of ``only`` (all if empty)."""
    todo = []
    for stem, args, seeds in RUNS:
        if only and not any(o in stem for o in only):
            continue
        for s in seeds:
            path = Path(out) / f"{stem}_seed{s}.json"
            argv = [*args, "--root", str(root), "--seed", str(s), "--json", str(path)]
            if args[0] == "fit":
                argv.append("--no-progress")
            todo.append((path, argv))
    return todo


def _run(item):
    path, argv = item
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "deepclust.cli", *argv], env=env,
                       capture_output=True, text=True)
    line = (p.stdout.strip().splitlines() or [p.stderr.strip()[-300:]])[-1]
    print(f"[{time.perf_counter() - t0:6.0f} s] rc={p.returncode} {path.name}: {line}", flush=True)
    return p.returncode


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=[], help="run the stems containing one of these")
    ap.add_argument("--jobs", type=int, default=2, help="commands at a time (one thread each)")
    ap.add_argument("--out", default=str(OUT), help="folder of the JSON files")
    ap.add_argument("--root", default=str(DATA), help="data folder (shared/data)")
    ap.add_argument("--list", action="store_true", help="print the commands, run nothing")
    args = ap.parse_args(argv)
    todo = commands(args.only, Path(args.out), Path(args.root))
    if args.list:
        for path, cmd in todo:
            print("deepclust " + " ".join(cmd))
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        rcs = list(pool.map(_run, todo))
    return 1 if any(rcs) else 0


if __name__ == "__main__":
    sys.exit(main())
