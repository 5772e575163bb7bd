"""Every notebook in notebooks/ executes top to bottom (small sizes)."""

import os
import pathlib

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("JAXHP_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    errors = [o for c in nb.cells for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors, errors
    assert os.environ["JAXHP_NOTEBOOK_SMALL"] == "1"


def test_there_are_notebooks():
    assert any(p.name.startswith("01_") for p in NOTEBOOKS)


FORCED_BACKEND = ("matplotlib.use(", "%matplotlib agg", "MPLBACKEND", "switch_backend")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_never_forces_a_backend(path):
    """A notebook that chooses a backend shows no figure in Jupyter; the tests set
    MPLBACKEND=Agg themselves (above)."""
    import json

    cells = json.loads(path.read_text())["cells"]
    source = "\n".join("".join(c["source"]) for c in cells).lower()
    found = [s for s in FORCED_BACKEND if s.lower() in source]
    assert not found, f"{path.name} forces a backend: {found}"
