"""The public API: every exported name exists and documents itself."""

from __future__ import annotations

import collections
import inspect
import re

import pytest

import jaxhp
import jaxhp.models

PUBLIC = [(jaxhp, name) for name in jaxhp.__all__] + [
    (jaxhp.models, name) for name in jaxhp.models.__all__]


def _own_doc(obj) -> str:
    """The docstring written for ``obj`` itself (not inherited, not generated)."""
    if inspect.isclass(obj):
        doc = vars(obj).get("__doc__") or ""
        fields = getattr(obj, "_fields", None)
        if isinstance(fields, tuple) and doc == f"{obj.__name__}({', '.join(fields)})":
            return ""  # the docstring NamedTuple generates when none is written
        return doc
    return getattr(obj, "__doc__", None) or ""


@pytest.mark.parametrize(("module", "name"), PUBLIC,
                         ids=[f"{m.__name__}.{n}" for m, n in PUBLIC])
def test_public_name_has_a_docstring(module, name):
    obj = getattr(module, name)
    doc = _own_doc(obj).strip()
    assert len(doc) >= 20, f"{module.__name__}.{name} needs a docstring"


@pytest.mark.parametrize("module", [jaxhp, jaxhp.models, jaxhp.datasets])
def test_all_lists_existing_unique_names(module):
    assert len(set(module.__all__)) == len(module.__all__)
    missing = [n for n in module.__all__ if not hasattr(module, n)]
    assert not missing


def test_undocumented_names_are_caught():
    class Bare:
        pass

    def bare():
        pass

    assert _own_doc(Bare) == "" and _own_doc(bare) == ""
    assert _own_doc(type("Sub", (jaxhp.Split,), {})) == ""  # inherited docs do not count
    assert _own_doc(collections.namedtuple("Pair", "a b")) == ""  # generated docs neither


# The layers, top to bottom; a module may import from its own layer or any below it.
LAYERS = [
    {"jaxhp", "jaxhp.__main__", "jaxhp.cli", "jaxhp._config", "jaxhp._job", "jaxhp._runs",
     "jaxhp.plot"},
    {"jaxhp._search"},
    {"jaxhp._engine"},
    {"jaxhp._population"},
]


def _layer(module: str) -> int:
    """The index of ``module``'s layer (everything below the population: the last)."""
    for i, names in enumerate(LAYERS):
        if module in names or any(module.startswith(n + ".") for n in names - {"jaxhp"}):
            return i
    return len(LAYERS)


def _imports(path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every ``from jaxhp... import`` in a file."""
    import ast

    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jaxhp"):
            out.append((node.module, [a.name for a in node.names]))
    return out


def _package_modules():
    import pathlib

    root = pathlib.Path(jaxhp.__file__).parent
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def test_imports_point_down_and_take_no_private_names():
    upward, private = [], []
    for name, path in _package_modules():
        for module, names in _imports(path):
            targets = [module] if module != "jaxhp" else [f"jaxhp.{n}" for n in names]
            for target in targets:
                if name != "jaxhp" and _layer(target) < _layer(name):
                    upward.append(f"{name} imports {target}")
            if module != "jaxhp":  # `from jaxhp import _engine` names a module, fine
                private += [f"{name}: from {module} import {n}" for n in names
                            if n.startswith("_") and n != "__version__"]
    assert not upward, upward
    assert not private, private


# Tests use public names only (issue 10): no `jaxhp._module`, no `_name` from jaxhp.
PRIVATE_PATH = re.compile(r"\bjaxhp(?:\.[A-Za-z]\w*)*\._(?!_)\w*")


def _private_uses(text: str) -> list[str]:
    """The private jaxhp names a test file's source uses: dotted paths anywhere in the
    text (code run in a subprocess included) and ``from jaxhp... import _name``."""
    import ast

    found = [m.group(0) for m in PRIVATE_PATH.finditer(text)]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "jaxhp":
            found += [f"from {node.module} import {a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_private_uses_are_caught():
    assert _private_uses("from jaxhp._io import sha256") == ["jaxhp._io"]
    assert _private_uses("from jaxhp import (\n    grid,\n    _engine as engine,\n)") == [
        "from jaxhp import _engine"]
    assert _private_uses("x = jaxhp.models._mlp\nimport jaxhp._table") == [
        "jaxhp.models._mlp", "jaxhp._table"]
    assert _private_uses("CHILD = 'from jaxhp._checkpoint import Checkpoint'") == [
        "jaxhp._checkpoint"]
    assert _private_uses("import jaxhp\njaxhp.__version__, jaxhp.__all__, jaxhp.sweep") == []


def test_other_test_files_use_public_names_only():
    import pathlib

    here = pathlib.Path(__file__)
    uses = {p.name: _private_uses(p.read_text()) for p in sorted(here.parent.glob("*.py"))
            if p != here}
    assert len(uses) > 5
    assert not {k: v for k, v in uses.items() if v}
