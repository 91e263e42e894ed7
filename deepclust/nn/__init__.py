"""Modules that hold hyperparameters and call the functional ops."""
from .._lazy import lazy_exports

_EXPORTS = {
    "DECClusterHead": "dec_head",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
