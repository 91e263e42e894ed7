"""``deepclust report``: the README's results tables, generated from the files.

Two tables live in ``README.md`` between marker comments and are rewritten from the files in
``bench/results/``:

- ``<!-- results:begin -->`` ... ``<!-- results:end -->``: the methods on real data, one row per
  (method, data set, device, path) over the seeds of ``bench/results/models/*.json`` (the JSON
  that ``deepclust fit ... --json`` writes): mean +- sample standard deviation of ACC, NMI, ARI,
  F1, and the mean seconds per seed.
- ``<!-- bench:begin -->`` ... ``<!-- bench:end -->``: the benchmarks, one table per device named
  in ``bench/results/*.csv``, one row per (op, mode, dtype, sizes) with the latest row of every
  provider: median time and peak memory.

Every number is one in the files (rounded for print). :func:`readme_diff` tells whether the
README agrees with the files (the test suite asserts it does).
"""
from __future__ import annotations

import csv
import json
import math
import statistics
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

__all__ = ["models_table", "bench_tables", "bench_markdown", "render_sections", "update_readme",
           "readme_diff", "MARKERS", "ReportError"]

MARKERS = {
    "results": ("<!-- results:begin -->", "<!-- results:end -->"),
    "bench": ("<!-- bench:begin -->", "<!-- bench:end -->"),
}

METHOD_NAMES = {"dec": "DEC", "daegc": "DAEGC", "swav": "SwAV", "tcl": "TCL", "pcl": "PCL",
                "tsd": "TSD", "kmeans": "k-means"}
DATA_NAMES = {"cora": "Cora", "citeseer": "Citeseer", "amap": "Amazon Photo", "acm": "ACM",
              "dblp": "DBLP", "wiki": "Wiki", "usps": "USPS", "mnist-test": "MNIST-test",
              "pendigits": "Pendigits", "digits": "digits", "blobs": "blobs", "sbm": "SBM"}
# order of the size keys in a printed size; others follow alphabetically
SIZE_ORDER = ("N", "B", "E", "K", "d", "m", "V", "A", "n_iters")


class ReportError(Exception):
    """A problem with the inputs of the report (missing folder, markers, unreadable file)."""


# ----------------------------------------------------------------------------- models
def _read_json(path: Path) -> dict:
    try:
        with open(path) as f:
            obj = json.load(f)
    except (OSError, ValueError) as exc:
        raise ReportError(f"{path}: not a readable JSON file ({exc})") from None
    if not isinstance(obj, dict) or not ({"method", "data", "acc"} <= set(obj)
                                         or {"method", "source", "target", "acc", "acc_source_only"} <= set(obj)):
        raise ReportError(f"{path}: not the JSON of `deepclust fit --json` (no method/data/acc) "
                          "or of `deepclust adapt --json` (no method/source/target/acc)")
    return obj


def _seeds(seeds: Sequence) -> str:
    s = sorted(set(int(x) for x in seeds if x is not None))
    if not s:
        return "-"
    if len(s) > 2 and s == list(range(s[0], s[-1] + 1)):
        return f"{s[0]}-{s[-1]}"
    return ", ".join(map(str, s))


def _mean_sd(values: Sequence[float], digits: int = 3) -> str:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return ""
    m = statistics.mean(vals)
    if len(vals) == 1:
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} +- {statistics.stdev(vals):.{digits}f}"


def _seconds(values: Sequence[float]) -> str:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return ""
    m = statistics.mean(vals)
    return f"{m:.0f}" if m >= 10 else f"{m:.1f}"


# Published ACC beside ours: (method, data) -> (ACC, note key). Only figures read in their
# source; the notes under the table name each source.
PUBLISHED = {
    ("daegc", "cora"): ("0.704", "a"), ("daegc", "citeseer"): ("0.672", "a"),
    ("daegc", "amap"): ("0.760", "b"),
    ("dec", "usps"): ("0.764", "c"), ("dec", "pendigits"): ("0.688", "d"),
}
PYAGC = {("daegc", "cora"): "0.641", ("daegc", "amap"): "0.778"}
NOTES = {
    "a": "DAEGC paper (Wang et al., IJCAI 2019)",
    "b": "DAEGC as reported in later deep graph clustering benchmarks (e.g. Ju et al., ICLR 2026, "
         "appendix Table 9: 75.96 +- 0.23)",
    "c": "DEC, mean of 10 trials of its first author's Keras code (XifengGuo/DEC-keras README); "
         "the IDEC paper's DEC row is quoted there as 0.741",
    "d": "DEC on Pendigits in XifengGuo/IDEC-toy's README (that code's runs, not a paper)",
}
PYAGC_NOTE = ("PyAGC: its benchmark tables (Cloudy1225/PyAGC, `benchmark/results`), DAEGC row; "
              "PyAGC has no CiteSeer, ACM, DBLP or Wiki and no DEC/SwAV/TCL/PCL rows")


def _group(records, key):
    groups: Dict[tuple, List[dict]] = OrderedDict()
    for r in records:
        groups.setdefault(key(r), []).append(r)
    return groups


def models_table(paths: Iterable) -> str:
    """Markdown tables of ``deepclust fit --json`` results grouped over seeds (with the
    published figures beside them), then of ``deepclust adapt --json`` results when any."""
    records = [_read_json(Path(p)) for p in sorted(Path(x) for x in paths)]
    fits = [r for r in records if "target" not in r]
    adapts = [r for r in records if "target" in r]
    groups = _group(fits, lambda r: (str(r["method"]), str(r["data"]), str(r.get("device", "")),
                                     str(r.get("impl", "")), r.get("epochs"), int(r.get("world_size", 1) or 1)))
    lines = ["| method | data | seeds | ACC | NMI | ARI | F1 | published ACC | PyAGC ACC | seconds per seed | device |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    used = []
    for (method, data, device, impl, _epochs, world), rs in sorted(
            groups.items(), key=lambda kv: (kv[0][1], kv[0][0] != "kmeans", kv[0][0], kv[0][2], kv[0][3])):
        name = METHOD_NAMES.get(method, method)
        if impl and impl != "auto":
            name += f" ({impl} path)"
        dev = device + (f" x {world} processes" if world > 1 else "")
        pub = PUBLISHED.get((method, data))
        if pub and pub[1] not in used:
            used.append(pub[1])
        cells = [name, DATA_NAMES.get(data, data), _seeds([r.get("seed") for r in rs])]
        cells += [_mean_sd([r.get(k) for r in rs]) for k in ("acc", "nmi", "ari", "f1")]
        cells += [f"{pub[0]} ({pub[1]})" if pub else "-", PYAGC.get((method, data), "-")]
        cells += [_seconds([r.get("seconds") for r in rs]), dev]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"({k}) {NOTES[k]}." for k in sorted(used)]
    if any((m, d) in PYAGC for m, d, *_ in groups):
        notes.append(PYAGC_NOTE + ".")
    out = "\n".join(lines) + ("\n\n" + "  \n".join(notes) if notes else "")
    if adapts:
        out += "\n\n" + adapt_table(adapts)
    return out


def adapt_table(records: Sequence[dict]) -> str:
    """Markdown table of ``deepclust adapt --json`` results, grouped over seeds."""
    groups = _group(records, lambda r: (str(r["method"]), str(r["source"]), str(r["target"]),
                                        str(r.get("device", ""))))
    lines = ["| method | source -> target | seeds | source-only ACC | test-batch BN statistics only | "
             "adapted ACC (online) | gain over source-only | adapted model, afterwards | "
             "seconds per seed | device |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (method, src, tgt, device), rs in sorted(groups.items()):
        gain = [float(r["acc"]) - float(r["acc_source_only"]) for r in rs]
        cells = [METHOD_NAMES.get(method, method),
                 f"{DATA_NAMES.get(src, src)} -> {DATA_NAMES.get(tgt, tgt)}",
                 _seeds([r.get("seed") for r in rs]), _mean_sd([r.get("acc_source_only") for r in rs]),
                 _mean_sd([r.get("acc_bn_stats") for r in rs]) or "-", _mean_sd([r.get("acc") for r in rs]), _mean_sd(gain), _mean_sd([r.get("acc_after") for r in rs]),
                 _seconds([r.get("seconds") for r in rs]), device]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- benchmarks
def _read_csv(path: Path) -> List[dict]:
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: not a readable CSV file ({exc})") from None


def _fmt_ms(v: str) -> str:
    try:
        ms = float(v)
    except (TypeError, ValueError):
        return ""
    if ms >= 1000:
        return f"{ms / 1000:.3g} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    return f"{ms:.3g} ms"


def _fmt_mb(v: str) -> str:
    try:
        mb = float(v)
    except (TypeError, ValueError):
        return ""
    if mb >= 10:
        return f"{mb:.0f} MB"
    return f"{mb:.2g} MB"


def _size_text(sizes: str) -> str:
    try:
        d = json.loads(sizes)
    except ValueError:
        return sizes
    keys = [k for k in SIZE_ORDER if k in d] + sorted(k for k in d if k not in SIZE_ORDER)
    return ", ".join(f"{k}={d[k]}" for k in keys)


def _size_key(sizes: str) -> tuple:
    try:
        d = json.loads(sizes)
        return (math.prod(v for v in d.values() if isinstance(v, (int, float))), sizes)
    except (ValueError, TypeError):
        return (0, sizes)


def _cell(row: dict) -> str:
    status = (row.get("status") or "").strip()
    if status != "ok":
        return status or "?"
    t, m = _fmt_ms(row.get("median_ms")), _fmt_mb(row.get("peak_mb"))
    return ", ".join(x for x in (t, m) if x)


def _latest(rows: Iterable[dict]) -> "OrderedDict[tuple, dict]":
    """The last row of every (device, op, mode, dtype, sizes, provider), in file order (rows are
    appended, so the last is the latest)."""
    out: "OrderedDict[tuple, dict]" = OrderedDict()
    for r in rows:
        key = (r.get("device", ""), r.get("op", ""), r.get("mode", ""), r.get("dtype", ""),
               r.get("sizes", ""), r.get("provider", ""))
        out.pop(key, None)
        out[key] = r
    return out


def _provider_column(provider: str) -> str:
    if provider.startswith("deepclust"):
        return "deepclust"
    if provider == "reference":
        return "reference"
    if provider.startswith("compile("):
        return "compile"
    return "peer"


def bench_tables(rows: Iterable[dict], heading_level: int = 0) -> str:
    """Markdown: one table per device, a row per (op, mode, dtype, sizes), the latest row of
    every provider in its column (deepclust paths, eager reference, ``torch.compile`` of the
    reference, peer libraries)."""
    latest = _latest(rows)
    by_dev: "OrderedDict[str, OrderedDict]" = OrderedDict()
    for (dev, op, mode, dtype, sizes, prov), r in latest.items():
        by_dev.setdefault(dev, OrderedDict()).setdefault((op, mode, dtype, sizes), []).append(r)
    parts = []
    for dev in sorted(by_dev):
        groups = by_dev[dev]
        rs = [r for g in groups.values() for r in g]
        versions = sorted({r.get("torch", "") for r in rs} - {""})
        tversions = sorted({r.get("triton", "") for r in rs} - {""})
        dates = sorted({(r.get("timestamp") or "")[:10] for r in rs} - {""})
        when = dates[0] if len(dates) == 1 else (f"{dates[0]} to {dates[-1]}" if dates else "")
        desc = f"**{dev}**"
        extra = []
        if versions:
            extra.append("torch " + ", ".join(versions))
        if tversions:
            extra.append("triton " + ", ".join(tversions))
        if when:
            extra.append(f"measured {when}")
        if extra:
            desc += " (" + "; ".join(extra) + ")"
        lines = [desc + ":", "",
                 "| op | mode | dtype | size | deepclust | eager reference | "
                 "`torch.compile(reference)` | peers |",
                 "|---|---|---|---|---|---|---|---|"]
        order = sorted(groups, key=lambda k: (k[0], k[1], k[2], _size_key(k[3])))
        for key in order:
            op, mode, dtype, sizes = key
            cols: Dict[str, List[Tuple[str, str]]] = {"deepclust": [], "reference": [],
                                                      "compile": [], "peer": []}
            for r in sorted(groups[key], key=lambda r: r.get("provider", "")):
                cols[_provider_column(r.get("provider", ""))].append((r.get("provider", ""), _cell(r)))

            def join(col):
                items = cols[col]
                if col == "peer":
                    return "; ".join(f"{p} {c}" for p, c in items)
                if col == "deepclust" and len(items) > 1:
                    return "; ".join(f"{p.replace('deepclust-', '')} {c}" for p, c in items)
                if col == "deepclust" and items and items[0][0] not in ("deepclust-torch",):
                    p, c = items[0]
                    return f"{p.replace('deepclust-', '')} {c}"
                return "; ".join(c for _, c in items)

            cells = [f"`{op}`", mode, dtype, _size_text(sizes), join("deepclust"),
                     join("reference"), join("compile"), join("peer")]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def bench_markdown(csv_paths: Iterable) -> str:
    """The latest rows of these benchmark CSVs as markdown (``deepclust bench`` writes it)."""
    rows = []
    for p in sorted(Path(x) for x in csv_paths):
        rows += _read_csv(p)
    if not rows:
        return "No benchmark rows.\n"
    return bench_tables(rows) + "\n"


# ----------------------------------------------------------------------------- README
def benchmark_csvs(root) -> list:
    """The benchmark CSVs of a results folder: those with a ``median_ms`` column (not, e.g.,
    the compile gate's ``compile.csv``)."""
    out = []
    for p in sorted(Path(root).glob("*.csv")):
        with open(p, newline="") as f:
            header = next(csv.reader(f), [])
        if "median_ms" in header:
            out.append(p)
    return out


def render_sections(results_dir) -> Dict[str, str]:
    """The generated text of each marked README section, from ``results_dir`` (the folder with
    the benchmark CSVs and ``models/*.json``)."""
    root = Path(results_dir)
    if not root.is_dir():
        raise ReportError(f"results folder {str(root)!r} does not exist")
    jsons = sorted((root / "models").glob("*.json"))
    csvs = benchmark_csvs(root) + benchmark_csvs(root / "gpu")  # gpu/: `make gpu-check` rows
    rel = _display(root)
    if jsons:
        results = (f"Generated by `deepclust report` from `{rel}/models/*.json` (the JSON of "
                   "`deepclust fit/adapt ... --json`, written by `python -m bench.models`); mean "
                   "+- standard deviation over the seeds.\n\n"
                   + models_table(jsons))
    else:
        results = f"No model results in `{rel}/models/` yet."
    rows = []
    for p in csvs:
        rows += _read_csv(p)
    if rows:
        bench = (f"Generated by `deepclust report` from `{rel}/*.csv` and `{rel}/gpu/*.csv`: "
                 "the latest row of every "
                 "provider, median time and peak memory above the inputs; `full` is forward + "
                 "backward.\n\n" + bench_tables(rows))
    else:
        bench = f"No benchmark rows in `{rel}/*.csv` yet."
    return {"results": results, "bench": bench}


def _display(path: Path) -> str:
    """How the folder is named in the README: ``bench/results`` for the project's own (wherever
    the command runs from), else the path as given."""
    parts = path.resolve().parts
    if parts[-2:] == ("bench", "results"):
        return "bench/results"
    return str(path)


def _split(text: str, section: str) -> Tuple[str, str, str]:
    begin, end = MARKERS[section]
    i = text.find(begin)
    if i < 0:
        raise ReportError(f"the README has no {begin} marker")
    j = text.find(end, i + len(begin))
    if j < 0:
        raise ReportError(f"the README has {begin} but no {end} after it")
    return text[: i + len(begin)], text[i + len(begin): j], text[j:]


def _apply(text: str, sections: Dict[str, str]) -> str:
    for name, body in sections.items():
        head, _, tail = _split(text, name)
        text = head + "\n" + body.strip() + "\n" + tail
    return text


def readme_diff(readme, results_dir) -> List[str]:
    """The names of the README sections that differ from what the files give (empty: agree)."""
    text = _read_text(readme)
    want = render_sections(results_dir)
    return [name for name, body in want.items()
            if _split(text, name)[1].strip() != body.strip()]


def _read_text(path) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ReportError(f"cannot read {path}: {exc.strerror or exc}") from None


def update_readme(readme, results_dir, *, check: bool = False) -> List[str]:
    """Rewrite the marked sections of ``readme`` from ``results_dir``; return the names of the
    sections that changed. With ``check`` nothing is written."""
    text = _read_text(readme)
    sections = render_sections(results_dir)
    changed = [n for n, b in sections.items() if _split(text, n)[1].strip() != b.strip()]
    if changed and not check:
        new = _apply(text, sections)
        tmp = Path(str(readme) + ".tmp")
        tmp.write_text(new)
        tmp.replace(readme)
    return changed
