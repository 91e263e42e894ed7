"""Build script: the package is pure Python; the C++/CUDA extension is added by ``_extensions()``.

``deepclust._C`` holds the ``torch.ops.deepclust`` operators (negative sampling, fused
reconstruction loss). It is built with ``torch.utils.cpp_extension`` when torch is importable in
the build environment (``pip install --no-build-isolation``):

- always the C++ sources ``csrc/*.cpp`` (CPU kernels, ``-O3`` and OpenMP);
- plus the CUDA sources ``kernels/*.cu`` only when torch was built with CUDA
  (``torch.version.cuda``), a GPU is visible and ``nvcc`` is found under ``CUDA_HOME``.

Without torch the package installs as pure Python and the ops fall back to the eager references.
Set ``DEEPCLUST_NO_EXTENSION=1`` to skip the extension, ``DEEPCLUST_FORCE_CUDA=1`` to build the
CUDA sources without a visible GPU (e.g. in a container build), and ``TORCH_CUDA_ARCH_LIST`` to
choose the architectures (default: the visible GPUs, else ``9.0``).
"""
import glob
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda(torch, cpp_extension) -> bool:
    if torch.version.cuda is None or cpp_extension.CUDA_HOME is None:
        return False
    nvcc = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    if not os.path.exists(nvcc):
        return False
    return torch.cuda.is_available() or os.environ.get("DEEPCLUST_FORCE_CUDA", "0") == "1"


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
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
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
