"""``deepclust demo``: the main job on the embedded digits: k-means, then DEC trained with the
fused ops, a timing of the fused DEC loss against the eager reference
(:func:`deepclust.check.time_dec_loss`), a quick ``check`` and a quick ``bench``."""
from __future__ import annotations

from ._bench import bench
from ._check import check
from ._fit import fit, line
from ._util import CLIError, check_device, progress_on, write_json

# the demo's reduced check: the quick size of every op, fp32 and bf16
DEMO_CHECK_DTYPES = ("fp32", "bf16")


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="the main job on the embedded digits: k-means, DEC, op timing")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--device", default="cpu")
    d.add_argument("--json", default=None, metavar="PATH")
    d.add_argument("--debug", action="store_true")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")


def demo(seed=0, device="cpu", json_path=None, progress=True):
    """k-means and DEC on the digits, then the fused DEC loss timed against the reference."""
    results = []
    for method in ("kmeans", "dec"):
        res = fit(method, "digits", seed=seed, device=device, progress=progress_on(not progress))
        results.append(res)
        print(line(res), flush=True)
    timing = _demo_timing(device)
    print(timing["line"], flush=True)
    checked = _demo_check(device, progress)
    benched = _demo_bench(device, progress)
    if json_path:
        write_json(json_path, {"fits": results, "timing": timing, "check": checked,
                               "bench": benched})
    return results, timing


def _demo_timing(device: str) -> dict:
    """Forward+backward of the DEC loss: fused op (auto path) vs eager reference. The check
    command's module does it: it is the one that may call the reference."""
    from ..check import time_dec_loss

    return time_dec_loss(device)


def _demo_check(device: str, progress: bool = True) -> dict:
    """``deepclust check --quick --dtype fp32,bf16``: every op on its first size."""
    print(f"\n$ deepclust check --quick --dtype {','.join(DEMO_CHECK_DTYPES)} --device {device}",
          flush=True)
    ok = check(device, dtypes=list(DEMO_CHECK_DTYPES), quick=True,
               progress=progress_on(not progress))
    return {"passed": ok}


def _demo_bench(device: str, progress: bool = True) -> dict:
    """``deepclust bench --ops dec --quick`` into a temporary folder: the fused path(s) and the
    eager reference."""
    import tempfile

    out = tempfile.mkdtemp(prefix="deepclust-demo-bench-")
    providers = ["deepclust-triton", "deepclust-torch", "reference"]
    print(f"\n$ deepclust bench --ops dec --quick --in-process --device {device} --out {out} "
          + " ".join(f"--provider {p}" for p in providers), flush=True)
    try:
        res = bench(["dec"], quick=True, device=device, out=out, providers=providers,
                    in_process=True, progress=progress_on(not progress))
    except CLIError as exc:  # e.g. the bench/ folder is not here (an installed package)
        print(f"bench: skipped ({exc})", flush=True)
        return {"skipped": str(exc)}
    with open(res["markdown"]) as f:
        print(f.read().rstrip(), flush=True)
    return res


def run(args) -> int:
    check_device(args.device)
    demo(seed=args.seed, device=args.device, json_path=args.json, progress=not args.no_progress)
    return 0
