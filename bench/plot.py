"""Draw plots from the benchmark CSVs: ``python -m bench.plot [CSV ...]``.

One PNG per (op, mode, dtype, device): median time against the size that varies, one line per
provider, next to peak memory. Needs matplotlib (the ``bench`` extra).
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

from bench.common import RESULTS, read_rows


def _size_label(sizes: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in sizes.items())


def plot(csv_path: Path) -> list:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in read_rows(csv_path) if r["status"] == "ok"]
    groups = defaultdict(list)
    for r in rows:
        groups[(r["op"], r["mode"], r["dtype"], r["device"])].append(r)
    written = []
    for (op, mode, dtype, dev), rs in groups.items():
        fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
        by_prov = defaultdict(dict)
        labels = []
        for r in rs:
            lab = _size_label(json.loads(r["sizes"]))
            if lab not in labels:
                labels.append(lab)
            by_prov[r["provider"]][lab] = (float(r["median_ms"]), float(r["peak_mb"] or 0))
        xs = range(len(labels))
        for prov, vals in sorted(by_prov.items()):
            ys = [vals.get(l, (float("nan"), 0))[0] for l in labels]
            ms = [vals.get(l, (0, float("nan")))[1] for l in labels]
            ax_t.plot(xs, ys, marker="o", label=prov)
            ax_m.plot(xs, ms, marker="o", label=prov)
        for ax, yl in ((ax_t, "median time (ms)"), (ax_m, "peak memory (MB)")):
            ax.set_xticks(list(xs))
            ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=7)
            ax.set_yscale("log")
            ax.set_ylabel(yl)
            ax.grid(alpha=0.3)
        ax_t.legend(fontsize=8)
        fig.suptitle(f"{op} {mode} {dtype} on {dev}", fontsize=10)
        fig.tight_layout()
        safe = "".join(c if c.isalnum() else "_" for c in f"{op}_{mode}_{dtype}_{dev}")[:120]
        out = csv_path.parent / f"{safe}.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)
    return written


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or sorted(RESULTS.glob("*.csv"))
    for p in paths:
        for out in plot(p):
            print(out)
