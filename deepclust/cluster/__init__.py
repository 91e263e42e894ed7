"""Classical clustering on tensors: :func:`kmeans` (torch with the fused assignment op, or
faiss when installed)."""
from .kmeans import KMeansResult, kmeans

__all__ = ["KMeansResult", "kmeans"]
