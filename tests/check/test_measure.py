"""How deepclust check measures: the margins are the test suite's, a comparison's ratio, the
bound earned from the reference's own error, the JSON row."""
import pytest
import torch

from deepclust import check as chk
from deepclust.check import _measure
from tests.helpers import MARGIN


def test_margins_are_the_test_suites():
    assert chk.MARGIN == MARGIN


def test_the_bound_is_factor_times_the_references_error_plus_the_margin():
    truth = torch.tensor([1.0, -2.0], dtype=torch.float64)
    ref = torch.tensor([1.0 + 2 ** -20, -2.0])  # float32, exactly representable
    out = torch.tensor([1.0, -2.0 + 2 ** -19])
    c = _measure.close("x", out, ref, truth)
    atol, rtol = MARGIN[torch.float32]
    assert c.bound == pytest.approx(chk.FACTOR * 2 ** -20 + atol + rtol * 2.0, rel=1e-12)
    assert c.err == 2 ** -19 and c.ok


@pytest.mark.parametrize("out,note", [(torch.ones(3), "shape (3,) != (2,)"),
                                      (torch.tensor([float("nan"), 0.0]), "non-finite values")])
def test_a_wrong_shape_or_a_nan_fails(out, note):
    truth = torch.zeros(2, dtype=torch.float64)
    c = _measure.close("x", out, truth.float(), truth)
    assert not c.ok and c.ratio == float("inf") and note in c.note


def test_ratio_and_json_row():
    assert _measure.Cmp("a", 1.0, 4.0).ratio == 0.25 and _measure.Cmp("a", 0, 0).ratio == 0.0
    assert _measure.Cmp("a", 1.0, 0.0).ratio == float("inf")
    row = chk.CheckRow("op", "torch", "fp32", float("inf"), float("nan"), "fail")
    assert row.as_dict()["max_error"] == "inf" and row.as_dict()["bound"] is None
    assert not row.passed


def test_loss_and_grads_returns_the_output_and_every_gradient():
    x, w = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    out, gx, gw = _measure.loss_and_grads(lambda a, b: (a * b).sum(), [x, w])
    assert out.item() == 11.0 and gx.tolist() == [3.0, 4.0] and gw.tolist() == [1.0, 2.0]
