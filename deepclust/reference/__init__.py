"""Eager PyTorch references: same names and signatures as :mod:`deepclust.ops`, faithful to the
published methods. They are the CPU fallback and the ground truth of the equivalence tests."""
from .._lazy import lazy_exports

_EXPORTS = {
    "soft_assign": "dec",
    "target_distribution": "dec",
    "dec_loss": "dec",
    "hard_assign": "dec",
    "sinkhorn": "swav",
    "sinkhorn_from_embeddings": "swav",
    "swav_loss": "swav",
    "instance_contrastive_loss": "contrastive",
    "cluster_contrastive_loss": "contrastive",
    "prototype_cross_entropy": "prototype",
    "negative_sampling": "recon",
    "recon_loss": "recon",
    # PCL (MoCo InfoNCE, k-means concentration, ProtoNCE)
    "info_nce_loss": "pcl",
    "cluster_concentration": "pcl",
    "proto_nce_loss": "pcl",
    # TSD (support memory, prototype loss, top-k neighbour loss)
    "select_supports": "tsd",
    "tsd_prototype_loss": "tsd",
    "topk_cluster_loss": "tsd",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
