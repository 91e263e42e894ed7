"""deepclust: fused GPU kernels for deep clustering, with eager PyTorch references.

Subpackages load on first use: ``deepclust.ops`` (fused ops), ``deepclust.reference`` (eager
ground truth and CPU fallback), ``deepclust.nn`` (modules), ``deepclust.models``,
``deepclust.cluster`` (k-means), ``deepclust.data``, ``deepclust.metrics``.
"""
import importlib

__version__ = "0.1.0"
_SUBMODULES = ("ops", "reference", "nn", "models", "cluster", "data", "metrics", "cli")
__all__ = list(_SUBMODULES) + ["__version__"]


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
