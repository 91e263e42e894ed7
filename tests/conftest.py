"""Test configuration.

Without a GPU the Triton kernels run in Triton's CPU interpreter: ``TRITON_INTERPRET=1`` is set
here, before anything imports triton, so the ``impl="triton"`` tests exercise the real kernels.
"""
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    assert "triton" not in sys.modules, "triton was imported before TRITON_INTERPRET could be set"
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

# pytest-xdist runs one worker per core: one thread each, or the workers' thread pools fight
# over the cores (oversubscribed OpenMP spins make small ops many times slower).
# Outside xdist torch's own default stands (it follows OMP_NUM_THREADS).
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("DEEPCLUST_DATA", REPO.parent / "shared" / "data"))
HAS_CUDA = torch.cuda.is_available()


def pytest_addoption(parser):
    parser.addoption("--results", action="store_true",
                     help="run the tests marked `results` (re-running every recorded result; "
                          "`make results`), which are deselected otherwise")


def pytest_collection_modifyitems(config, items):
    if not config.getoption("--results"):
        # the marker, not the keyword: every test under tests/results has "results" as a keyword
        keep = [it for it in items if it.get_closest_marker("results") is None]
        gone = [it for it in items if it.get_closest_marker("results") is not None]
        if gone:
            config.hook.pytest_deselected(items=gone)
            items[:] = keep
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_data = pytest.mark.skip(reason=f"data folder {DATA_ROOT} is absent")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "data" in item.keywords and not DATA_ROOT.is_dir():
            item.add_marker(skip_data)


@pytest.fixture
def device():
    """The device the op tests run on: CUDA when present, else the CPU (Triton interpreted)."""
    return torch.device("cuda" if HAS_CUDA else "cpu")


@pytest.fixture
def data_root():
    if not DATA_ROOT.is_dir():
        pytest.skip(f"data folder {DATA_ROOT} is absent")
    return DATA_ROOT


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
