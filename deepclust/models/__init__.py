"""Thin models built on the fused ops."""
from .._lazy import lazy_exports

_EXPORTS = {
    "DEC": "dec",
    "DAEGC": "daegc",
    "SwAV": "swav",
    "TCL": "tcl",
    "PCL": "pcl",
    "TSD": "tsd",
    "LossOutput": "base",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
