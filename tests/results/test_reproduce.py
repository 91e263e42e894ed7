"""Every result of the README's table, re-run from its recipe (``make results``; deselected in
``make test``): each ``bench/results/models/*.json`` is the output of one ``deepclust fit`` or
``deepclust adapt`` command (``python -m bench.models`` lists them); the test runs the same
command in this process, with the thread count the file records, and holds the scores to it.

The tolerance covers a different CPU: on the machine and thread count of the run the results
are bitwise the same; elsewhere BLAS kernels sum in another order and a training run drifts.
"""
import json
from pathlib import Path

import pytest
import torch

from deepclust.cli import adapt, fit

MODELS = Path(__file__).resolve().parents[2] / "bench" / "results" / "models"
FILES = sorted(MODELS.glob("*.json"))
TOL = 0.02  # absolute, on ACC and NMI (and the source-only ACC of an adaptation)

pytestmark = [pytest.mark.results, pytest.mark.slow, pytest.mark.data]


def _rerun(rec, root):
    if "target" in rec:
        res = adapt(rec["method"], rec["source"], rec["target"], root=root, seed=rec["seed"],
                    epochs=rec.get("epochs"), batch_size=rec["batch_size"], lr=rec["lr"],
                    filter_k=rec["filter_k"], lam=rec["lam"], update=rec.get("update", "affine"),
                    impl=rec.get("impl", "auto"))
        return res, ("acc_source_only", "acc")
    res = fit(rec["method"], rec["data"], root=root, seed=rec["seed"], epochs=rec.get("epochs"),
              impl=rec.get("impl", "auto"), progress=False)
    return res, ("acc", "nmi")


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_reproduces(path, data_root):
    rec = json.loads(path.read_text())
    if rec.get("device", "cpu") != "cpu":
        pytest.skip(f"{path.name} was run on {rec['device']}")
    threads = torch.get_num_threads()
    torch.set_num_threads(int(rec.get("threads", 1)))
    try:
        res, keys = _rerun(rec, data_root)
    finally:
        torch.set_num_threads(threads)
    for k in keys:
        assert abs(res[k] - rec[k]) <= TOL, f"{path.name}: {k} {res[k]:.4f}, recorded {rec[k]:.4f}"
