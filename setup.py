"""Build script: the package is pure Python; the C++/CUDA extension is added by ``_extensions()``.

``deepclust._C`` holds the ``torch.ops.deepclust`` operators (negative sampling, fused
reconstruction loss). It is built with ``torch.utils.cpp_extension`` when torch is importable in
the build environment (``pip install --no-build-isolation``):

- always the C++ sources ``csrc/*.cpp`` (CPU kernels, ``-O3`` and OpenMP);
- plus the CUDA sources ``kernels/*.cu`` (they need only the CUDA runtime headers and torch's
  own) when torch was built with CUDA (``torch.version.cuda``), a GPU is visible (or
  ``DEEPCLUST_FORCE_CUDA=1``), and the toolkit is usable: ``nvcc`` under ``CUDA_HOME``,
  ``cuda_runtime.h`` beside it, and nvcc's major version that of ``torch.version.cuda``.
  Otherwise the CPU-only extension is built, with a warning that says why.

torch guesses ``CUDA_HOME`` from ``$CUDA_HOME``/``$CUDA_PATH``, else from ``which nvcc``; when that
guess lacks nvcc or the headers (``nvcc`` on PATH is a wrapper script or a symlink), the toolkit
folder that nvcc itself reports (``nvcc --dryrun``) is used instead. An explicit ``CUDA_HOME``
is kept as given.

Without torch the package installs as pure Python and the ops fall back to the eager references.
Set ``DEEPCLUST_NO_EXTENSION=1`` to skip the extension, ``DEEPCLUST_FORCE_CUDA=1`` to build the
CUDA sources without a visible GPU (e.g. in a container build), and ``TORCH_CUDA_ARCH_LIST`` to
choose the architectures (default: the visible GPUs, else ``8.0;9.0``). ``python -m
bench.nvcc_gate`` compiles the CUDA sources for sm_80 and sm_90 without a GPU and reports each
kernel's registers and spills.
"""
import glob
import os
import re
import shutil
import subprocess
import sys
import warnings

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCHS = "8.0;9.0"


def _toolkit_complete(cuda_home):
    """nvcc and cuda_runtime.h where torch looks for them (bin/, include/)."""
    return bool(cuda_home) and os.path.isfile(os.path.join(cuda_home, "bin", "nvcc")) and \
        os.path.isfile(os.path.join(cuda_home, "include", "cuda_runtime.h"))


def _ask_nvcc(nvcc):
    """(release, toolkit root) of the nvcc at `nvcc`, which may be a wrapper script or a symlink:
    the root is nvcc's own TOP (``--dryrun`` prints the steps and runs none)."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
        dry = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None, None
    m = re.search(r"release (\d+\.\d+)", out)
    top = re.search(r"^#\$ TOP=(.*)$", dry.stdout + dry.stderr, re.M)
    root = os.path.realpath(top.group(1).strip().strip('"')) if top else None
    return (m.group(1) if m else None), root


def _probe_cuda_toolkit(cuda_home, from_env):
    """What the CUDA decision needs about the toolkit: dict(cuda_home, nvcc_release, headers).

    `cuda_home` is torch's guess (``cpp_extension.CUDA_HOME``): $CUDA_HOME / $CUDA_PATH
    (`from_env`), else two folders above ``which nvcc``, which is wrong when that nvcc is a wrapper
    script or a symlink (/usr/local/bin/nvcc gives /usr/local). A guessed home that lacks nvcc or
    include/cuda_runtime.h is replaced by the folder that nvcc itself reports; one set by the
    environment is kept, so that a wrong CUDA_HOME is reported rather than second-guessed."""
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else None
    has_nvcc = bool(nvcc) and os.path.isfile(nvcc)
    if _toolkit_complete(cuda_home) or from_env:
        release = _ask_nvcc(nvcc)[0] if has_nvcc else None
        return dict(cuda_home=cuda_home, nvcc_release=release, headers=_toolkit_complete(cuda_home))
    which = nvcc if has_nvcc else shutil.which("nvcc")
    if not which:
        return dict(cuda_home=cuda_home, nvcc_release=None, headers=False)
    release, root = _ask_nvcc(which)
    if _toolkit_complete(root):
        return dict(cuda_home=root, nvcc_release=release, headers=True)
    return dict(cuda_home=root or cuda_home, nvcc_release=release, headers=False)


def _cuda_decision(torch_cuda, gpu_visible, force, cuda_home, nvcc_release, headers, from_env=False):
    """(build the CUDA sources?, why). Pure: every input is a plain value, see _probe_cuda_toolkit."""
    if torch_cuda is None:
        return False, "torch was built without CUDA"
    if not (gpu_visible or force):
        return False, "no GPU is visible (DEEPCLUST_FORCE_CUDA=1 builds the CUDA sources anyway)"
    if cuda_home is None:
        return False, "no CUDA toolkit found (no nvcc on PATH, CUDA_HOME unset)"
    if nvcc_release is None:
        where = "CUDA_HOME" if from_env else "the guessed CUDA_HOME"
        return False, f"no working nvcc under {where}={cuda_home} (is CUDA_HOME wrong?)"
    if not headers:
        return False, f"the CUDA headers (cuda_runtime.h) are missing under CUDA_HOME={cuda_home}"
    if nvcc_release.split(".")[0] != str(torch_cuda).split(".")[0]:
        return False, f"nvcc {nvcc_release} and torch's CUDA {torch_cuda} differ in major version"
    return True, f"nvcc {nvcc_release} in {cuda_home}"


def _want_cuda(torch, cpp_extension) -> bool:
    """Decides, and points torch at the resolved toolkit when building; says why not otherwise."""
    force = os.environ.get("DEEPCLUST_FORCE_CUDA", "0") == "1"
    from_env = bool(os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"))
    gpu = torch.version.cuda is not None and torch.cuda.is_available()
    probe = dict(cuda_home=None, nvcc_release=None, headers=False)
    if torch.version.cuda is not None and (gpu or force):
        probe = _probe_cuda_toolkit(cpp_extension.CUDA_HOME, from_env)
    ok, why = _cuda_decision(torch.version.cuda, gpu, force, from_env=from_env, **probe)
    if ok:
        if probe["cuda_home"] != cpp_extension.CUDA_HOME:  # torch's guess was wrong
            cpp_extension.CUDA_HOME = probe["cuda_home"]
            os.environ["CUDA_HOME"] = probe["cuda_home"]
        print(f"deepclust: building the CUDA sources ({why})", file=sys.stderr)
    elif torch.version.cuda is not None and (gpu or force):
        warnings.warn(f"deepclust: building the CPU extension only: {why}", stacklevel=2)
        print(f"deepclust: building the CPU extension only: {why}", file=sys.stderr)
    else:
        print(f"deepclust: building the CPU extension only ({why})", file=sys.stderr)
    return ok


def _extensions():
    if os.environ.get("DEEPCLUST_NO_EXTENSION", "0") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception:  # torch absent from the build environment: pure-Python install
        return [], {}
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not sources:
        return [], {}
    cxx = ["-O3"]
    link = []
    if sys.platform.startswith("linux"):
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    kwargs = dict(
        name="deepclust._C",
        sources=sources,
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=link,
    )
    if _want_cuda(torch, cpp_extension):
        kwargs["sources"] = sources + sorted(glob.glob(os.path.join("kernels", "*.cu")))
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "-lineinfo"]
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        ext = cpp_extension.CUDAExtension(**kwargs)
    else:
        ext = cpp_extension.CppExtension(**kwargs)
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=_has_ninja())
    return [ext], {"build_ext": build_ext}


def _has_ninja() -> bool:
    try:
        from torch.utils.cpp_extension import is_ninja_available

        return is_ninja_available()
    except Exception:
        return False


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
