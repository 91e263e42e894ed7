"""k-means: exact recovery of separated blobs, inertia against scikit-learn, determinism,
the faiss backend, errors."""
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.datasets import make_blobs as sk_blobs
from sklearn.metrics import adjusted_rand_score

from deepclust.cluster import KMeansResult, kmeans



def _blobs(n=301, d=7, k=5, std=0.3, seed=0):
    x, y = sk_blobs(n_samples=n, n_features=d, centers=k, cluster_std=std, center_box=(-10, 10),
                    random_state=seed)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


@pytest.fixture(scope="module")
def digits():
    return torch.tensor(load_digits().data / 16.0, dtype=torch.float32)


def _inertia(x, centers, labels):
    return float((x.double() - centers.double()[labels]).pow(2).sum())


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_recovers_separated_blobs(impl, device):
    x, y = _blobs()
    x = x.to(device)
    res = kmeans(x, 5, n_init=2, seed=1, backend="torch", impl=impl)
    assert isinstance(res, KMeansResult)
    assert res.centers.device == x.device and res.labels.device == x.device
    assert res.centers.shape == (5, 7) and res.centers.dtype == torch.float32
    assert res.labels.shape == (301,) and res.labels.dtype == torch.int64
    assert adjusted_rand_score(y.numpy(), res.labels.cpu().numpy()) == 1.0
    # The result is self-consistent: labels are the nearest centres, inertia their distances.
    d = torch.cdist(x.double(), res.centers.double())
    assert torch.equal(res.labels, d.argmin(1))
    assert res.inertia == pytest.approx(_inertia(x, res.centers, res.labels), rel=1e-5)


def test_inertia_close_to_sklearn_on_digits(digits):
    res = kmeans(digits, 10, n_init=4, seed=0, backend="torch")
    sk = KMeans(10, n_init=4, random_state=0).fit(digits.numpy())
    assert res.inertia == pytest.approx(_inertia(digits, res.centers, res.labels), rel=1e-5)
    assert res.inertia <= sk.inertia_ * 1.03
    assert res.inertia >= sk.inertia_ * 0.97  # the same local optima family, not a bad number


def test_centres_are_means_of_their_clusters(digits):
    res = kmeans(digits, 8, n_init=1, seed=3, backend="torch")
    for j in range(8):
        members = digits[res.labels == j]
        assert members.shape[0] > 0
        torch.testing.assert_close(res.centers[j], members.mean(0), atol=1e-4, rtol=1e-4)


def test_deterministic_by_seed(digits):
    a = kmeans(digits, 10, n_init=1, seed=5, backend="torch")
    b = kmeans(digits, 10, n_init=1, seed=5, backend="torch")
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centers, b.centers)
    assert a.inertia == b.inertia
    c = kmeans(digits, 10, n_init=1, max_iter=1, seed=6, backend="torch")
    d = kmeans(digits, 10, n_init=1, max_iter=1, seed=5, backend="torch")
    assert not torch.equal(c.centers, d.centers)


def test_more_restarts_never_worse(digits):
    one = kmeans(digits, 10, n_init=1, seed=2, backend="torch")
    many = kmeans(digits, 10, n_init=3, seed=2, backend="torch")  # restart 1 is the same run
    assert many.inertia <= one.inertia + 1e-6


def test_duplicate_points_and_k_equals_n():
    # Fewer distinct points than clusters: centres still come back finite, inertia 0.
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0], [5.0, 5.0]])
    res = kmeans(x, 5, n_init=2, backend="torch")
    assert torch.isfinite(res.centers).all()
    assert res.inertia == pytest.approx(0.0, abs=1e-6)
    res = kmeans(x, 1, backend="torch")
    torch.testing.assert_close(res.centers[0], x.mean(0))
    assert res.labels.eq(0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes(dtype):
    x, y = _blobs(n=120, d=5, k=3)
    res = kmeans(x.to(dtype), 3, n_init=2, backend="torch")
    assert res.centers.dtype == dtype
    assert adjusted_rand_score(y.numpy(), res.labels.numpy()) == 1.0


def test_empty_cluster_is_reseeded():
    # Start from a centre far from every point: Lloyd leaves it empty and re-seeds it.
    import sys

    mod = sys.modules["deepclust.cluster.kmeans"]
    x, y = _blobs(n=90, d=3, k=3)
    init = torch.stack([x[0], x[0] + 1e-3, torch.full((3,), 1e4)])
    centers, labels, inertia = mod._lloyd(x, init, 100, 0.0, "torch")
    assert torch.bincount(labels, minlength=3).min() > 0
    assert adjusted_rand_score(y.numpy(), labels.numpy()) == 1.0


def test_faiss_backend():
    pytest.importorskip("faiss")
    x, y = _blobs()
    res = kmeans(x, 5, n_init=3, seed=0, backend="faiss")
    assert res.labels.dtype == torch.int64 and res.centers.shape == (5, 7)
    assert adjusted_rand_score(y.numpy(), res.labels.numpy()) == 1.0
    assert res.inertia == pytest.approx(_inertia(x, res.centers, res.labels), rel=1e-4)


def test_faiss_missing_is_a_clear_error(monkeypatch):
    import sys

    mod = sys.modules["deepclust.cluster.kmeans"]
    monkeypatch.setattr(mod, "_has_faiss", lambda: False)
    with pytest.raises(ImportError, match="faiss"):
        kmeans(torch.randn(10, 2), 2, backend="faiss")
    x, _ = _blobs(n=40, d=2, k=2)
    assert kmeans(x, 2, n_init=1, backend="auto").labels.shape == (40,)  # falls back to torch


def test_errors():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans(x, 11)
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans(x, 0)
    with pytest.raises(TypeError, match="n_clusters"):
        kmeans(x, 2.5)
    with pytest.raises(ValueError, match="x must be 2-D"):
        kmeans(torch.randn(10), 2)
    with pytest.raises(ValueError, match="x contains NaN"):
        kmeans(torch.tensor([[0.0, float("nan")], [1.0, 1.0]]), 1)
    with pytest.raises(TypeError, match="x must have dtype"):
        kmeans(torch.ones(10, 3, dtype=torch.int64), 2)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        kmeans([[0.0, 1.0]], 1)
    with pytest.raises(ValueError, match="backend"):
        kmeans(x, 2, backend="sklearn")
    with pytest.raises(ValueError, match="impl"):
        kmeans(x, 2, impl="cuda")
    with pytest.raises(ValueError, match="n_init"):
        kmeans(x, 2, n_init=0)
    with pytest.raises(ValueError, match="tol"):
        kmeans(x, 2, tol=-1.0)


@pytest.mark.gpu
def test_cuda_matches_cpu_quality():
    x, y = _blobs(n=2000, d=16, k=8, std=0.5)
    res = kmeans(x.cuda(), 8, n_init=3, backend="torch")
    assert res.labels.is_cuda and res.centers.is_cuda
    assert adjusted_rand_score(y.numpy(), res.labels.cpu().numpy()) == 1.0


# ----------------------------------------------------------------------------- faiss backend
def _nmi(y, labels):
    from sklearn.metrics import normalized_mutual_info_score

    return normalized_mutual_info_score(y, labels.cpu().numpy())


def _same_quality(x, y, k, n_init, seed=0):
    """The faiss and torch backends reach k-means solutions of the same quality: inertia within
    5% of each other, and the same agreement with the labels (NMI within 0.05)."""
    pytest.importorskip("faiss")
    t = kmeans(x, k, n_init=n_init, seed=seed, backend="torch")
    f = kmeans(x, k, n_init=n_init, seed=seed, backend="faiss")
    assert f.inertia == pytest.approx(_inertia(x, f.centers, f.labels), rel=1e-4)
    assert f.inertia <= t.inertia * 1.05 and t.inertia <= f.inertia * 1.05, (f.inertia, t.inertia)
    assert abs(_nmi(y, f.labels) - _nmi(y, t.labels)) <= 0.05
    return t, f


def test_faiss_same_quality_as_torch_on_digits():
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    _, f = _same_quality(x, d.target, 10, n_init=2)
    # self-consistent: the labels are the nearest centres
    assert torch.equal(f.labels, torch.cdist(x.double(), f.centers.double()).argmin(1))


@pytest.mark.data
def test_faiss_same_quality_as_torch_on_pendigits(data_root):
    from deepclust.data import load

    data = load("pendigits", data_root)  # 10992 x 16, 10 classes
    _same_quality(data.x, data.y.numpy(), data.n_clusters, n_init=2)


def test_faiss_deterministic_by_seed_and_dtype_device_of_input(device):
    pytest.importorskip("faiss")
    x, y = _blobs(n=200, d=6, k=4, std=1.5)
    a = kmeans(x, 4, n_init=2, seed=3, backend="faiss")
    b = kmeans(x, 4, n_init=2, seed=3, backend="faiss")
    assert torch.equal(a.labels, b.labels) and torch.equal(a.centers, b.centers)
    for dtype in (torch.float64, torch.float16):
        r = kmeans(x.to(device, dtype), 4, n_init=1, seed=0, backend="faiss")
        assert r.centers.dtype == dtype and r.centers.device == x.to(device).device
        assert r.labels.dtype == torch.int64 and r.labels.device == r.centers.device


def test_auto_backend_is_faiss_when_installed():
    pytest.importorskip("faiss")
    x, _ = _blobs(n=150, d=4, k=3)
    auto = kmeans(x, 3, n_init=2, seed=1)
    f = kmeans(x, 3, n_init=2, seed=1, backend="faiss")
    assert torch.equal(auto.labels, f.labels) and auto.inertia == f.inertia
