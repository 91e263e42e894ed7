"""Clustering metrics: accuracy and macro-F1 after Hungarian matching, NMI, ARI.

Cluster ids are arbitrary, so accuracy and F1 first match clusters to classes one-to-one with
the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the contingency table,
maximising the number of correctly assigned samples. Any number of clusters and classes is
allowed: when there are more clusters than classes the unmatched clusters count as wrong, and
vice versa. NMI (arithmetic normalisation) and ARI come from scikit-learn.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn import metrics as _skm

__all__ = ["cluster_acc", "nmi", "ari", "f1_macro", "match_labels", "evaluate"]


def _as_labels(y, name: str) -> np.ndarray:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    if y.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integer labels, got dtype {y.dtype}")
    return y


def _pair(y_true, y_pred):
    yt = _as_labels(y_true, "y_true")
    yp = _as_labels(y_pred, "y_pred")
    if yt.shape != yp.shape:
        raise ValueError(f"y_true and y_pred differ in length: {yt.shape[0]} vs {yp.shape[0]}")
    return yt, yp


def match_labels(y_true, y_pred) -> np.ndarray:
    """Relabel ``y_pred`` by the Hungarian matching of clusters to classes.

    Returns predicted labels expressed as class ids; clusters left unmatched (more clusters
    than classes) get the label ``-1``, which never equals a class.
    """
    yt, yp = _pair(y_true, y_pred)
    classes, yt_idx = np.unique(yt, return_inverse=True)
    clusters, yp_idx = np.unique(yp, return_inverse=True)
    table = np.zeros((clusters.size, classes.size), dtype=np.int64)
    np.add.at(table, (yp_idx, yt_idx), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    mapping = np.full(clusters.size, -1, dtype=np.int64)
    mapping[rows] = classes[cols]
    return mapping[yp_idx]


def cluster_acc(y_true, y_pred) -> float:
    """Clustering accuracy: the fraction of samples whose cluster maps to their class under the
    best one-to-one matching of clusters to classes."""
    yt, _ = _pair(y_true, y_pred)
    return float(np.mean(match_labels(y_true, y_pred) == yt))


def f1_macro(y_true, y_pred) -> float:
    """Macro-averaged F1 over the true classes after Hungarian matching."""
    yt, _ = _pair(y_true, y_pred)
    matched = match_labels(y_true, y_pred)
    return float(_skm.f1_score(yt, matched, labels=np.unique(yt), average="macro", zero_division=0))


def nmi(y_true, y_pred) -> float:
    """Normalised mutual information (arithmetic mean normalisation, scikit-learn)."""
    yt, yp = _pair(y_true, y_pred)
    return float(_skm.normalized_mutual_info_score(yt, yp))


def ari(y_true, y_pred) -> float:
    """Adjusted Rand index (scikit-learn)."""
    yt, yp = _pair(y_true, y_pred)
    return float(_skm.adjusted_rand_score(yt, yp))


def evaluate(y_true, y_pred) -> Dict[str, float]:
    """All four metrics: ``{"acc", "nmi", "ari", "f1"}``."""
    return {
        "acc": cluster_acc(y_true, y_pred),
        "nmi": nmi(y_true, y_pred),
        "ari": ari(y_true, y_pred),
        "f1": f1_macro(y_true, y_pred),
    }
