"""The public surface (deepclust/_lazy.py makes the packages' lazy re-exports): every exported
name resolves, ops and references stay twins."""
import importlib
import inspect
import types

import pytest

from deepclust._lazy import lazy_exports

import deepclust.ops as ops
import deepclust.reference as reference
import deepclust.nn as dnn
import deepclust.models as models


@pytest.mark.parametrize("pkg", [ops, reference, dnn, models], ids=lambda p: p.__name__)
def test_every_export_resolves_to_an_object_not_a_module(pkg):
    # import every module first: a submodule named like a function would shadow it
    for mod in set(pkg._EXPORTS.values()):
        importlib.import_module(f"{pkg.__name__}.{mod}")
    for name in pkg.__all__:
        obj = getattr(pkg, name)
        assert not isinstance(obj, types.ModuleType), f"{pkg.__name__}.{name} is a module"
        assert callable(obj), f"{pkg.__name__}.{name}"


@pytest.mark.parametrize("name", ops.__all__)
def test_fused_op_has_a_reference_twin_with_the_same_signature(name):
    fused, ref = getattr(ops, name), getattr(reference, name)
    assert ops._EXPORTS[name] == reference._EXPORTS[name], "ops/ and reference/ mirror each other"
    fp = {k: v for k, v in inspect.signature(fused).parameters.items() if k != "impl"}
    rp = dict(inspect.signature(ref).parameters)
    assert list(fp) == list(rp), f"{name}: {list(fp)} vs {list(rp)}"
    for k in rp:
        assert fp[k].default == rp[k].default, f"{name}({k}=...) defaults differ"
    assert inspect.getdoc(fused) and inspect.getdoc(ref)


def test_lazy_exports_import_on_first_use_and_name_the_package():
    getattr_, dir_, all_ = lazy_exports("deepclust", {"compute_dtype": "_common"})
    assert all_ == ["compute_dtype"] and dir_() == ["compute_dtype"]
    import deepclust._common as common

    assert getattr_("compute_dtype") is common.compute_dtype
    with pytest.raises(AttributeError, match="'deepclust' has no attribute 'nope'"):
        getattr_("nope")
