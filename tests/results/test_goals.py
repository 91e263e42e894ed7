"""The goals of the results table, held to the recorded files of ``bench/results/models``
(cheap: the JSON only; ``tests/results/test_reproduce.py`` re-runs them under ``make results``).

Image methods on USPS and MNIST-test: every method's mean ACC over its seeds at least 0.10 above
k-means on the raw pixels, the best at least 0.15 above; DEC on USPS at least 0.76 and above
k-means on Pendigits; DAEGC on Cora at 0.70 and on CiteSeer at or above the paper's 0.672;
TSD at least 0.02 above the source-only accuracy on MNIST-test -> USPS. The goals not met are
``xfail(strict=True)`` with what was measured: they turn into failures the day they are met,
so the mark must go then.
"""
import json
import statistics
from pathlib import Path

import pytest

MODELS = Path(__file__).resolve().parents[2] / "bench" / "results" / "models"
IMAGE_METHODS = ("dec", "tcl", "swav", "pcl")


def _runs(stem):
    files = sorted(MODELS.glob(f"{stem}_seed*.json"))
    return [json.loads(p.read_text()) for p in files]


def _mean(stem, key="acc"):
    runs = _runs(stem)
    assert runs, f"no results for {stem} in {MODELS}"
    return statistics.mean(float(r[key]) for r in runs)


@pytest.mark.parametrize("data", ["usps", "mnist-test"])
@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_image_method_well_above_kmeans(method, data):
    assert len(_runs(f"{method}_{data}")) >= 3
    assert _mean(f"{method}_{data}") >= _mean(f"kmeans_{data}") + 0.10


@pytest.mark.parametrize("data", ["usps", "mnist-test"])
def test_best_image_method_far_above_kmeans(data):
    best = max(_mean(f"{m}_{data}") for m in IMAGE_METHODS)
    assert best >= _mean(f"kmeans_{data}") + 0.15


def test_dec_usps_and_pendigits():
    assert len(_runs("dec_usps")) >= 3 and _mean("dec_usps") >= 0.76
    assert _mean("dec_pendigits") > _mean("kmeans_pendigits")


def test_daegc_cora_at_the_paper():
    assert len(_runs("daegc_cora")) >= 5 and _mean("daegc_cora") >= 0.70


@pytest.mark.xfail(strict=True, reason="CiteSeer 0.669 over seeds 0-4 with the recipe that "
                   "brings Cora to 0.701 (paper 0.672; l1 rows give 0.682 but Cora 0.688)")
def test_daegc_citeseer_at_the_paper():
    assert len(_runs("daegc_citeseer")) >= 5 and _mean("daegc_citeseer") >= 0.672


def test_tsd_gains_on_mnist_to_usps():
    runs = _runs("tsd_mnist-test-to-usps")
    assert len(runs) >= 3
    gain = statistics.mean(r["acc"] - r["acc_source_only"] for r in runs)
    assert gain >= 0.02, gain


def test_seeds_are_the_first_ones():
    """No chosen seeds: every recorded group is seeds 0..n-1."""
    groups = {}
    for p in MODELS.glob("*_seed*.json"):
        stem, seed = p.stem.rsplit("_seed", 1)
        groups.setdefault(stem, []).append(int(seed))
        assert json.loads(p.read_text())["seed"] == int(seed), p.name
    for stem, seeds in groups.items():
        assert sorted(seeds) == list(range(len(seeds))), (stem, sorted(seeds))
