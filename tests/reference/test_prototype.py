"""The eager reference of the prototype cross-entropy: hand values, the literal formulas
(F.cross_entropy, soft targets, per-prototype temperatures), float64 gradcheck, bad input."""
import math

import pytest
import torch
import torch.nn.functional as F

from deepclust.reference import prototype_cross_entropy as ref


# ----------------------------------------------------------------------------- hand values
def test_hand_values():
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # logits / 0.5: row 0 [2, 0], row 1 [0, 4]
    hard = ref(x, c, torch.tensor([0, 0]), 0.5)
    want = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(4))) / 2
    assert hard.item() == pytest.approx(want, rel=1e-6)
    # per-prototype temperature [1, 0.25]: row 0 [1, 0], row 1 [0, 8]
    soft = ref(x, c, torch.tensor([[0.5, 0.5], [1.0, 0.0]]), torch.tensor([1.0, 0.25]))
    r0 = 0.5 * math.log(1 + math.exp(-1)) + 0.5 * math.log(1 + math.exp(1))
    r1 = math.log(1 + math.exp(8))
    assert soft.item() == pytest.approx((r0 + r1) / 2, rel=1e-6)


def test_hand_value_unnormalised_soft_target_and_scalar_tensor_temperature():
    # a target row summing to 2 counts twice: 2 * logsumexp - t . logits
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)
    c = torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    # logits / 0.5: [2, 0, 2]
    t = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64)
    want = 2 * math.log(2 * math.exp(2) + 1) - 4
    out = ref(x, c, t, torch.tensor(0.5, dtype=torch.float64))
    assert out.item() == pytest.approx(want, abs=1e-12)
    # uniform logits: the loss of any class is log K
    assert ref(torch.zeros(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 4])).item() == \
        pytest.approx(math.log(5), abs=1e-6)


def test_separated_prototypes_give_near_zero_loss():
    c = torch.eye(4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 1])
    x = c[y]
    assert ref(x, c, y, 0.01).item() < 1e-30


# ----------------------------------------------------------------------------- the literal formulas
def test_equals_cross_entropy_for_class_targets():
    x, c = torch.randn(9, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    y = torch.randint(0, 6, (9,))
    torch.testing.assert_close(ref(x, c, y, 0.3), F.cross_entropy(x @ c.T / 0.3, y))
    # int32 indices are class indices too
    torch.testing.assert_close(ref(x, c, y.int(), 0.3), F.cross_entropy(x @ c.T / 0.3, y))


def test_per_prototype_temperature_vector():
    x, c = torch.randn(9, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    T = 0.1 + torch.rand(6, dtype=torch.float64)
    y = torch.randint(0, 6, (9,))
    torch.testing.assert_close(ref(x, c, y, T), F.cross_entropy(x @ c.T / T, y))
    # a constant vector is the scalar temperature
    torch.testing.assert_close(ref(x, c, y, torch.full((6,), 0.7, dtype=torch.float64)),
                               ref(x, c, y, 0.7))


def test_soft_targets():
    x, c = torch.randn(9, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    T = 0.1 + torch.rand(6, dtype=torch.float64)
    t = torch.rand(9, 6, dtype=torch.float64)  # rows need not sum to one
    want = -(t * F.log_softmax(x @ c.T / 0.3, dim=1)).sum(1).mean()
    torch.testing.assert_close(ref(x, c, t, 0.3), want)
    # hard == soft with one-hot targets
    y = torch.randint(0, 6, (9,))
    torch.testing.assert_close(ref(x, c, y, T), ref(x, c, F.one_hot(y, 6).double(), T))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_16bit_inputs_computed_in_fp32(dtype):
    x, c = torch.randn(9, 5), torch.randn(6, 5)
    y = torch.randint(0, 6, (9,))
    out = ref(x.to(dtype), c.to(dtype), y, 0.5)
    assert out.dtype == dtype
    want = F.cross_entropy(x.to(dtype).float() @ c.to(dtype).float().T / 0.5, y)
    torch.testing.assert_close(out, want.to(dtype), rtol=0, atol=0)


# ----------------------------------------------------------------------------- gradients
def test_gradcheck():
    x = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    c = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    T = (0.2 + torch.rand(5, dtype=torch.float64)).requires_grad_(True)
    y = torch.randint(0, 5, (7,))
    t = torch.rand(7, 5, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b, s: ref(a, b, y, s), (x, c, T))
    assert torch.autograd.gradcheck(lambda a, b, s: ref(a, b, s, 0.7), (x, c, t))


# ----------------------------------------------------------------------------- bad input
def test_bad_input_names_the_argument():
    x, c = torch.randn(5, 3), torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 3, 0])
    with pytest.raises(ValueError, match="target"):
        ref(x, c, torch.tensor([0, 1, 2, 4, 0]))
    with pytest.raises(ValueError, match="target"):
        ref(x, c, torch.tensor([0, -1, 2, 3, 0]))
    with pytest.raises(ValueError, match="target"):
        ref(x, c, y[:4])
    with pytest.raises(ValueError, match="target"):
        ref(x, c, torch.rand(5, 3))
    with pytest.raises(TypeError, match="target"):
        ref(x, c, y.bool())
    with pytest.raises(TypeError, match="target"):
        ref(x, c, [0, 1, 2, 3, 0])
    with pytest.raises(ValueError, match="prototypes"):
        ref(x, torch.randn(4, 2), y)
    with pytest.raises(TypeError, match="prototypes"):
        ref(x, c.double(), y)
    with pytest.raises(ValueError, match="x"):
        ref(x[0], c, y)
    with pytest.raises(TypeError, match="x"):
        ref(torch.ones(5, 3, dtype=torch.long), c, y)
    with pytest.raises(ValueError, match="temperature"):
        ref(x, c, y, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        ref(x, c, y, float("nan"))
    with pytest.raises(ValueError, match="temperature"):
        ref(x, c, y, torch.tensor([0.1, 0.2, -0.1, 0.3]))
    with pytest.raises(ValueError, match="temperature"):
        ref(x, c, y, torch.ones(3))
