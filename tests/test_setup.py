"""setup.py's CUDA decision and toolkit probe, loaded without running ``setup()``.

The source is cut at the line that starts the build (``ext_modules, cmdclass = ...``), so that
only the helper functions are defined. The toolkit probe runs against fake toolkits (folders
with an ``nvcc`` shell script that answers ``--version`` and ``--dryrun``), never the real one.
"""
import os
import stat
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SETUP_PY = REPO / "setup.py"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the fake nvcc is a shell script")


def _load_setup_functions() -> dict:
    src = SETUP_PY.read_text()
    lines = src.splitlines(keepends=True)
    cut = next((i for i, line in enumerate(lines) if line.startswith("ext_modules, cmdclass =")),
               None)
    assert cut is not None, "setup.py no longer has the 'ext_modules, cmdclass =' line"
    body = "".join(lines[:cut])
    assert "\nsetup(" not in body, "setup() would run before the cut"
    ns = {"__file__": str(SETUP_PY), "__name__": "deepclust_setup_functions"}
    exec(compile(body, str(SETUP_PY), "exec"), ns)
    return ns


NS = _load_setup_functions()
decide = NS["_cuda_decision"]
probe = NS["_probe_cuda_toolkit"]


# ----------------------------------------------------------------------------- _cuda_decision
def test_loader_defines_the_helpers_only():
    for name in ("_cuda_decision", "_probe_cuda_toolkit", "_toolkit_complete", "_ask_nvcc",
                 "_want_cuda", "_extensions"):
        assert callable(NS[name])
    assert "ext_modules" not in NS and "cmdclass" not in NS


def test_torch_without_cuda_builds_cpu():
    ok, why = decide(None, True, True, "/opt/cuda", "12.8", True)
    assert ok is False
    assert "without CUDA" in why


def test_no_gpu_and_not_forced_builds_cpu():
    ok, why = decide("12.8", False, False, "/opt/cuda", "12.8", True)
    assert ok is False
    assert "no GPU" in why and "DEEPCLUST_FORCE_CUDA" in why


@pytest.mark.parametrize("gpu, force", [(True, False), (False, True), (True, True)])
def test_gpu_or_force_is_enough(gpu, force):
    ok, why = decide("12.8", gpu, force, "/opt/cuda", "12.8", True)
    assert ok is True
    assert "12.8" in why and "/opt/cuda" in why


def test_missing_toolkit():
    ok, why = decide("12.8", True, False, None, None, False)
    assert ok is False
    assert "no CUDA toolkit" in why


@pytest.mark.parametrize("from_env, where", [(True, "CUDA_HOME=/usr/local"),
                                             (False, "the guessed CUDA_HOME=/usr/local")])
def test_no_nvcc_under_cuda_home(from_env, where):
    ok, why = decide("12.8", True, False, "/usr/local", None, False, from_env=from_env)
    assert ok is False
    assert "no working nvcc" in why and where in why
    if from_env:
        assert "guessed" not in why


def test_missing_headers():
    ok, why = decide("12.8", False, True, "/opt/cuda", "12.8", False)
    assert ok is False
    assert "cuda_runtime.h" in why and "/opt/cuda" in why


@pytest.mark.parametrize("torch_cuda, nvcc", [("12.8", "13.0"), ("13.0", "12.8"), ("11.8", "12.1")])
def test_major_version_mismatch_builds_cpu(torch_cuda, nvcc):
    ok, why = decide(torch_cuda, False, True, "/opt/cuda", nvcc, True)
    assert ok is False
    assert "major version" in why and torch_cuda in why and nvcc in why


@pytest.mark.parametrize("torch_cuda, nvcc", [("13.0", "13.0"), ("12.8", "12.9"), ("12.1", "12.8")])
def test_matching_major_builds_cuda(torch_cuda, nvcc):
    ok, why = decide(torch_cuda, False, True, "/opt/cuda-x", nvcc, True)
    assert ok is True
    assert why == f"nvcc {nvcc} in /opt/cuda-x"


def test_decision_order_torch_first():
    """The first reason that applies is the one reported."""
    assert "without CUDA" in decide(None, False, False, None, None, False)[1]
    assert "no GPU" in decide("12.8", False, False, None, None, False)[1]
    assert "no working nvcc" in decide("12.8", True, False, "/x", None, False)[1]


def test_want_cuda_warns_on_mismatch(monkeypatch, tmp_path):
    """_want_cuda: a usable-looking toolkit of the wrong major version is a CPU build with a
    warning that says why; the (fake) torch's CUDA_HOME is left alone."""
    home = _fake_toolkit(tmp_path / "cuda", "13.0")
    fake_torch = _FakeTorch(cuda="12.8", available=True)
    fake_ext = type("cpp_extension", (), {"CUDA_HOME": str(home)})
    monkeypatch.delenv("DEEPCLUST_FORCE_CUDA", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("CUDA_HOME", str(home))
    with pytest.warns(UserWarning, match="major version"):
        assert NS["_want_cuda"](fake_torch, fake_ext) is False
    assert fake_ext.CUDA_HOME == str(home)


def test_want_cuda_points_torch_at_the_resolved_toolkit(monkeypatch, tmp_path, capsys):
    """A wrong guess (no nvcc under it) is replaced by the toolkit the wrapper nvcc reports."""
    real = _fake_toolkit(tmp_path / "real", "12.8")
    wrapper_bin = tmp_path / "wrapper" / "bin"
    _write_nvcc(wrapper_bin / "nvcc", "12.8", top=real / "bin" / "..")
    guess = tmp_path / "guess"
    guess.mkdir()
    monkeypatch.setenv("PATH", str(wrapper_bin))
    for var in ("CUDA_HOME", "CUDA_PATH"):  # setenv first: monkeypatch then restores the original
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    monkeypatch.setenv("DEEPCLUST_FORCE_CUDA", "1")
    fake_ext = type("cpp_extension", (), {"CUDA_HOME": str(guess)})
    assert NS["_want_cuda"](_FakeTorch(cuda="12.8", available=False), fake_ext) is True
    assert fake_ext.CUDA_HOME == os.path.realpath(real)
    assert os.environ["CUDA_HOME"] == os.path.realpath(real)  # monkeypatch restores it
    assert "building the CUDA sources" in capsys.readouterr().err


class _FakeTorch:
    def __init__(self, cuda, available):
        self.version = type("version", (), {"cuda": cuda})
        self.cuda = type("cuda", (), {"is_available": staticmethod(lambda: available)})


# ----------------------------------------------------------------------------- _probe_cuda_toolkit
def _write_nvcc(path: Path, release, top=None, fail=False):
    """An executable nvcc script: ``--version`` prints the release, ``--dryrun`` prints TOP."""
    path.parent.mkdir(parents=True, exist_ok=True)
    version = f"Cuda compilation tools, release {release}, V{release}.1" if release else "garbage"
    top_line = f'echo "#\\$ TOP={top}" >&2' if top is not None else "true"
    path.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        {"exit 1" if fail else ""}
        case "$1" in
          --version) echo "nvcc: NVIDIA (R) Cuda compiler driver"; echo "{version}";;
          --dryrun) echo "#\\$ _NVVM_BRANCH_=nvvm" >&2; {top_line};;
        esac
        """))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _fake_toolkit(home: Path, release, headers=True) -> Path:
    _write_nvcc(home / "bin" / "nvcc", release, top=home / "bin" / "..")
    if headers:
        (home / "include").mkdir(parents=True, exist_ok=True)
        (home / "include" / "cuda_runtime.h").write_text("/* fake */\n")
    return home


@pytest.fixture
def empty_path(monkeypatch, tmp_path):
    """PATH without any nvcc (the probe falls back to ``shutil.which('nvcc')``)."""
    d = tmp_path / "empty_bin"
    d.mkdir()
    monkeypatch.setenv("PATH", str(d))
    return d


def test_probe_complete_toolkit(tmp_path, empty_path):
    home = _fake_toolkit(tmp_path / "cuda", "12.8")
    for from_env in (False, True):
        assert probe(str(home), from_env) == dict(cuda_home=str(home), nvcc_release="12.8",
                                                  headers=True)


def test_probe_env_home_without_nvcc_is_kept(tmp_path, empty_path):
    home = tmp_path / "wrong"
    home.mkdir()
    assert probe(str(home), True) == dict(cuda_home=str(home), nvcc_release=None, headers=False)


def test_probe_env_home_without_headers_is_kept(tmp_path, empty_path):
    home = _fake_toolkit(tmp_path / "cuda", "12.8", headers=False)
    assert probe(str(home), True) == dict(cuda_home=str(home), nvcc_release="12.8", headers=False)


def test_probe_env_home_is_not_second_guessed(monkeypatch, tmp_path):
    """An explicit CUDA_HOME lacking nvcc stays, even with a complete toolkit on PATH."""
    real = _fake_toolkit(tmp_path / "real", "12.8")
    monkeypatch.setenv("PATH", str(real / "bin"))
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    assert probe(str(wrong), True) == dict(cuda_home=str(wrong), nvcc_release=None, headers=False)


def test_probe_nothing_found(tmp_path, empty_path):
    assert probe(None, False) == dict(cuda_home=None, nvcc_release=None, headers=False)
    guess = tmp_path / "guess"
    guess.mkdir()
    assert probe(str(guess), False) == dict(cuda_home=str(guess), nvcc_release=None, headers=False)


def test_probe_guess_replaced_by_wrapper_top(monkeypatch, tmp_path):
    """torch's guess from a wrapper at <x>/bin/nvcc is <x>, which lacks the toolkit: the folder
    nvcc reports (TOP) is used, resolved."""
    real = _fake_toolkit(tmp_path / "real", "13.0")
    wrapper = _write_nvcc(tmp_path / "usr_local" / "bin" / "nvcc", "13.0", top=real / "bin" / "..")
    monkeypatch.setenv("PATH", str(wrapper.parent))
    got = probe(str(tmp_path / "usr_local"), False)
    assert got == dict(cuda_home=os.path.realpath(real), nvcc_release="13.0", headers=True)
    # same when torch found no home at all
    assert probe(None, False) == got


def test_probe_guess_with_nvcc_but_no_headers_asks_that_nvcc(monkeypatch, tmp_path, empty_path):
    real = _fake_toolkit(tmp_path / "real", "12.8")
    guess = tmp_path / "guess"
    _write_nvcc(guess / "bin" / "nvcc", "12.8", top=real)
    got = probe(str(guess), False)
    assert got == dict(cuda_home=os.path.realpath(real), nvcc_release="12.8", headers=True)


def test_probe_top_incomplete(monkeypatch, tmp_path):
    """nvcc reports a TOP without headers: that TOP is reported, headers False."""
    top = tmp_path / "top"
    (top / "bin").mkdir(parents=True)
    wrapper = _write_nvcc(tmp_path / "w" / "bin" / "nvcc", "12.8", top=top)
    monkeypatch.setenv("PATH", str(wrapper.parent))
    got = probe(None, False)
    assert got == dict(cuda_home=os.path.realpath(top), nvcc_release="12.8", headers=False)
    ok, why = decide("12.8", True, False, **got)
    assert not ok and "cuda_runtime.h" in why


def test_probe_no_top_keeps_guess(monkeypatch, tmp_path):
    wrapper = _write_nvcc(tmp_path / "w" / "bin" / "nvcc", "12.8", top=None)
    monkeypatch.setenv("PATH", str(wrapper.parent))
    guess = tmp_path / "guess"
    guess.mkdir()
    assert probe(str(guess), False) == dict(cuda_home=str(guess), nvcc_release="12.8",
                                            headers=False)


def test_probe_nvcc_without_release(tmp_path, empty_path):
    home = _fake_toolkit(tmp_path / "cuda", None)
    got = probe(str(home), True)
    assert got == dict(cuda_home=str(home), nvcc_release=None, headers=True)
    ok, why = decide("12.8", True, False, from_env=True, **got)
    assert not ok and "no working nvcc" in why


def test_probe_then_decide_mismatch(tmp_path, empty_path):
    home = _fake_toolkit(tmp_path / "cuda", "13.0")
    ok, why = decide("12.8", True, False, from_env=True, **probe(str(home), True))
    assert not ok and "major version" in why
    ok, why = decide("13.0", True, False, from_env=True, **probe(str(home), True))
    assert ok and str(home) in why
