"""Data sets: the embedded default (scikit-learn's digits), synthetic generators, and loaders
of the standard deep-clustering benchmarks from a local folder (nothing is downloaded)."""
from .datasets import (
    DATASETS,
    Dataset,
    load,
    load_digits,
    make_blobs,
    make_sbm,
)

__all__ = ["DATASETS", "Dataset", "load", "load_digits", "make_blobs", "make_sbm"]
