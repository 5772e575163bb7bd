"""The public API: every exported name exists and documents itself."""

from __future__ import annotations

import collections
import inspect

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
