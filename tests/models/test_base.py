"""The models' shared types (deepclust/models/base.py)."""
import torch

from deepclust.models.base import FitConfig, LossOutput


def test_fit_config_defaults_are_the_cli_defaults():
    c = FitConfig()
    assert (c.seed, c.device, c.epochs, c.impl, c.progress, c.checkpoint, c.resume) == (
        0, "cpu", None, "auto", True, None, False)
    assert c._replace(epochs=3).epochs == 3 and c.epochs is None  # immutable


def test_loss_output_keeps_the_graph_and_float_parts():
    w = torch.ones(2, requires_grad=True)
    out = LossOutput(total=(w * 3).sum(), components={"a": 1.5})
    out.total.backward()
    assert torch.equal(w.grad, torch.full((2,), 3.0)) and out.components == {"a": 1.5}
    total, parts = out  # unpacks as a pair
    assert parts["a"] == 1.5
