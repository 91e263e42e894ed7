"""DEC model: API, target refresh over the whole data set, stopping rule, the Triton path, the
CLI hook, and a short run on digits that beats k-means on the raw pixels."""
import copy

import numpy as np
import pytest
import torch

from deepclust import reference as R
from deepclust.data import load_digits, make_blobs
from deepclust.metrics import cluster_acc
from deepclust.models.base import FitConfig
from deepclust.models.dec import DEC, cli_fit


@pytest.fixture(scope="module")
def blobs():
    return make_blobs(n_samples=120, n_features=6, n_clusters=3, cluster_std=0.5, seed=0)


def _small(seed=0, impl="torch", d=6, k=3):
    torch.manual_seed(seed)
    return DEC(d, k, hidden=(16, 16), latent=3, impl=impl)


def test_api_shapes_and_pretraining(blobs):
    m = _small()
    hist = m.pretrain(blobs.x, epochs=30, batch_size=32, lr=3e-3, seed=0)
    assert len(hist) == 30 and hist[-1] < hist[0]
    labels0 = m.init_centers(blobs.x, n_init=3)
    assert labels0.shape == (120,) and labels0.dtype == torch.int64
    z = m.embed(blobs.x)
    assert z.shape == (120, 3) and not z.requires_grad
    assert torch.equal(m.predict(blobs.x), labels0)  # the centres are the k-means centres
    info = m.fit(blobs.x, max_iter=20, batch_size=32, update_interval=4, tol=0.0, seed=0)
    assert info["iterations"] == 20 and info["refreshes"] == 6 and not info["converged"]
    pred = m.predict(blobs.x)
    assert pred.shape == (120,) and pred.dtype == torch.int64
    soft = m.predict(blobs.x, soft=True)
    torch.testing.assert_close(soft.sum(1), torch.ones(120))
    assert torch.equal(soft.argmax(1), pred)
    assert cluster_acc(blobs.y, pred) > 0.9  # separated blobs stay separated


def test_gaussian_noise_pretraining(blobs):
    m = _small()
    hist = m.pretrain(blobs.x, epochs=20, batch_size=32, lr=3e-3, noise=0.3, noise_type="gaussian")
    assert hist[-1] < hist[0]
    # Same start and batches without noise: a different first epoch, so the noise is applied.
    m2 = _small()
    hist2 = m2.pretrain(blobs.x, epochs=1, batch_size=32, lr=3e-3, noise=0.0, noise_type="gaussian")
    assert hist2[0] != hist[0]


def test_target_is_refreshed_over_the_whole_data_set(blobs):
    m = _small()
    m.pretrain(blobs.x, epochs=5, batch_size=32, seed=0)
    m.init_centers(blobs.x, n_init=2)
    m.fit(blobs.x, max_iter=7, batch_size=50, update_interval=3, tol=0.0)
    # The last refresh (at the end) used every sample: frequencies over all 120 rows.
    want = R.target_distribution(R.soft_assign(m.embed(blobs.x), m.head.cluster_centers.detach()))
    assert m.head._target_valid[:120].all()
    torch.testing.assert_close(m.head._target_bank[:120], want, atol=1e-6, rtol=1e-5)
    # Not what one batch's own frequencies give.
    part = R.target_distribution(R.soft_assign(m.embed(blobs.x[:50]), m.head.cluster_centers.detach()))
    assert not torch.allclose(m.head._target_bank[:50], part, atol=1e-4)


def test_fit_trains_on_shuffled_batches_with_ids(blobs, monkeypatch):
    m = _small()
    m.init_centers(blobs.x, n_init=1)
    seen = []
    orig = m.head.forward

    def spy(z, update_target=True, index=None):
        seen.append((update_target, index.clone()))
        return orig(z, update_target=update_target, index=index)

    monkeypatch.setattr(m.head, "forward", spy)
    m.fit(blobs.x, max_iter=5, batch_size=40, update_interval=100, tol=0.0, seed=3)
    assert len(seen) == 5 and all(u is False for u, _ in seen)
    first_epoch = torch.cat([i for _, i in seen[:3]])
    assert torch.equal(first_epoch.sort().values, torch.arange(120))  # an epoch = a permutation
    assert not torch.equal(first_epoch, torch.arange(120))


def test_stops_when_few_labels_change(blobs):
    m = _small()
    m.pretrain(blobs.x, epochs=10, batch_size=32, seed=0)
    m.init_centers(blobs.x, n_init=2)
    info = m.fit(blobs.x, max_iter=1000, batch_size=32, update_interval=5, tol=1.01)
    # Any change is below 101%: training stops at the second refresh.
    assert info["converged"] and info["iterations"] == 5 and info["refreshes"] == 2
    assert info["delta_label"] <= 1.0


def test_epochs_sets_iterations(blobs):
    m = _small()
    m.init_centers(blobs.x, n_init=1)
    info = m.fit(blobs.x, epochs=2, batch_size=50, update_interval=100, tol=0.0)
    assert info["iterations"] == 2 * 3


def test_augment_reaches_both_phases_and_resumes(blobs):
    """``augment`` sees every training batch of both phases (the target keeps the clean data),
    and a fit resumed from a refresh's loop state repeats the uninterrupted one's augmentations."""
    seen = []

    def augment(rows, g):
        seen.append(rows.shape[0])
        return rows + 0.3 * torch.randn(rows.shape, generator=g)

    m = _small()
    m.pretrain(blobs.x, epochs=2, batch_size=50, augment=augment)
    assert sum(seen) == 2 * blobs.x.shape[0]
    seen.clear()
    m.init_centers(blobs.x, n_init=1)
    start = copy.deepcopy(m.state_dict())
    states = []
    m.fit(blobs.x, epochs=2, batch_size=50, update_interval=3, tol=0.0, augment=augment,
          on_epoch=lambda it, st: states.append(copy.deepcopy(st)))
    assert sum(seen) == 2 * blobs.x.shape[0]
    full = m.head.cluster_centers.detach().clone()
    mid = states[1]  # the loop state at the second refresh
    m.load_state_dict(start)  # replay up to there, then resume from the loop state
    m.fit(blobs.x, max_iter=mid["it"], batch_size=50, update_interval=3, tol=0.0, augment=augment)
    m.fit(blobs.x, epochs=2, batch_size=50, update_interval=3, tol=0.0, augment=augment, start=mid)
    torch.testing.assert_close(m.head.cluster_centers, full)


def test_triton_path_runs(blobs, device):
    m = _small(impl="triton").to(device)
    x = blobs.x[:37].to(device)
    m.pretrain(x, epochs=1, batch_size=37)
    m.init_centers(x, n_init=1)
    c0 = m.head.cluster_centers.detach().clone()
    info = m.fit(x, max_iter=2, batch_size=16, update_interval=1, tol=0.0)
    assert info["iterations"] == 2
    assert not torch.equal(m.head.cluster_centers.detach(), c0)
    ref = _small(impl="torch").to(device)
    ref.load_state_dict(m.state_dict())
    assert torch.equal(m.predict(x), ref.predict(x))


def test_bad_arguments(blobs):
    m = _small()
    with pytest.raises(ValueError, match="x must have 6 features"):
        m.embed(torch.randn(5, 4))
    with pytest.raises(ValueError, match="x contains NaN"):
        m.pretrain(torch.full((5, 6), float("nan")), epochs=1)
    with pytest.raises(ValueError, match="optimizer"):
        m.fit(blobs.x, max_iter=1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="noise"):
        m.pretrain(blobs.x, epochs=1, noise=1.0)
    with pytest.raises(ValueError, match="noise"):
        m.pretrain(blobs.x, epochs=1, noise=-0.1, noise_type="gaussian")
    with pytest.raises(ValueError, match="noise_type"):
        m.pretrain(blobs.x, epochs=1, noise_type="salt")
    with pytest.raises(ValueError, match="n_clusters"):
        DEC(6, 0)


def test_cli_fit_on_blobs():
    data = make_blobs(n_samples=200, n_features=5, n_clusters=4, cluster_std=0.6, seed=1)
    out = cli_fit(data, FitConfig(seed=0, epochs=3, progress=False))
    assert set(out) >= {"pred", "kmeans_pred", "pretrain_seconds"}
    assert isinstance(out["pred"], np.ndarray) and out["pred"].shape == (200,)
    assert np.issubdtype(out["pred"].dtype, np.integer)
    assert out["kmeans_pred"].shape == (200,) and out["pretrain_seconds"] >= 0
    assert cluster_acc(data.y, out["kmeans_pred"]) == 1.0


@pytest.mark.slow
def test_cli_defaults_beat_kmeans_on_raw_digits():
    """The documented defaults of ``deepclust fit dec`` on digits beat k-means on the raw
    pixels in the mean over seeds 0, 1 and 2 (every seed of a fixed range, none picked).

    When written: DEC 0.853 / 0.791 / 0.848 (mean 0.830), k-means 0.794 / 0.796 / 0.795
    (mean 0.795), a gap of 0.035. The asserted margin of 0.02 keeps a little over half of it: a single seed may
    move by a few points on another CPU or library version (float summation order changes
    the pretrained embedding), and a 0.05 drop of one seed lowers the mean by 0.017."""
    data = load_digits()
    acc, acc_km = [], []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        out = cli_fit(data, FitConfig(seed=seed, progress=False))
        acc.append(cluster_acc(data.y, out["pred"]))
        acc_km.append(cluster_acc(data.y, out["kmeans_pred"]))
    assert np.mean(acc) > np.mean(acc_km) + 0.02, (acc, acc_km)
