"""Every ```python block of README.md runs as written, each as its own script.

Each block runs in a fresh Python process (its own imports, nothing shared with
the other blocks), in an empty temporary folder, with this checkout first on
``PYTHONPATH``. A block marks itself with a comment line:

- ``# test: slow``: takes more than ~15 s here; runs only without ``-m "not slow"``.

A block that shows output or a sketch and is not meant to run is fenced as
something other than ``python`` (``text``, ``bash``, ...), and is not run.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
SLOW = "# test: slow"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line, code)`` of every ```python block of ``text`` (line: 1-based, of the fence)."""
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in FENCE.finditer(text)]


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def _params():
    out = []
    for line, code in BLOCKS:
        marks = [pytest.mark.slow] if SLOW in code else []
        out.append(pytest.param(code, id=f"line{line}", marks=marks))
    return out


@pytest.mark.parametrize("code", _params())
def test_readme_block_runs(code, tmp_path):
    script = tmp_path / "block.py"
    script.write_text(code, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    env.setdefault("MPLBACKEND", "Agg")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (
        f"README block failed (exit {proc.returncode}):\n{code}\n--- stdout\n"
        f"{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}")


def test_blocks_are_found():
    """The extraction sees every block, and nothing but python fences."""
    text = "a\n```python\nx = 1\n```\n```text\nnot run\n```\n```python\ny = 2\n```\n"
    assert python_blocks(text) == [(2, "x = 1\n"), (8, "y = 2\n")]
    assert len(BLOCKS) >= 7
