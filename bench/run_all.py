"""Run every benchmark script in turn: ``python -m bench.run_all [--quick | --headline]
[--device cuda] [--out DIR] [--max-seconds S] [...]``.

The arguments go to every script (``bench.common.main``). ``--out DIR`` gives each script its
own ``DIR/<name>.csv`` (a ``*.csv`` path collects every row in that one file).
``--max-seconds S`` is a budget for the whole run, shared out as it goes: each script gets the
time still left divided by the number of scripts still to run, so what one leaves unused goes to
the next. ``--scripts NAME ...`` runs only those. A script that crashes outright is reported and
the others still run; the exit status is then 1. Each script's output starts with
``== bench.NAME`` and ends with ``== bench.NAME done: N rows in S s`` (or ``crashed``).
"""
import argparse
import importlib
import sys
import time
import traceback

SCRIPTS = ("dec", "sinkhorn", "swav_loss", "contrastive", "prototype", "recon", "kmeans")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--max-seconds", type=float, default=None)
    ap.add_argument("--scripts", nargs="+", default=list(SCRIPTS), choices=SCRIPTS)
    known, rest = ap.parse_known_args(argv)
    deadline = None if known.max_seconds is None else time.monotonic() + known.max_seconds
    import bench.common
    from bench.common import main as run

    failed = []
    scripts = known.scripts
    for i, name in enumerate(scripts):
        try:
            mod = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            print(f"skip bench.{name}: {exc}", file=sys.stderr)
            continue
        script_argv = list(rest)
        if deadline is not None:
            share = max(0.0, deadline - time.monotonic()) / (len(scripts) - i)
            script_argv += ["--max-seconds", f"{share:.1f}"]
        print(f"== bench.{name}", flush=True)
        t0, n0 = time.monotonic(), bench.common.ROWS_WRITTEN
        try:
            run(name, mod.cases, script_argv)
        except KeyboardInterrupt:
            raise
        except Exception:  # noqa: BLE001 - one broken script does not end the run
            traceback.print_exc()
            print(f"error: bench.{name} crashed; going on with the next script", file=sys.stderr,
                  flush=True)
            print(f"== bench.{name} crashed: {bench.common.ROWS_WRITTEN - n0} rows in "
                  f"{time.monotonic() - t0:.1f} s", flush=True)
            failed.append(name)
            continue
        # bench.gpu_check reads these lines to tell the scripts' rows and times apart
        n = bench.common.ROWS_WRITTEN - n0
        print(f"== bench.{name} done: {n} rows in {time.monotonic() - t0:.1f} s", flush=True)
    if failed:
        print(f"scripts that crashed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
