"""Fused ops. Each takes ``impl="auto"|"triton"|"torch"``; the reference twin of each op lives
in :mod:`deepclust.reference` under the same name."""
from .._lazy import lazy_exports

_EXPORTS = {
    # DEC family: pairwise distance + Student-t + target + KL
    "soft_assign": "dec",
    "target_distribution": "dec",
    "dec_loss": "dec",
    "hard_assign": "dec",
    # Sinkhorn-Knopp and SwAV's swapped prediction
    "sinkhorn": "sinkhorn_knopp",
    "sinkhorn_from_embeddings": "sinkhorn_knopp",
    "swav_loss": "swav",
    # contrastive log-softmax without the N x N matrix
    "instance_contrastive_loss": "contrastive",
    "cluster_contrastive_loss": "contrastive",
    # prototype cross-entropy (PCL's ProtoNCE, TSD's prototype loss)
    "prototype_cross_entropy": "prototype",
    # negative sampling and reconstruction loss (C++/CUDA extension)
    "negative_sampling": "recon",
    "recon_loss": "recon",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
