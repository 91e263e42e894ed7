"""What deepclust check runs: dtype names, the defaults, whether the Triton paths can run, and
the path of the C++ extension's ops."""
import pytest
import torch

from deepclust import check as chk
from deepclust.check import _select


def test_dtype_names():
    assert chk.parse_dtypes("fp32, bf16,fp32") == [torch.float32, torch.bfloat16]
    assert chk.parse_dtypes(["half", "double,float32"]) == [torch.float16, torch.float64,
                                                            torch.float32]
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        chk.parse_dtypes("fp8")
    with pytest.raises(ValueError, match="no dtype given"):
        chk.parse_dtypes(" , ")


def test_cpu_defaults():
    # no-triton-launch: "triton" only names a path here
    assert chk.default_dtypes("cpu") == [torch.float32, torch.float16, torch.bfloat16,
                                         torch.float64]
    assert chk.default_impls("cpu") == ["triton", "torch"]


def test_extension_ops_take_the_cpp_path():
    # no-triton-launch: "triton" only names the requested path here
    assert _select.fused_path("dec_loss", "triton", "cpu") == ("triton", "")
    assert _select.fused_path("recon_loss", "torch", "cpu") == ("torch", "")
    path, why = _select.fused_path("recon_loss", "triton", "cpu")
    assert path == "cpp" or (path is None and "deepclust._C" in why)


def test_without_interpreter_the_cpu_checks_torch_and_the_extension(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ok, why = chk.triton_available("cpu")
    assert not ok and "TRITON_INTERPRET=1" in why
    rows = chk.run_checks("cpu", dtypes=["fp32"], ops=["hard_assign", "recon_loss"], quick=True)
    paths = {(r.op, r.impl) for r in rows}
    assert ("hard_assign", "triton") not in paths and ("hard_assign", "torch") in paths
    from deepclust.ops import recon

    if recon.HAS_EXTENSION:
        assert ("recon_loss", "cpp") in paths
    assert all(r.status == "pass" for r in rows)
