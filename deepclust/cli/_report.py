"""``deepclust report``: its arguments, and the README's results tables rewritten from
``bench/results`` (:mod:`deepclust.report`)."""
from __future__ import annotations

from pathlib import Path

from ._util import CLIError


def add_parser(sub) -> None:
    r = sub.add_parser("report", help="write the README's results tables from bench/results")
    r.add_argument("--results", default=None, metavar="DIR",
                   help="folder with the benchmark CSVs and models/*.json (default: bench/results)")
    r.add_argument("--readme", default=None, metavar="PATH",
                   help="README to update (default: the one two folders above --results)")
    r.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when the README disagrees with the files")
    r.add_argument("--debug", action="store_true", help="show tracebacks")


def report(results=None, readme=None, *, check_only=False) -> list:
    """``deepclust report``: rewrite the README's marked results tables from the files."""
    from ..report import ReportError, update_readme

    if results is None:
        here = Path.cwd() / "bench" / "results"
        results = here if here.is_dir() else Path(__file__).resolve().parents[2] / "bench" / "results"
    results = Path(results)
    if not results.is_dir():
        raise CLIError(f"--results {str(results)!r} is not a folder")
    readme = Path(readme) if readme else results.resolve().parent.parent / "README.md"
    if not readme.is_file():
        raise CLIError(f"--readme {str(readme)!r} is not a file")
    try:
        changed = update_readme(readme, results, check=check_only)
    except ReportError as exc:
        raise CLIError(str(exc)) from None
    if check_only:
        print(f"{readme}: " + (f"out of date ({', '.join(changed)}); run deepclust report"
                               if changed else "up to date with the files"), flush=True)
    else:
        print(f"{readme}: " + (f"updated {', '.join(changed)}" if changed
                               else "already up to date"), flush=True)
    return changed


def run(args) -> int:
    changed = report(args.results, args.readme, check_only=args.check)
    return 1 if (args.check and changed) else 0
