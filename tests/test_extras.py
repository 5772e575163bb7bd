"""Optional dependencies are imported lazily and name the extra when missing."""

import sys

import jax
import pytest

import jaxhp
from jaxhp import models


@pytest.fixture(scope="module")
def result():
    split = jaxhp.datasets.load("diabetes")
    return jaxhp.sweep(models.linear_regression(10), [models.LinearHP(steps=5)], split,
                       key=jax.random.key(0))


def test_importing_jaxhp_does_not_import_the_extras():
    import subprocess

    code = ("import sys, jaxhp; bad = [m for m in ('pandas', 'matplotlib', 'tqdm', "
            "'sklearn', 'optuna', 'torch') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_missing_pandas_names_the_table_extra(result, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match=r"pip install 'jaxhp\[table\]'"):
        result.to_pandas()


def test_missing_tqdm_names_the_progress_extra(result, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    split = jaxhp.datasets.load("diabetes")
    with pytest.raises(ImportError, match=r"pip install 'jaxhp\[progress\]'"):
        jaxhp.sweep(models.linear_regression(10), [models.LinearHP(steps=5)], split,
                    key=jax.random.key(0), progress=True)


def test_missing_sklearn_names_the_datasets_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r"pip install 'jaxhp\[datasets\]'"):
        jaxhp.datasets.load("iris")
