"""Fixtures of every op test."""
import pytest

from deepclust.ops import _plumbing


@pytest.fixture(autouse=True)
def _poison_outputs(monkeypatch):
    """Every kernel output starts as NaN (``_plumbing.new_output``): an element a kernel forgets
    to write fails the comparison instead of passing as leftover memory."""
    monkeypatch.setattr(_plumbing, "POISON_OUTPUTS", True)
