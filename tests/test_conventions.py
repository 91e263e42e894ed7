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


# ----------------------------------------------------------------------------- the layering
# model -> nn -> public op -> custom op -> kernel; the references judge and do not serve.
_PKG = _TESTS.parent / "deepclust"
_MAX_LINES = 450
# The one module outside deepclust/reference/ that imports it: the `deepclust check` command,
# which exists to compare every op with its reference.
_MAY_IMPORT_REFERENCE = {"deepclust.check"}


def _modules():
    """{dotted module name: path} of every source file of the package."""
    out = {}
    for p in sorted(_PKG.rglob("*.py")):
        rel = p.relative_to(_PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(name: str, path: Path, modules) -> set:
    """The package modules ``name`` imports anywhere in its file (function-local imports too)."""
    is_pkg = path.name == "__init__.py"
    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        for t in targets:
            while t and t not in modules:  # `import deepclust.ops.dec.x` -> the longest module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph():
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def test_references_are_leaves():
    bad = []
    for mod, deps in _graph().items():
        if not mod.startswith("deepclust.reference"):
            continue
        other = {d for d in deps if not d.startswith("deepclust.reference")} - {"deepclust._common"}
        if other:
            bad.append(f"{mod} imports {sorted(other)}")
    assert not bad, "references must import only torch and deepclust._common:\n" + "\n".join(bad)


def test_production_code_does_not_import_references():
    bad = [f"{mod} imports {sorted(d for d in deps if d.startswith('deepclust.reference'))}"
           for mod, deps in _graph().items()
           if not mod.startswith("deepclust.reference") and mod not in _MAY_IMPORT_REFERENCE
           and any(d.startswith("deepclust.reference") for d in deps)]
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    """No cycle among the package's modules, counting imports inside functions (a cycle hidden
    by a function-local import is still one). Package ``__init__`` re-exports are edges too."""
    graph = _graph()
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            # a package and its own submodules import each other by design (re-exports)
            if len(comp) > 1 and not _is_package_with_its_modules(comp):
                sccs.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    assert not sccs, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in sccs)


def _is_package_with_its_modules(comp) -> bool:
    root = min(comp, key=len)
    return all(c == root or c.startswith(root + ".") for c in comp)


def test_source_files_are_of_readable_size():
    long = [f"{p.relative_to(_PKG.parent)}: {n} lines" for p in sorted(_PKG.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > _MAX_LINES]
    assert not long, f"over {_MAX_LINES} lines:\n" + "\n".join(long)


def _test_file_for(path: Path):
    """Where the tests of a package module live: ``deepclust/a/b.py`` -> ``tests/a/test_b.py``
    (a private ``_b.py`` -> ``test_b.py``); a module inside a package ``deepclust/a/p/`` may
    instead be covered by ``tests/a/test_p.py``."""
    rel = path.relative_to(_PKG)
    stem = rel.stem.lstrip("_")
    options = [_TESTS / rel.parent / f"test_{stem}.py"]
    if len(rel.parts) > 2:  # deepclust/ops/dec/_kernels.py -> tests/ops/test_dec.py
        options.append(_TESTS / rel.parent.parent / f"test_{rel.parent.name}.py")
        options.append(_TESTS / rel.parent / f"test_{stem}.py")
    return options


def test_tests_mirror_the_package():
    missing = []
    for p in sorted(_PKG.rglob("*.py")):
        if p.name in ("__init__.py", "__main__.py"):
            continue
        if not any(o.exists() for o in _test_file_for(p)):
            missing.append(f"{p.relative_to(_PKG.parent)}: none of "
                           f"{[str(o.relative_to(_TESTS.parent)) for o in _test_file_for(p)]}")
    assert not missing, "modules without a test file:\n" + "\n".join(missing)
