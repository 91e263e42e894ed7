"""The ``deepclust`` command line.

``deepclust fit METHOD --data NAME [--root DIR] [--seed N] [--device cpu|cuda] [--epochs N]
[--impl auto|triton|torch] [--json PATH] [--no-progress]`` trains METHOD on a data set and prints
ACC/NMI/ARI/F1 and the seconds it took. ``deepclust adapt tsd --source NAME --target NAME``
trains a classifier on the labelled source images and adapts it at test time (TSD) on the
unlabelled target stream. ``deepclust check`` runs every fused op against its
eager reference on this device (forward and backward, every dtype, bounds earned against
float64) and exits 0 only when all pass. ``deepclust bench`` runs the benchmark scripts of
``bench/`` (CSV rows, PNG plots, a markdown table); ``deepclust report`` writes the README's
results tables from ``bench/results``. ``deepclust demo`` is the main job on the embedded
default (the digits): k-means, then DEC trained with the fused ops, a timing of the fused DEC
loss against the eager reference, a quick ``check`` and a quick ``bench``. Progress bars show
only on a terminal (and never with ``--no-progress``). Errors are one line on stderr and a
non-zero exit.

One private module per command (``_fit``, ``_adapt``, ``_demo``, ``_check``, ``_bench``, ``_report``): its
arguments (``add_parser``), its function and ``run(args) -> exit status``; ``_util`` holds what
they share.
"""
from __future__ import annotations

import argparse
import sys

from . import _adapt, _bench, _check, _demo, _fit, _report
from ._adapt import adapt
from ._bench import bench
from ._check import check
from ._demo import demo
from ._fit import METHODS, PARALLEL_METHODS, fit
from ._report import report
from ._util import CLIError

__all__ = ["main", "fit", "adapt", "demo", "check", "bench", "report", "CLIError", "METHODS",
           "PARALLEL_METHODS"]

# command -> its module, in the order of `deepclust --help`
_COMMANDS = {"fit": _fit, "adapt": _adapt, "demo": _demo, "check": _check, "bench": _bench, "report": _report}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deepclust", description="Deep clustering with fused GPU kernels.")
    sub = p.add_subparsers(dest="command", required=True)
    for module in _COMMANDS.values():
        module.add_parser(sub)
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command].run(args)
    except CLIError as exc:
        print(f"deepclust: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, RuntimeError, FileNotFoundError, ImportError, OSError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"deepclust: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
