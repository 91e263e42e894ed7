"""Modules that hold hyperparameters and call the functional ops, and the building blocks of
the models: :mod:`~deepclust.nn.pcl` and :mod:`~deepclust.nn.tsd` (their losses on the fused
ops), :mod:`~deepclust.nn.gat` (graph attention), :mod:`~deepclust.nn.autoencoder` (MLPs)."""
from .._lazy import lazy_exports

_EXPORTS = {
    "DECClusterHead": "dec_head",
    "GATEncoder": "gat",
    "ProximityGATConv": "gat",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
