"""Benchmarks of the fused ops against the references, torch.compile and peer libraries."""
