"""Draw plots from the benchmark CSVs: ``python -m bench.plot [CSV ...] [--out DIR]``.

For every (op, mode, dtype, device) the size that varies most (``N``, ``B``, ``E``, ``K``, ...)
is the x axis; each combination of the other sizes gets its own PNG. Left: median time (the
p20-p80 band shaded), right: peak memory, both against that size, one line per provider, log
axes, the device in the title. The latest row of every (provider, sizes) is drawn; rows that are
not ``ok`` (OOM, error, timeout) are left out. Needs matplotlib (the ``bench`` extra);
``deepclust bench`` calls :func:`plot` on the CSVs it wrote.
"""
import argparse
import json
from collections import OrderedDict, defaultdict
from pathlib import Path

from bench.common import RESULTS, read_rows

# preferred x axis when several sizes vary as often
SIZE_ORDER = ("N", "B", "E", "K", "d", "m", "V", "A", "n_iters")


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _latest(rows):
    out = OrderedDict()
    for r in rows:
        key = (r["op"], r["mode"], r["dtype"], r["device"], r["sizes"], r["provider"])
        out.pop(key, None)
        out[key] = r
    return list(out.values())


def _x_key(sizes: list) -> str:
    """The size key with the most distinct values (ties: SIZE_ORDER), among numeric keys."""
    keys = [k for k in sizes[0] if all(isinstance(s.get(k), (int, float)) for s in sizes)]
    if not keys:
        return ""
    rank = {k: i for i, k in enumerate(SIZE_ORDER)}
    return max(keys, key=lambda k: (len({s[k] for s in sizes}), -rank.get(k, len(rank))))


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)[:150]


def groups(rows):
    """``{(op, mode, dtype, device, fixed sizes, x key): {provider: [(x, row), ...]}}``."""
    by = defaultdict(list)
    for r in _latest([r for r in rows if r.get("status") == "ok"]):
        by[(r["op"], r["mode"], r["dtype"], r["device"])].append(r)
    out = OrderedDict()
    for (op, mode, dtype, dev), rs in by.items():
        sizes = [json.loads(r["sizes"]) for r in rs]
        xk = _x_key(sizes)
        for r, s in zip(rs, sizes):
            fixed = tuple((k, v) for k, v in s.items() if k != xk)
            x = s.get(xk, 1)
            out.setdefault((op, mode, dtype, dev, fixed, xk), defaultdict(list))[r["provider"]].append((x, r))
    return out


def plot(csv_path, out_dir=None) -> list:
    """Write the PNGs of one CSV into ``out_dir`` (default: next to the CSV); return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    csv_path = Path(csv_path)
    out_dir = Path(out_dir) if out_dir is not None else csv_path.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for (op, mode, dtype, dev, fixed, xk), provs in groups(read_rows(csv_path)).items():
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
        for prov in sorted(provs):
            pts = sorted(provs[prov], key=lambda p: p[0])
            xs = [p[0] for p in pts]
            med = [_num(p[1]["median_ms"]) for p in pts]
            lo = [_num(p[1]["p20_ms"]) for p in pts]
            hi = [_num(p[1]["p80_ms"]) for p in pts]
            mem = [max(_num(p[1]["peak_mb"]), 1e-3) for p in pts]
            (line,) = ax_t.plot(xs, med, marker="o", label=prov)
            ax_t.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, linewidth=0)
            ax_m.plot(xs, mem, marker="o", label=prov)
        for ax, yl in ((ax_t, "median time (ms)"), (ax_m, "peak memory (MB)")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels overlap
            ax.set_xlabel(xk or "size")
            ax.set_ylabel(yl)
            ax.grid(alpha=0.3, which="both")
        ax_t.legend(fontsize=8)
        other = ", ".join(f"{k}={v}" for k, v in fixed)
        fig.suptitle(f"{op} ({mode}, {dtype}{', ' + other if other else ''}) on {dev}", fontsize=10)
        fig.tight_layout()
        name = _safe(f"{op}_{mode}_{dtype}_{'_'.join(f'{k}{v}' for k, v in fixed)}_{dev}")
        out = out_dir / f"{name}.png"
        fig.savefig(out, dpi=100)
        plt.close(fig)
        written.append(out)
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description="plots of the benchmark CSVs")
    ap.add_argument("csv", nargs="*", help="CSV files (default bench/results/*.csv)")
    ap.add_argument("--out", default=None, help="folder for the PNGs (default: next to each CSV)")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.csv] or sorted(RESULTS.glob("*.csv"))
    for p in paths:
        for out in plot(p, args.out):
            print(out)


if __name__ == "__main__":
    main()
