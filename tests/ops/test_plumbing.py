"""The op plumbing (deepclust/ops/_plumbing.py): path selection, poisoned outputs, chunking."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deepclust.ops import _plumbing as U


def test_resolve_impl(device):
    x = torch.zeros(2, device=device)
    assert U.resolve_impl("torch", x) == "torch"
    assert U.resolve_impl("auto", x) == ("triton" if x.is_cuda else "torch")
    # CUDA tensors run the kernels compiled; without CUDA the test session interprets them
    assert U.resolve_impl("triton", x) == "triton"
    with pytest.raises(ValueError, match="impl must be one of"):
        U.resolve_impl("cuda", x)


def test_resolve_impl_without_interpreter(monkeypatch):
    # triton-cpu-on-purpose: CPU tensors with the interpreter off are the error under test
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        U.resolve_impl("triton", torch.zeros(2))


def test_triton_op_on_cpu_without_interpreter_is_a_clear_error():
    """A real op call in a fresh process where TRITON_INTERPRET was never set (as on a CUDA
    machine): impl="triton" on CPU tensors names the fix instead of failing in Triton."""
    # triton-cpu-on-purpose: CPU tensors with the interpreter off are the error under test
    code = (
        "import torch\n"
        "from deepclust.ops import soft_assign\n"
        "try:\n"
        "    soft_assign(torch.randn(5, 3), torch.randn(2, 3), impl='triton')\n"
        "except RuntimeError as e:\n"
        "    print('RAISED', e)\n"
        "else:\n"
        "    print('NO ERROR')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the check is about CPU tensors; keep CUDA out of it
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert p.returncode == 0, p.stderr
    assert "RAISED" in p.stdout and "needs CUDA tensors" in p.stdout, p.stdout + p.stderr


def test_resolve_impl_float64_keeps_to_torch(device):
    x = torch.zeros(2, device=device, dtype=torch.float64)
    assert U.resolve_impl("auto", x, name="x") == "torch"
    with pytest.raises(TypeError, match="x must be float32"):
        U.resolve_impl("triton", x, name="x")
    # without a name the caller handles float64 itself (k-means computes in fp32)
    assert U.resolve_impl("triton", x) == "triton"


def test_poison_outputs_fills_nan_only_inside(monkeypatch):
    monkeypatch.setattr(U, "POISON_OUTPUTS", False)  # tests/ops/conftest.py turns it on
    with U.poison_outputs():
        assert torch.isnan(U.new_output((2, 3), torch.float32, torch.device("cpu"))).all()
    assert U.POISON_OUTPUTS is False


def test_pretend_cuda_picks_cuda_tiles_and_restores():
    cpu = torch.device("cpu")
    assert U.kernel_target(cpu) == "interpreter"
    with U.pretend_cuda():
        assert U.kernel_target(cpu) == "cuda"
        assert U.num_programs(10_000, cpu, per_sm=2) == 264
    assert U.kernel_target(cpu) == "interpreter"
    assert U.num_programs(10_000, cpu) == 3 and U.num_programs(2, cpu) == 2


@pytest.mark.parametrize("n,k,budget", [(10, 3, 7), (1, 1000, 16), (0, 5, 10), (100, 1, 1 << 22)])
def test_row_chunks_cover_rows_within_budget(n, k, budget):
    chunks = U.row_chunks(n, k, budget)
    covered = [i for a, b in chunks for i in range(a, b)]
    assert covered == list(range(n))
    assert all((b - a) * k <= max(budget, k) for a, b in chunks)


def test_next_pow2_and_upcast():
    assert [U.next_pow2(n) for n in (0, 1, 2, 3, 17, 64)] == [1, 1, 2, 4, 32, 64]
    assert U.upcast_bf16(torch.bfloat16, "interpreter") and not U.upcast_bf16(torch.bfloat16, "cuda")
    assert not U.upcast_bf16(torch.float16, "interpreter")


def test_autocast_fp32_upcasts_only_16_bit_under_autocast():
    h = torch.ones(2, dtype=torch.bfloat16)
    d = torch.ones(2, dtype=torch.float64)
    assert U.autocast_fp32(h).dtype == torch.bfloat16  # autocast off
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert U.autocast_fp32(h).dtype == torch.float32
        assert U.autocast_fp32(d).dtype == torch.float64 and U.autocast_fp32(3) == 3


def test_register_fp32_autocast_casts_a_custom_ops_inputs():
    @torch.library.custom_op("deepclust::_plumbing_probe", mutates_args=())
    def probe(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert x.dtype == y.dtype, "mixed dtypes reached the op"
        return x + y

    U.register_fp32_autocast("_plumbing_probe")
    x, y = torch.ones(3, dtype=torch.bfloat16), torch.ones(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = probe(x, y)
    assert out.dtype == torch.float32 and torch.equal(out, torch.full((3,), 2.0))
