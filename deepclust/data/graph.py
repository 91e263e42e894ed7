"""Graph preprocessing for the graph models: DAEGC's t-order proximity on the edges, and the
node features' scaling and sparse storage."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["proximity_graph", "prepare_features", "maybe_sparse"]


def proximity_graph(edge_index: Tensor, num_nodes: int, t: int = 2, hops: int = 1):
    r"""DAEGC's t-order proximity on the graph's edges.

    ``B`` is the row-normalised ``A + I``, ``T`` its column normalisation and
    ``M = (T + T^2 + ... + T^t) / t`` (DAEGC's code). Returns ``(edge_index, M_ij)`` on the
    support of ``(A + I)^hops`` (``hops=1``: DAEGC's attention mask, the graph plus self-loops),
    edge ``j -> i`` carrying ``M[i, j]``.
    """
    import numpy as np
    import scipy.sparse as sp

    ei = edge_index.cpu().numpy()
    a = sp.coo_matrix((np.ones(ei.shape[1]), (ei[0], ei[1])), shape=(num_nodes, num_nodes)).tocsr()
    a.data[:] = 1.0
    a = (a + sp.eye(num_nodes, format="csr")).tocsr()
    a.data[:] = 1.0
    b = sp.diags(1.0 / np.asarray(a.sum(1)).ravel()) @ a
    tr = (b @ sp.diags(1.0 / np.asarray(b.sum(0)).ravel())).tocsr()
    m, p = tr.copy(), tr.copy()
    for _ in range(t - 1):
        p = (p @ tr).tocsr()
        m = m + p
    m = (m / t).tocsr()
    support = a.copy()
    for _ in range(hops - 1):
        support = (support @ a).tocsr()
        support.data[:] = 1.0
    support = support.tocoo()
    w = np.asarray(m[support.row, support.col]).ravel()
    # M[i, j] weights the message j -> i: source = column j, target = row i
    out_ei = torch.as_tensor(np.stack([support.col, support.row]), dtype=torch.long)
    return out_ei.to(edge_index.device), torch.as_tensor(w, dtype=torch.float32, device=edge_index.device)


def prepare_features(x: Tensor) -> Tensor:
    """Row-normalise non-negative features (bag-of-words sets); standardise the others."""
    if float(x.min()) >= 0:
        return x / x.sum(1, keepdim=True).clamp_min(1e-12)
    return (x - x.mean(0)) / x.std(0).clamp_min(1e-8)


def maybe_sparse(x: Tensor) -> Tensor:
    """CSR copy of a mostly-zero feature matrix (faster first layer), else ``x``."""
    import warnings

    if float((x != 0).float().mean()) > 0.1:
        return x
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
        return x.to_sparse_csr()
