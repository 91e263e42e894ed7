"""Lazy re-exports: a package's ``__init__`` names what it exports and from which module."""
import importlib


def lazy_exports(package: str, exports: dict):
    """Return ``(__getattr__, __dir__, __all__)`` for a package exporting ``{name: module}``."""

    def __getattr__(name):
        if name in exports:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(exports)

    return __getattr__, __dir__, sorted(exports)
