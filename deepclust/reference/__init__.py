"""Eager PyTorch references: same names and signatures as :mod:`deepclust.ops`, faithful to the
published methods: the ground truth of the equivalence tests. Production code never imports
them (each op has an eager path of its own).

The references are leaves (torch and :mod:`deepclust._common` only), so this package imports
them eagerly rather than through :mod:`deepclust._lazy`. ``_EXPORTS`` names each one's module,
the twin of :data:`deepclust.ops._EXPORTS`.
"""
from .contrastive import cluster_contrastive_loss, instance_contrastive_loss
from .dec import dec_loss, hard_assign, soft_assign, target_distribution
from .pcl import cluster_concentration, info_nce_loss, proto_nce_loss
from .prototype import prototype_cross_entropy
from .recon import negative_sampling, recon_loss
from .sinkhorn_knopp import sinkhorn, sinkhorn_from_embeddings
from .swav import swav_loss
from .tsd import select_supports, topk_cluster_loss, tsd_prototype_loss

__all__ = [
    "cluster_concentration", "cluster_contrastive_loss", "dec_loss", "hard_assign",
    "info_nce_loss", "instance_contrastive_loss", "negative_sampling", "proto_nce_loss",
    "prototype_cross_entropy", "recon_loss", "select_supports", "sinkhorn",
    "sinkhorn_from_embeddings", "soft_assign", "swav_loss", "target_distribution",
    "topk_cluster_loss", "tsd_prototype_loss",
]
# name -> module, the twin of deepclust.ops._EXPORTS (read off the imports above)
_EXPORTS = {name: globals()[name].__module__.rpartition(".")[2] for name in __all__}
