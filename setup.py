"""Build script: the package is pure Python; the C++/CUDA extension is added by ``_extensions()``."""
from setuptools import setup

setup()
