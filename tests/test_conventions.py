"""Conventions of the whole repository, checked over its files: the device rule of the tests."""
import ast
from pathlib import Path

import pytest



# ----------------------------------------------------------------------------- the device rule
# Tests that run a Triton path must put their tensors on the `device` fixture (CUDA when
# present, else the CPU with the interpreter), never on the CPU by assumption: on a CUDA machine
# the interpreter is off and impl="triton" on CPU tensors raises. A test that means to run
# Triton on CPU tensors says so with the comment tag below in its body.
_TESTS = Path(__file__).resolve().parent
# A test tagged with one of these comments is exempt: it runs Triton on the CPU on purpose (in
# the interpreter, e.g. gloo workers), or only names "triton" as data and launches nothing.
_EXEMPT_TAGS = ("triton-cpu-on-purpose", "no-triton-launch")
_DEVICE_NAMES = {"device", "DEVICE"}


def _mentions_triton(node, triton_names):
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and n.value == "triton":
            return True
        if isinstance(n, ast.Name) and n.id in triton_names:
            return True
    return False


def _device_rule_violations(path: Path):
    src = path.read_text()
    tree = ast.parse(src)
    # module-level names bound to something that holds "triton" (IMPLS = ["torch", "triton"])
    triton_names = set()
    for stmt in tree.body:
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
            if _mentions_triton(stmt.value, triton_names):
                targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
                triton_names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    bad = []
    for fn in ast.walk(tree):
        if not (isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name.startswith("test")):
            continue
        body = fn.body[1:] if ast.get_docstring(fn) is not None else fn.body
        parts = list(fn.decorator_list) + body
        if not any(_mentions_triton(p, triton_names) for p in parts):
            continue
        if any(tag in (ast.get_source_segment(src, fn) or "") for tag in _EXEMPT_TAGS):
            continue
        args = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
        used = {n.id for p in body for n in ast.walk(p) if isinstance(n, ast.Name)}
        on_cuda = any(isinstance(n, ast.Attribute) and n.attr == "cuda" for p in body for n in ast.walk(p))
        if not ((args | used) & _DEVICE_NAMES or on_cuda):
            name = path.relative_to(_TESTS.parent) if path.is_relative_to(_TESTS) else path.name
            bad.append(f"{name}:{fn.lineno} {fn.name}")
    return bad


def test_device_rule_checker_flags_a_cpu_only_triton_test(tmp_path):
    f = tmp_path / "test_probe.py"
    f.write_text(
        'import pytest\nimport torch\nIMPLS = ["torch", "triton"]\n\n'
        '@pytest.mark.parametrize("impl", IMPLS)\ndef test_cpu(impl):\n    torch.zeros(2)\n\n'
        '@pytest.mark.parametrize("impl", IMPLS)\ndef test_dev(impl, device):\n    torch.zeros(2, device=device)\n\n'
        'def test_lit():\n    op(torch.zeros(2), impl="triton")\n\n'
        'def test_tagged():\n    # triton-cpu-on-purpose: the error\n    op(torch.zeros(2), impl="triton")\n\n'
        'def test_torch():\n    op(torch.zeros(2), impl="torch")\n'
    )
    assert [b.split()[-1] for b in _device_rule_violations(f)] == ["test_cpu", "test_lit"]


# Folders where the rule is not enforced yet (violations reported as a skip); none now.
_NOT_YET_ENFORCED = ()


@pytest.mark.parametrize("area", ["rest", *_NOT_YET_ENFORCED])
def test_every_triton_test_takes_the_device(area):
    """Every test function that names "triton" (a literal, or a module-level list holding it,
    in its body or decorators) takes the `device` fixture or uses DEVICE/`.cuda`, unless tagged."""
    files = sorted(_TESTS.rglob("test_*.py"))
    if area == "rest":
        files = [f for f in files if f.relative_to(_TESTS).parts[0] not in _NOT_YET_ENFORCED]
    else:
        files = [f for f in files if f.relative_to(_TESTS).parts[0] == area]
    bad = [b for f in files for b in _device_rule_violations(f)]
    if bad and area in _NOT_YET_ENFORCED:
        pytest.skip("device rule not yet enforced here; violations: " + ", ".join(bad))
    assert not bad, "Triton tests without the device fixture:\n" + "\n".join(bad)
